"""Pull with unpack_stream=StreamUnpacker: extraction overlapping the download.

Each test compares what a user would see (the snapshot tree, chain ids,
progress lines, blobs in the store) with a plain pull followed by unpack, or
checks that a failure leaves nothing half-made behind and never hangs.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
import threading
import uuid
from collections.abc import Callable
from typing import BinaryIO

import pytest

from dockyard import errdefs
from dockyard.image.content import LocalContentStore
from dockyard.image.core import Descriptor, SnapshotKind
from dockyard.image.distribution import progress as status
from dockyard.image.distribution import pull, push
from dockyard.image.distribution.progress import ProgressEvent, short_id
from dockyard.image.distribution.pull import PullOptions
from dockyard.image.manifest import chain_ids
from dockyard.image.snapshots import NativeSnapshotter, OverlaySnapshotter
from dockyard.image.snapshots.mount import mounted
from dockyard.image.unpack import LABEL_UNCOMPRESSED, StreamUnpacker, UnpackResult, unpack
from tests.fixtures.registry import (
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    TestImage,
    sha256,
)

pytestmark = [pytest.mark.integration, pytest.mark.requires_root]

FAST = PullOptions(backoff_s=0.01)
DEADLINE_S = 60.0  # a pull that takes longer than this here has hung
LONG_NAME = "usr/share/" + "/".join(["deeply-nested-directory"] * 5) + "/file.txt"


# ------------------------------------------------------------ images


def _tar(entries: list[tuple]) -> bytes:
    """entries: (kind, name, payload, mode); kind file/dir/sym/hard/fifo."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for kind, name, payload, mode in entries:
            info = tarfile.TarInfo(name)
            info.mode, info.mtime = mode, 946_684_800
            info.uid = info.gid = 1000 if name.endswith("secret") else 0
            data = None
            if kind == "file":
                info.size, data = len(payload), io.BytesIO(payload)
            else:
                info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE,
                             "hard": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE}[kind]
                info.linkname = payload if kind in ("sym", "hard") else ""
            tar.addfile(info, data)
    return buffer.getvalue()


def _image(layer_tars: list[bytes], level: int = 6) -> TestImage:
    layers = [gzip.compress(raw, compresslevel=level, mtime=0) for raw in layer_tars]
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(raw) for raw in layer_tars]},
    }, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": sha256(layer), "size": len(layer)}
                   for layer in layers],
    }, sort_keys=True).encode()
    return TestImage(manifest, config, layers)


def _base_layer(tool: bytes) -> bytes:
    return _tar([
        ("dir", "etc", b"", 0o755),
        ("file", "etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644),
        ("file", "etc/remove-me", b"gone in layer 1\n", 0o644),
        ("file", "etc/secret", b"s3cret\n", 0o600),
        ("dir", "usr/bin", b"", 0o755),
        ("file", "usr/bin/tool", tool, 0o755),
        ("sym", "usr/bin/alias", "tool", 0o777),
        ("hard", "usr/bin/tool-link", "usr/bin/tool", 0o755),
        ("file", "var/cache/old/a", b"a", 0o644),
        ("file", "var/cache/old/b", b"b", 0o644),
        ("file", LONG_NAME, b"long name\n", 0o644),
        ("fifo", "run/fifo", b"", 0o600),
    ])


def rich_image(tool_size: int = 3 << 20, level: int = 6, seed: bytes = b"") -> TestImage:
    """Three layers: a base of every entry kind with one big file (so the
    streamed layer spans many wire chunks), a layer of whiteouts and an
    opaque directory, and a small top layer."""
    seed = seed or uuid.uuid4().bytes
    tool = hashlib.shake_256(seed).digest(tool_size)
    return _image([
        _base_layer(tool),
        _tar([("file", "etc/.wh.remove-me", b"", 0o644),
              ("file", "var/cache/old/.wh..wh..opq", b"", 0o644),
              ("file", "var/cache/old/new", b"new", 0o644),
              ("file", "etc/motd", seed.hex().encode(), 0o644),
              ("file", "etc/passwd", b"root:x:0:0::/root:/bin/ash\n", 0o644)]),
        _tar([("file", "top/seed.txt", seed.hex().encode(), 0o644)]),
    ], level=level)


def expected_chain(image: TestImage) -> list[str]:
    return chain_ids(json.loads(image.config)["rootfs"]["diff_ids"])


# ------------------------------------------------------------ fixtures and helpers


class Env:
    """A content store and a snapshotter under one temp dir."""

    def __init__(self, root, kind: str = "overlayfs") -> None:
        self.kind = kind
        self.store = LocalContentStore(str(root / "content"))
        if kind == "overlayfs":
            try:
                self.snapshotter = OverlaySnapshotter(str(root / kind))
            except errdefs.Unavailable as exc:
                self.store.close()
                pytest.skip(f"overlayfs unavailable: {exc}")
        else:
            self.snapshotter = NativeSnapshotter(str(root / kind))

    def unpacker(self) -> StreamUnpacker:
        return StreamUnpacker(self.store, self.snapshotter, snapshotter_name=self.kind)

    def snapshots(self) -> dict[str, SnapshotKind]:
        return {info.name: info.kind for info in self.snapshotter.walk()}

    def tree(self, chain_id: str) -> dict[str, tuple]:
        key = f"check-{uuid.uuid4().hex[:8]}"
        mounts = self.snapshotter.view(key, chain_id)
        try:
            with mounted(mounts) as root:
                return tree_of(root)
        finally:
            self.snapshotter.remove(key)

    def sound_blobs(self) -> set[str]:
        """Every visible blob's digest, each checked against its bytes."""
        seen = set()
        for info in self.store.walk():
            assert sha256(self.store.read_blob(info.digest)) == info.digest
            seen.add(info.digest)
        return seen

    def close(self) -> None:
        self.snapshotter.close()
        self.store.close()


@pytest.fixture
def envs(tmp_path):
    made: list[Env] = []

    def make(name: str, kind: str = "overlayfs") -> Env:
        env = Env(tmp_path / name, kind)
        made.append(env)
        return env

    yield make
    for env in made:
        env.close()


def tree_of(root: str) -> dict[str, tuple]:
    """What a container would see: type, mode, owner, time, bytes, links."""
    out = {}
    inodes: dict[int, str] = {}
    for directory, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(dirs + files):
            path = os.path.join(directory, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            entry: tuple = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid,
                            st.st_gid)
            if not stat.S_ISDIR(st.st_mode):
                # A directory a layer implies but does not list gets the
                # time of its extraction, so only entries' own times compare.
                entry += (st.st_mtime_ns,)
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                # Hardlinks: name the first path seen with the same inode.
                entry += (st.st_size, digest, inodes.setdefault(st.st_ino, rel))
            elif stat.S_ISLNK(st.st_mode):
                entry += (os.readlink(path),)
            out[rel] = entry
    return out


def within(work: Callable[[], object], seconds: float = DEADLINE_S) -> object:
    """work() on a daemon thread; fails the test instead of hanging it."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = work()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test
            box["error"] = exc

    thread = threading.Thread(target=run, name="pull-under-test", daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"the pull did not finish within {seconds:g} s"
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("value")


def stream_pull(env: Env, ref: str, events: list | None = None,
                options: PullOptions | None = None) -> UnpackResult:
    unpacker = env.unpacker()

    def work() -> UnpackResult:
        result = pull(ref, env.store, unpack_stream=unpacker, options=options or FAST,
                      progress=events.append if events is not None else None)
        return unpacker.finish(result.target)

    return within(work)  # type: ignore[return-value]


def reference_unpack(env: Env, image: TestImage) -> tuple[UnpackResult, dict[str, tuple]]:
    """The image ingested directly and unpacked the ordinary way."""
    result = unpack(env.store, env.snapshotter, image.ingest(env.store),
                    snapshotter_name=env.kind)
    assert result.chain_id is not None
    return result, env.tree(result.chain_id)


def serve(faulty, image: TestImage) -> str:
    faulty.serve_image("repo", image)
    return f"{faulty.host}/repo:latest"


def thread_names() -> set[str]:
    return {thread.name for thread in threading.enumerate()}


# ------------------------------------------------------------ same result as pull + unpack


@pytest.mark.parametrize("kind", ["overlayfs", "native"])
def test_stream_pull_matches_plain_pull_and_unpack(registry, envs, kind) -> None:
    image = rich_image()
    source = envs("source", "native")
    ref = f"{registry.repo('stream')}:latest"
    push(ref, source.store, image.ingest(source.store))

    streamed, plain = envs("streamed", kind), envs("plain", kind)
    events: list[ProgressEvent] = []
    result = stream_pull(streamed, ref, events)
    plain_pull = within(lambda: pull(ref, plain.store, options=FAST))
    plain_result = unpack(plain.store, plain.snapshotter, plain_pull.target,  # type: ignore[attr-defined]
                          snapshotter_name=kind)

    chain = expected_chain(image)
    assert result.chain_id == plain_result.chain_id == chain[-1]
    assert [r.chain_id for r in result.layers] == [r.chain_id for r in plain_result.layers] \
        == chain
    assert [r.extracted for r in result.layers] == [True, True, True]
    assert result.manifest.digest == image.manifest_digest
    assert result.config.digest == image.config_digest
    assert streamed.snapshots() == {c: SnapshotKind.COMMITTED for c in chain}

    tree = streamed.tree(chain[-1])
    assert tree == plain.tree(chain[-1])
    assert "etc/remove-me" not in tree and "etc/secret" in tree
    assert sorted(p for p in tree if p.startswith("var/cache/old/")) == ["var/cache/old/new"]
    assert tree["usr/bin/tool-link"][-1] == "usr/bin/tool"  # still one inode
    assert tree["usr/bin/alias"][-1] == "tool" and LONG_NAME in tree

    # The labels a garbage collector and the next pull rely on.
    diff_ids = json.loads(image.config)["rootfs"]["diff_ids"]
    for digest, diff_id in zip(image.layer_digests, diff_ids, strict=True):
        assert streamed.store.info(digest).labels[LABEL_UNCOMPRESSED] == diff_id
    assert streamed.store.info(image.config_digest).labels[
        f"containerd.io/gc.ref.snapshot.{kind}"] == chain[-1]
    assert streamed.sound_blobs() == plain.sound_blobs()
    statuses = {(e.id, e.status) for e in events}
    for digest in image.layer_digests:
        assert (short_id(digest), status.PULL_COMPLETE) in statuses


def test_second_stream_pull_unpacks_nothing(registry, envs) -> None:
    image = rich_image(tool_size=100_000)
    source = envs("source", "native")
    ref = f"{registry.repo('again')}:latest"
    push(ref, source.store, image.ingest(source.store))
    env = envs("dest")
    first = stream_pull(env, ref)
    before = env.snapshots()

    events: list[ProgressEvent] = []
    again = stream_pull(env, ref, events)
    assert [r.extracted for r in again.layers] == [False, False, False]
    assert again.chain_id == first.chain_id == expected_chain(image)[-1]
    assert env.snapshots() == before  # no extraction snapshot was even made
    statuses = {(e.id, e.status) for e in events}
    for digest in image.layer_digests:
        assert (short_id(digest), status.ALREADY_EXISTS) in statuses
        assert (short_id(digest), status.EXTRACTING) not in statuses


# ------------------------------------------------------------ faulty registry


def test_truncated_then_resumed_layers_unpack_correctly(faulty_registry, envs) -> None:
    image = rich_image()
    ref = serve(faulty_registry, image)
    # The streamed first layer and a layer read back from the store both
    # lose their connection halfway once.
    faulty_registry.truncate[image.layer_digests[0]] = 1
    faulty_registry.truncate[image.layer_digests[2]] = 1
    env = envs("dest")
    result = stream_pull(env, ref)
    reference, reference_tree = reference_unpack(envs("reference"), image)

    assert [r.chain_id for r in result.layers] == [r.chain_id for r in reference.layers]
    assert result.chain_id == expected_chain(image)[-1]
    assert env.tree(result.chain_id) == reference_tree
    ranges = [r for _, path, r in faulty_registry.requests
              if path.endswith(image.layer_digests[0]) and r]
    assert ranges and ranges[0] != "bytes=0-"  # resumed where it broke, not restarted
    assert set(env.snapshots().values()) == {SnapshotKind.COMMITTED}


def _same_size_twin(image: TestImage) -> TestImage:
    """Another valid image whose layers have the same sizes: stored (level 0)
    gzip of same-length tars. A registry serving the twin's bytes under the
    real digests sends layers that unpack cleanly but are the wrong ones."""
    return rich_image(tool_size=1 << 20, level=0, seed=b"twin-" + b"x" * 11)


@pytest.mark.parametrize("bad", [0, 1], ids=["streamed-layer", "stored-layer"])
def test_wrong_digest_leaves_no_snapshot_and_no_bad_blob(faulty_registry, envs, bad) -> None:
    image = rich_image(tool_size=1 << 20, level=0, seed=b"real-" + b"x" * 11)
    twin = _same_size_twin(image)
    assert len(twin.layers[bad]) == len(image.layers[bad])
    assert twin.layers[bad] != image.layers[bad]
    ref = serve(faulty_registry, image)
    faulty_registry.bad_blobs[image.layer_digests[bad]] = twin.layers[bad]
    env = envs("dest")
    with pytest.raises(errdefs.DataLoss, match=rf"layer {image.layer_digests[bad]} digest "
                                               "mismatch"):
        stream_pull(env, ref)
    _assert_nothing_bad_left(env, image, bad)
    assert twin.layer_digests[bad] not in env.sound_blobs()


@pytest.mark.parametrize("bad", [0, 1], ids=["streamed-layer", "stored-layer"])
def test_repeated_500s_leave_no_snapshot_and_no_blob(faulty_registry, envs, bad) -> None:
    image = rich_image(tool_size=200_000)
    ref = serve(faulty_registry, image)
    faulty_registry.faults[f"blobs/{image.layer_digests[bad]}"] = [500] * 50
    env = envs("dest")
    with pytest.raises(errdefs.Unavailable, match=image.layer_digests[bad]):
        stream_pull(env, ref)
    _assert_nothing_bad_left(env, image, bad)


def _assert_nothing_bad_left(env: Env, image: TestImage, bad: int) -> None:
    """No extraction snapshot survives; a committed snapshot can only be a
    layer below the failed one, whose blob was verified before its end of
    stream was given; the failed blob is not visible."""
    snapshots = env.snapshots()
    assert set(snapshots.values()) <= {SnapshotKind.COMMITTED}
    assert set(snapshots) <= set(expected_chain(image)[:bad])
    assert image.layer_digests[bad] not in env.sound_blobs()


# ------------------------------------------------------------ callbacks that misbehave


def _big_image() -> TestImage:
    """A first layer larger than the pipe's buffer (256 wire chunks), so a
    reader that stops early would block the download if nothing noticed."""
    return _image([_tar([("file", "big.bin", os.urandom(24 << 20), 0o644)]),
                   _tar([("file", "small.txt", b"small", 0o644)])], level=0)


def test_failing_callback_does_not_hang_the_pull(faulty_registry, envs) -> None:
    image = _big_image()
    ref = serve(faulty_registry, image)
    env = envs("dest")
    seen: list[int] = []

    def callback(layer: Descriptor, stream: BinaryIO) -> None:
        got = 0
        while got < 100_000 and (chunk := stream.read(100_000 - got)):
            got += len(chunk)
        seen.append(got)
        raise RuntimeError(f"unpacker failed on {layer.digest}")

    with pytest.raises(RuntimeError, match="unpacker failed on"):
        within(lambda: pull(ref, env.store, unpack_stream=callback, options=FAST))
    assert seen == [100_000]
    assert not any(name.startswith("pull-layer") for name in thread_names())
    env.sound_blobs()  # whatever the cancelled download left visible is sound


def test_callback_that_stops_reading_early_does_not_hang(faulty_registry, envs) -> None:
    image = _big_image()
    ref = serve(faulty_registry, image)
    env = envs("dest")
    read: dict[str, int] = {}

    def callback(layer: Descriptor, stream: BinaryIO) -> None:
        read[layer.digest] = len(stream.read(4096))  # and never another byte

    result = within(lambda: pull(ref, env.store, unpack_stream=callback, options=FAST))
    assert result.manifest_descriptor.digest == image.manifest_digest  # type: ignore[attr-defined]
    assert list(read) == image.layer_digests and set(read.values()) == {4096}
    # The download went on to the end and was verified although nobody read it.
    assert set(image.layer_digests) <= env.sound_blobs()


def test_stream_unpacker_failure_removes_its_snapshot(faulty_registry, envs) -> None:
    """A layer that is not a tar at all: the extraction fails, its active
    snapshot goes, and the pull reports the layer as corrupt."""
    image = _image([b"not a tar archive, and not 512 bytes either"], level=6)
    ref = serve(faulty_registry, image)
    env = envs("dest")
    with pytest.raises(errdefs.DataLoss, match="truncated"):
        stream_pull(env, ref)
    assert env.snapshots() == {}


# ------------------------------------------------------------ dockyard-containerd's Transfer


@pytest.fixture
def daemon(tmp_path):
    from dockyard.containerd.context import DaemonContext

    context = DaemonContext.create(tmp_path / "root", tmp_path / "state")
    try:
        context.snapshotters.get_or_raise("overlayfs")
    except errdefs.DockyardError as exc:
        context.close()
        pytest.skip(f"overlayfs snapshotter unavailable: {exc}")
    yield context
    context.close()


def _transfer_pull(context, ref: str, events: list) -> object:
    from dockyard.containerd.api.dockyard.transfer.v1 import transfer_pb2
    from dockyard.containerd.services.transfer import TransferService

    request = transfer_pb2.PullRequest(reference=ref, unpack=True)
    return within(lambda: TransferService(context).pull("default", request, events.append))


def test_transfer_pull_unpacks_while_downloading(registry, envs, daemon) -> None:
    image = rich_image(tool_size=500_000)
    source = envs("source", "native")
    ref = f"{registry.repo('transfer')}:latest"
    push(ref, source.store, image.ingest(source.store))
    snapshotter = daemon.snapshotters.get_or_raise("overlayfs")
    chain = expected_chain(image)

    events: list[ProgressEvent] = []
    recorded = _transfer_pull(daemon, ref, events)
    assert recorded.target.digest == image.manifest_digest  # type: ignore[attr-defined]
    assert {info.name: info.kind for info in snapshotter.walk()} == {
        c: SnapshotKind.COMMITTED for c in chain}
    assert daemon.content.info(image.config_digest).labels[
        "containerd.io/gc.ref.snapshot.overlayfs"] == chain[-1]
    assert {(e.id, e.status) for e in events} >= {
        (short_id(d), status.PULL_COMPLETE) for d in image.layer_digests}
    assert daemon.leases.list() == []  # the pull's lease went with it

    again: list[ProgressEvent] = []
    _transfer_pull(daemon, ref, again)
    assert {info.name for info in snapshotter.walk()} == set(chain)
    assert {(e.id, e.status) for e in again} >= {
        (short_id(d), status.ALREADY_EXISTS) for d in image.layer_digests}
    assert not any(e.status == status.EXTRACTING for e in again)


def test_transfer_pull_of_a_corrupt_layer_records_nothing(faulty_registry, daemon) -> None:
    from dockyard.containerd.services.images import ImageService

    image = rich_image(tool_size=1 << 20, level=0, seed=b"real-" + b"x" * 11)
    ref = serve(faulty_registry, image)
    faulty_registry.bad_blobs[image.layer_digests[0]] = _same_size_twin(image).layers[0]
    with pytest.raises(errdefs.DataLoss, match="digest mismatch"):
        _transfer_pull(daemon, ref, [])
    with pytest.raises(errdefs.NotFound):
        ImageService(daemon).get("default", ref)
    assert list(daemon.snapshotters.get_or_raise("overlayfs").walk()) == []
    assert image.layer_digests[0] not in {info.digest for info in daemon.content.walk()}
    assert daemon.leases.list() == []
