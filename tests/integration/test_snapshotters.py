"""Both snapshotters through the shared conformance suite, plus their own specifics."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dockyard import errdefs
from dockyard.image.snapshots import NativeSnapshotter, OverlaySnapshotter, mounted
from dockyard.image.snapshots.copy import copy_tree
from dockyard.image.snapshots.mount import MAX_MOUNT_DATA, compact_overlay_data, parse_options
from dockyard.image.snapshots.overlay import check_overlay_support
from dockyard.linux import syscalls
from tests.integration.snapshotter_suite import *  # noqa: F403 - the shared suite
from tests.unit.test_layers_unit import tree

pytestmark = [pytest.mark.integration, pytest.mark.requires_root]


def _overlay_available() -> str | None:
    try:
        with open("/proc/filesystems") as handle:
            if "overlay" not in handle.read().split():
                return "overlayfs is not in /proc/filesystems"
    except OSError:
        return "cannot read /proc/filesystems"
    return None


def _open(kind: str, root: str):
    if kind == "overlayfs":
        reason = _overlay_available()
        if reason:
            pytest.skip(reason)
        return OverlaySnapshotter(root)
    return NativeSnapshotter(root)


@pytest.fixture(params=["overlayfs", "native"])
def make_snapshotter(request):
    return lambda root: _open(request.param, root)


@pytest.fixture
def snapshotter(make_snapshotter, tmp_path: Path):
    instance = make_snapshotter(str(tmp_path / "snapshots"))
    try:
        yield instance
    finally:
        instance.close()


# ------------------------------------------------------------ overlay only


@pytest.fixture
def overlay(tmp_path: Path):
    reason = _overlay_available()
    if reason:
        pytest.skip(reason)
    instance = OverlaySnapshotter(str(tmp_path / "ov"))
    try:
        yield instance
    finally:
        instance.close()


def _options(mounts) -> dict[str, str]:
    assert len(mounts) == 1
    return dict(option.partition("=")[::2] for option in mounts[0].options)


def test_overlay_mount_shapes(overlay) -> None:
    first = overlay.prepare("a")
    assert first[0].type == "bind" and "rw" in first[0].options
    assert first[0].source == overlay.fs_dir(overlay.store.get("a").id)
    overlay.commit("A", "a")
    overlay.prepare("b", "A")
    overlay.commit("B", "b")
    single_view = overlay.view("v1", "A")
    assert single_view[0].type == "bind" and "ro" in single_view[0].options
    active = overlay.prepare("c", "B")
    assert active[0].type == "overlay"
    opts = _options(active)
    assert opts["upperdir"].endswith("/fs") and opts["workdir"].endswith("/work")
    lowers = opts["lowerdir"].split(":")
    assert lowers == [overlay.link_path(overlay.store.get(n).id) for n in ("B", "A")]
    assert all(os.path.realpath(low) == overlay.fs_dir(overlay.store.get(n).id)
               for low, n in zip(lowers, ("B", "A"), strict=True))
    view = overlay.view("v2", "B")
    opts = _options(view)
    assert "upperdir" not in opts and len(opts["lowerdir"].split(":")) == 2


def test_overlay_hundred_layers_mount(overlay) -> None:
    cwd = os.getcwd()
    parent = None
    for index in range(100):
        key = f"layer-{index}-active"
        overlay.prepare(key, parent)
        Path(overlay.upper_dir(key), f"file-{index}").write_text(str(index))
        overlay.commit(f"layer-{index}", key)
        parent = f"layer-{index}"
    mounts = overlay.prepare("top", parent)
    data = ",".join(mounts[0].options)
    assert len(_options(mounts)["lowerdir"].split(":")) == 100
    assert len(data) > MAX_MOUNT_DATA, "root too short to exercise the long-options path"
    with mounted(mounts) as where:
        for index in (0, 50, 99):
            assert Path(where, f"file-{index}").read_text() == str(index)
        assert len(os.listdir(where)) == 100
        Path(where, "written").write_text("up")
    assert Path(overlay.upper_dir("top"), "written").read_text() == "up"
    assert os.getcwd() == cwd  # the short-path mount restored the working directory
    with mounted(overlay.view("top-view", parent)) as where:
        assert len(os.listdir(where)) == 100


def test_compact_overlay_data_keeps_absolute_meaning() -> None:
    data = ["workdir=/r/snapshots/9/work", "upperdir=/r/snapshots/9/fs",
            "lowerdir=/r/l/8:/r/l/7", "index=off"]
    workdir, short = compact_overlay_data(data)
    assert workdir == "/r"
    assert short == ["workdir=snapshots/9/work", "upperdir=snapshots/9/fs",
                     "lowerdir=l/8:l/7", "index=off"]


def test_parse_options() -> None:
    flags, propagation, data = parse_options(["rbind", "ro", "nosuid", "rprivate", "x=y"])
    assert flags & syscalls.MS_BIND and flags & syscalls.MS_REC and flags & syscalls.MS_RDONLY
    assert flags & syscalls.MS_NOSUID
    assert propagation == syscalls.MS_PRIVATE | syscalls.MS_REC
    assert data == ["x=y"]


def test_overlay_unavailable_on_overlay_backing(overlay, tmp_path: Path) -> None:
    overlay.prepare("base-a")
    overlay.commit("base", "base-a")
    with mounted(overlay.prepare("on-top", "base")) as where:
        nested_root = os.path.join(where, "nested")
        os.mkdir(nested_root)
        try:
            check_overlay_support(nested_root)
        except errdefs.Unavailable as exc:
            assert "native snapshotter" in str(exc)
        else:
            pytest.skip("this kernel accepts overlayfs as an upper filesystem")


def test_overlay_reopen_repairs_links(overlay) -> None:
    overlay.prepare("a")
    overlay.commit("A", "a")
    link = overlay.link_path(overlay.store.get("A").id)
    os.unlink(link)
    Path(overlay.links_dir, "zz-stale").symlink_to("../snapshots/12345/fs")
    overlay.close()
    again = OverlaySnapshotter(overlay.root)
    try:
        assert os.path.islink(link)
        assert os.listdir(again.links_dir) == [os.path.basename(link)]
    finally:
        again.close()


# ------------------------------------------------------------- native only


def test_native_copy_preserves_metadata(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "setuid").write_bytes(b"s")
    os.chown(source / "setuid", 1234, 5678)
    os.chmod(source / "setuid", 0o4755)
    os.link(source / "setuid", source / "hardlink")
    os.symlink("/nonexistent/target", source / "dangling")
    os.mknod(source / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mkfifo(source / "fifo")
    (source / "dir").mkdir(mode=0o700)
    os.setxattr(source / "dir", "trusted.dockyard", b"1")
    os.setxattr(source / "setuid", "user.note", b"\xff\x00bin")
    os.utime(source / "dir", ns=(10**18, 10**18))
    target = tmp_path / "dst"
    copy_tree(str(source), str(target))
    assert tree(target) == tree(source)
    assert os.stat(target / "dir").st_mtime_ns == 10**18
    assert os.stat(target / "setuid").st_mode & stat.S_ISUID


def test_native_prepare_is_independent_copy(tmp_path: Path) -> None:
    with NativeSnapshotter(str(tmp_path / "n")) as native:
        native.prepare("a")
        Path(native.upper_dir("a"), "f").write_text("parent")
        native.commit("A", "a")
        native.prepare("b", "A")
        Path(native.upper_dir("b"), "f").write_text("child")
        assert Path(native.upper_dir("A"), "f").read_text() == "parent"
        assert native.lower_dirs("b") == [native.upper_dir("A")]
