"""The conformance suite every Snapshotter passes (real mounts, so root).

A test module supplies a `snapshotter` fixture (and `make_snapshotter`, a
callable root -> snapshotter for reopen tests) and star-imports this module.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
from pathlib import Path

import pytest

from dockyard import errdefs
from dockyard.image.core import SnapshotKind
from dockyard.image.layers import apply_layer, write_diff
from dockyard.image.snapshots import mounted
from dockyard.image.snapshots.overlay import OverlaySnapshotter
from tests.unit.test_layers_unit import build_tar, d, f, tree


def committed_layer(snapshotter, name: str, parent: str | None, files: dict[str, bytes],
                    delete: tuple[str, ...] = ()) -> None:
    """Make a committed snapshot by writing through a real mount."""
    key = f"{name}-active"
    with mounted(snapshotter.prepare(key, parent)) as where:
        for rel, data in files.items():
            path = Path(where, rel)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        for rel in delete:
            target = Path(where, rel)
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink()
    snapshotter.commit(name, key)


def test_prepare_commit_view_chain(snapshotter) -> None:
    committed_layer(snapshotter, "base", None, {"etc/os-release": b"dockyard\n"})
    committed_layer(snapshotter, "second", "base", {"app/run": b"#!/bin/sh\n"})
    info = snapshotter.stat("second")
    assert info.kind is SnapshotKind.COMMITTED and info.parent == "base"
    with pytest.raises(errdefs.NotFound):
        snapshotter.stat("second-active")  # the key is gone after commit
    with mounted(snapshotter.view("look", "second")) as where:
        assert Path(where, "etc/os-release").read_bytes() == b"dockyard\n"
        assert Path(where, "app/run").read_bytes() == b"#!/bin/sh\n"
        with pytest.raises(OSError) as caught:
            Path(where, "new").write_bytes(b"x")
        assert caught.value.errno == errno.EROFS
    assert snapshotter.stat("look").kind is SnapshotKind.VIEW
    with mounted(snapshotter.prepare("work", "second")) as where:
        Path(where, "etc/os-release").write_bytes(b"changed\n")
    with mounted(snapshotter.mounts("look")) as where:
        assert Path(where, "etc/os-release").read_bytes() == b"dockyard\n"  # lower untouched


def test_view_of_single_parent_and_no_parent(snapshotter) -> None:
    committed_layer(snapshotter, "only", None, {"f": b"1"})
    with mounted(snapshotter.view("v1", "only")) as where:
        assert Path(where, "f").read_bytes() == b"1"
    with mounted(snapshotter.view("v0")) as where:
        assert os.listdir(where) == []


def test_whiteouts_hide_lower_files(snapshotter) -> None:
    committed_layer(snapshotter, "base", None,
                    {"gone": b"g", "keep": b"k", "dir/old": b"o", "dir/sub/deep": b"d"})
    key = "change-active"
    with mounted(snapshotter.prepare(key, "base")) as where:
        os.unlink(Path(where, "gone"))
        shutil.rmtree(Path(where, "dir"))
        Path(where, "dir").mkdir()
        Path(where, "dir/new").write_bytes(b"n")
    snapshotter.commit("change", key)
    committed_layer(snapshotter, "top", "change", {"top": b"t"})
    with mounted(snapshotter.view("look", "top")) as where:
        assert sorted(os.listdir(where)) == ["dir", "keep", "top"]
        assert os.listdir(Path(where, "dir")) == ["new"]


def test_layer_round_trip_through_snapshots(snapshotter, tmp_path: Path) -> None:
    """apply -> change via mount -> write_diff -> apply on a flat copy == merged view."""
    overlay = isinstance(snapshotter, OverlaySnapshotter)
    base_tar = build_tar([d("etc"), f("etc/a", b"a"), f("etc/b", b"b"), d("opt/pkg"),
                          f("opt/pkg/x", b"x"), f("bin/sh", b"sh", mode=0o755)])
    snapshotter.prepare("base-active")
    apply_layer(snapshotter.upper_dir("base-active"), io.BytesIO(base_tar),
                overlay_whiteouts=overlay)
    snapshotter.commit("base", "base-active")
    with mounted(snapshotter.prepare("c-active", "base")) as where:
        Path(where, "etc/a").write_bytes(b"changed")
        Path(where, "etc/b").unlink()
        shutil.rmtree(Path(where, "opt/pkg"))
        Path(where, "opt/pkg").mkdir()
        Path(where, "opt/pkg/y").write_bytes(b"y")
        Path(where, "new").write_bytes(b"new")
    diff = io.BytesIO()
    result = write_diff(snapshotter.lower_dirs("c-active"), snapshotter.upper_dir("c-active"),
                        diff, overlay=overlay)
    snapshotter.commit("c", "c-active")
    flat = tmp_path / "flat"
    flat.mkdir()
    apply_layer(str(flat), io.BytesIO(base_tar))
    applied = apply_layer(str(flat), io.BytesIO(diff.getvalue()))
    assert applied.diff_id == result.diff_id
    # Same layer applied into a fresh snapshot gives the same merged tree too.
    snapshotter.prepare("c2-active", "base")
    apply_layer(snapshotter.upper_dir("c2-active"), io.BytesIO(diff.getvalue()),
                overlay_whiteouts=overlay)
    snapshotter.commit("c2", "c2-active")
    with mounted(snapshotter.view("look", "c")) as where:
        merged = tree(where)
    with mounted(snapshotter.view("look2", "c2")) as where:
        replayed = tree(where)
    strip = {k: v[:5] for k, v in merged.items()}  # type, mode, owner, content
    assert {k: v[:5] for k, v in tree(flat).items()} == strip
    assert {k: v[:5] for k, v in replayed.items()} == strip
    assert "etc/b" not in merged and sorted(p for p in merged if p.startswith("opt/pkg/")) == [
        "opt/pkg/y"]


def test_remove_order(snapshotter) -> None:
    committed_layer(snapshotter, "parent", None, {"a": b"a"})
    snapshotter.prepare("child", "parent")
    with pytest.raises(errdefs.FailedPrecondition):
        snapshotter.remove("parent")
    snapshotter.remove("child")
    snapshotter.remove("parent")
    assert list(snapshotter.walk()) == []
    assert [n for n in os.listdir(snapshotter.snapshots_dir)] == []
    with pytest.raises(errdefs.NotFound):
        snapshotter.remove("parent")


def test_usage_counts_own_bytes_only(snapshotter) -> None:
    committed_layer(snapshotter, "big", None, {"blob": os.urandom(1 << 20)})
    usage = snapshotter.usage("big")
    assert usage.size >= 1 << 20
    assert usage.inodes >= 2
    committed_layer(snapshotter, "small", "big", {"tiny": b"t"})
    small = snapshotter.usage("small")
    if isinstance(snapshotter, OverlaySnapshotter):
        assert small.size < 1 << 20 and small.inodes == 2  # fs dir + tiny
    else:
        assert small.size >= 1 << 20 and small.inodes >= 3  # a full copy


def test_labels_update(snapshotter) -> None:
    snapshotter.prepare("k", labels={"a": "1", "b": "2"})
    info = snapshotter.stat("k")
    assert info.labels == {"a": "1", "b": "2"}
    changed = snapshotter.update(
        type(info)(name="k", kind=info.kind, parent=None, labels={"a": "9", "c": "3"},
                   created_at=0, updated_at=0), ["labels.a", "labels.b"])
    assert changed.labels == {"a": "9"}
    replaced = snapshotter.update(
        type(info)(name="k", kind=info.kind, parent=None, labels={"z": "1"},
                   created_at=0, updated_at=0))
    assert replaced.labels == {"z": "1"}
    assert snapshotter.stat("k").labels == {"z": "1"}
    assert replaced.updated_at >= info.updated_at and replaced.created_at == info.created_at
    with pytest.raises(errdefs.InvalidArgument):
        snapshotter.update(info, ["parent"])
    with pytest.raises(errdefs.NotFound):
        snapshotter.update(type(info)(name="missing", kind=info.kind, parent=None, labels={},
                                      created_at=0, updated_at=0))
    snapshotter.commit("k-done", "k", labels={"committed": "yes"})
    assert snapshotter.stat("k-done").labels == {"committed": "yes"}


def test_walk_lists_everything(snapshotter) -> None:
    committed_layer(snapshotter, "one", None, {})
    snapshotter.prepare("two", "one")
    snapshotter.view("three", "one")
    seen = {info.name: (info.kind, info.parent) for info in snapshotter.walk()}
    assert seen == {"one": (SnapshotKind.COMMITTED, None),
                    "two": (SnapshotKind.ACTIVE, "one"),
                    "three": (SnapshotKind.VIEW, "one")}


def test_error_kinds(snapshotter) -> None:
    with pytest.raises(errdefs.NotFound):
        snapshotter.stat("nope")
    with pytest.raises(errdefs.NotFound):
        snapshotter.mounts("nope")
    with pytest.raises(errdefs.NotFound):
        snapshotter.usage("nope")
    with pytest.raises(errdefs.NotFound):
        snapshotter.prepare("x", "missing-parent")
    snapshotter.prepare("active")
    with pytest.raises(errdefs.AlreadyExists):
        snapshotter.prepare("active")
    with pytest.raises(errdefs.InvalidArgument):
        snapshotter.prepare("on-active", "active")
    snapshotter.view("a-view")
    with pytest.raises(errdefs.FailedPrecondition):
        snapshotter.commit("from-view", "a-view")
    with pytest.raises(errdefs.NotFound):
        snapshotter.commit("x", "nope")
    snapshotter.prepare("other")
    snapshotter.commit("taken", "other")
    with pytest.raises(errdefs.AlreadyExists):
        snapshotter.commit("taken", "active")
    with pytest.raises(errdefs.FailedPrecondition):
        snapshotter.mounts("taken")
    with pytest.raises(errdefs.AlreadyExists):
        snapshotter.view("taken", None)
    # A failed prepare leaves nothing behind.
    assert sorted(os.listdir(snapshotter.snapshots_dir)) == sorted(
        str(snapshotter.store.get(k).id) for k in ("active", "a-view", "taken"))


def test_reopen_keeps_state_and_removes_orphans(snapshotter, make_snapshotter) -> None:
    committed_layer(snapshotter, "kept", None, {"f": b"1"})
    root = snapshotter.root
    snapshotter.close()
    # What a crash leaves: a staging dir, a dir whose row never committed.
    orphan_staging = Path(snapshotter.snapshots_dir, "new-crashed")
    orphan_staging.mkdir()
    Path(orphan_staging, "fs").mkdir()
    orphan_id = Path(snapshotter.snapshots_dir, "999")
    orphan_id.mkdir()
    reopened = make_snapshotter(root)
    try:
        assert not orphan_staging.exists() and not orphan_id.exists()
        assert reopened.stat("kept").kind is SnapshotKind.COMMITTED
        with mounted(reopened.view("v", "kept")) as where:
            assert Path(where, "f").read_bytes() == b"1"
    finally:
        reopened.close()
