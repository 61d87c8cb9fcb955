"""Leases and garbage collection over a real content store and an in-memory snapshotter."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from dockyard import errdefs
from dockyard.image.content import LocalContentStore, write_blob
from dockyard.image.core import Mount, SnapshotInfo, SnapshotKind, Usage
from dockyard.image.gc import collect, label_references
from dockyard.image.leases import (
    LABEL_EXPIRE,
    LeaseManager,
    Resource,
    format_rfc3339,
    parse_rfc3339,
)


class MemorySnapshotter:
    """A test double of our own Snapshotter Protocol: metadata only, no mounts."""

    def __init__(self) -> None:
        self.infos: dict[str, SnapshotInfo] = {}

    def _new(self, key: str, kind: SnapshotKind, parent: str | None,
             labels: dict[str, str] | None) -> list[Mount]:
        if key in self.infos:
            raise errdefs.AlreadyExists(f"snapshot {key} already exists")
        if parent is not None and self.infos[parent].kind != SnapshotKind.COMMITTED:
            raise errdefs.FailedPrecondition(f"parent {parent} is not committed")
        now = time.time()
        self.infos[key] = SnapshotInfo(key, kind, parent, dict(labels or {}), now, now)
        return [Mount("bind", f"/fake/{key}")]

    def stat(self, key: str) -> SnapshotInfo:
        try:
            return self.infos[key]
        except KeyError as exc:
            raise errdefs.NotFound(f"snapshot {key}: not found") from exc

    def update(self, info: SnapshotInfo, fieldpaths: list[str] | None = None) -> SnapshotInfo:
        self.infos[info.name] = replace(self.stat(info.name), labels=dict(info.labels))
        return self.infos[info.name]

    def usage(self, key: str) -> Usage:
        self.stat(key)
        return Usage(0, 0)

    def mounts(self, key: str) -> list[Mount]:
        return [Mount("bind", f"/fake/{self.stat(key).name}")]

    def prepare(self, key: str, parent: str | None = None,
                labels: dict[str, str] | None = None) -> list[Mount]:
        return self._new(key, SnapshotKind.ACTIVE, parent, labels)

    def view(self, key: str, parent: str | None = None,
             labels: dict[str, str] | None = None) -> list[Mount]:
        return self._new(key, SnapshotKind.VIEW, parent, labels)

    def commit(self, name: str, key: str, labels: dict[str, str] | None = None) -> None:
        active = self.stat(key)
        del self.infos[key]
        self._new(name, SnapshotKind.COMMITTED, active.parent, labels or active.labels)

    def remove(self, key: str) -> None:
        self.stat(key)
        if any(i.parent == key for i in self.infos.values()):
            raise errdefs.FailedPrecondition(f"snapshot {key} has children")
        del self.infos[key]

    def walk(self) -> Iterator[SnapshotInfo]:
        yield from list(self.infos.values())

    def close(self) -> None:
        pass


@pytest.fixture
def store(tmp_path: Path):
    s = LocalContentStore(tmp_path / "content")
    yield s
    s.close()


@pytest.fixture
def leases(store: LocalContentStore) -> LeaseManager:
    return LeaseManager(store.db)


def _layer_chain(sn: MemorySnapshotter, names: list[str]) -> None:
    parent = None
    for name in names:
        sn.prepare(f"{name}-extract", parent)
        sn.commit(name, f"{name}-extract")
        parent = name


def _image(store: LocalContentStore, tag: str, snapshot: str) -> tuple[str, str, str]:
    """manifest -> config + layer, config -> top snapshot; returns the three digests."""
    layer = write_blob(store, f"layer-{tag}".encode()).digest
    config = write_blob(store, f"config-{tag}".encode(),
                        labels={"containerd.io/gc.ref.snapshot.mem": snapshot}).digest
    manifest = write_blob(store, f"manifest-{tag}".encode(), labels={
        "containerd.io/gc.ref.content.config": config,
        "containerd.io/gc.ref.content.l.0": layer,
    }).digest
    return manifest, config, layer


def _digests(store: LocalContentStore) -> set[str]:
    return {i.digest for i in store.walk()}


def test_collect_removes_exactly_unreferenced(store, leases) -> None:
    sn = MemorySnapshotter()
    _layer_chain(sn, ["a1", "a2", "a3"])          # image A's layers
    _layer_chain(sn, ["b1", "b2"])                # image B's layers (to go)
    sn.prepare("shared-top", "a2")                # a container on A's a2 (ACTIVE)
    sn.prepare("c1-extract", "b2")                # abandoned extraction on B
    kept_manifest, kept_config, kept_layer = _image(store, "A", "a3")
    gone = set(_image(store, "B", "b2"))
    orphan = write_blob(store, b"orphan").digest
    pinned = write_blob(store, b"pinned", labels={"containerd.io/gc.root": "x"}).digest

    result = collect(store, {"mem": sn}, lambda: [kept_manifest], leases,
                     keep_active_snapshots=False)

    assert set(result.removed_content) == gone | {orphan}
    assert _digests(store) == {kept_manifest, kept_config, kept_layer, pinned}
    assert set(sn.infos) == {"a1", "a2", "a3"}
    # Children went before parents.
    order = [key for _, key in result.removed_snapshots]
    assert order.index("c1-extract") < order.index("b2") < order.index("b1")
    assert order.index("shared-top") >= 0
    assert result.errors == ()


def test_active_snapshots_kept_by_default(store) -> None:
    sn = MemorySnapshotter()
    _layer_chain(sn, ["p1", "p2"])
    sn.prepare("container-rw", "p2")
    sn.view("a-view", "p1")
    _layer_chain(sn, ["lonely"])
    result = collect(store, {"mem": sn}, lambda: [], None)
    assert result.removed_snapshots == (("mem", "lonely"),)
    assert set(sn.infos) == {"p1", "p2", "container-rw", "a-view"}


def test_leases_hold_resources_until_deleted(store, leases) -> None:
    sn = MemorySnapshotter()
    _layer_chain(sn, ["s1", "s2"])
    blob = write_blob(store, b"in flight").digest
    child = write_blob(store, b"child of in flight").digest
    store.update_labels(blob, {"containerd.io/gc.ref.content": child})
    lease = leases.create(labels={"purpose": "pull"})
    leases.add_resource(lease.id, Resource.content(blob))
    leases.add_resource(lease.id, Resource.snapshot("mem", "s2"))
    leases.add_resource(lease.id, Resource.ingest("some-ref"))
    assert set(leases.list_resources(lease.id)) == {
        Resource("content", blob), Resource("snapshots/mem", "s2"), Resource("ingests", "some-ref")}

    result = collect(store, {"mem": sn}, lambda: [], leases)
    assert result.removed_content == () and result.removed_snapshots == ()

    leases.delete(lease.id)
    result = collect(store, {"mem": sn}, lambda: [], leases)
    assert set(result.removed_content) == {blob, child}
    assert result.removed_snapshots == (("mem", "s2"), ("mem", "s1"))


def test_expired_leases_are_removed(store, leases) -> None:
    blob = write_blob(store, b"expiring").digest
    old = leases.create("old", labels={LABEL_EXPIRE: "2000-01-01T00:00:00.123456789Z"})
    fresh = leases.create("fresh", expire_in=3600)
    leases.add_resource(old.id, Resource.content(blob))
    assert old.expired() and not fresh.expired()
    result = collect(store, {}, None, leases)
    assert result.removed_leases == ("old",)
    assert result.removed_content == (blob,)
    assert [lease.id for lease in leases.list()] == ["fresh"]


def test_content_created_after_start_is_kept(store) -> None:
    blob = write_blob(store, b"brand new").digest
    result = collect(store, {}, None, None, now=time.time() - 60)
    assert result.removed_content == () and _digests(store) == {blob}


def test_snapshot_labels_and_root_label(store) -> None:
    sn = MemorySnapshotter()
    other = MemorySnapshotter()
    blob = write_blob(store, b"referenced by snapshot").digest
    _layer_chain(sn, ["root-snap"])
    sn.update(replace(sn.stat("root-snap"), labels={
        "containerd.io/gc.root": "1",
        "containerd.io/gc.ref.content.x": blob,
        "containerd.io/gc.ref.snapshot.other/0": "o1",
    }))
    _layer_chain(other, ["o1", "o2"])
    result = collect(store, {"mem": sn, "other": other}, None, None)
    assert result.removed_content == ()
    assert result.removed_snapshots == (("other", "o2"),)


def test_label_references_parsing() -> None:
    refs = label_references({
        "containerd.io/gc.ref.content": "sha256:" + "1" * 64,
        "containerd.io/gc.ref.content.m.0": "sha256:" + "2" * 64,
        "containerd.io/gc.ref.snapshot.overlayfs": "k1",
        "containerd.io/gc.ref.snapshot.overlayfs.1": "k2",
        "containerd.io/gc.ref.snapshot.native/2": "k3",
        "unrelated": "x",
        "containerd.io/gc.ref.content.empty": "",
    })
    assert set(refs) == {
        Resource.content("sha256:" + "1" * 64), Resource.content("sha256:" + "2" * 64),
        Resource.snapshot("overlayfs", "k1"), Resource.snapshot("overlayfs", "k2"),
        Resource.snapshot("native", "k3"),
    }


def test_lease_manager_errors(leases) -> None:
    leases.create("l1")
    with pytest.raises(errdefs.AlreadyExists, match="l1"):
        leases.create("l1")
    with pytest.raises(errdefs.NotFound, match="nope"):
        leases.delete("nope")
    with pytest.raises(errdefs.NotFound):
        leases.add_resource("nope", Resource.ingest("r"))
    with pytest.raises(errdefs.InvalidArgument):
        leases.add_resource("l1", Resource("content", "not-a-digest"))
    with pytest.raises(errdefs.InvalidArgument):
        leases.add_resource("l1", Resource("volumes", "x"))
    with pytest.raises(errdefs.InvalidArgument, match="RFC3339"):
        leases.create("bad", labels={LABEL_EXPIRE: "tomorrow"})
    leases.add_resource("l1", Resource.ingest("r"))
    leases.delete_resource("l1", Resource.ingest("r"))
    assert leases.list_resources("l1") == []
    with leases.temporary() as tmp:
        assert tmp.id in {lease.id for lease in leases.list()}
    assert tmp.id not in {lease.id for lease in leases.list()}


def test_rfc3339_round_trip() -> None:
    assert parse_rfc3339("1970-01-01T00:00:10Z") == 10.0
    assert parse_rfc3339("1970-01-01T01:00:10+01:00") == 10.0
    assert abs(parse_rfc3339(format_rfc3339(1234.5)) - 1234.5) < 1e-6
