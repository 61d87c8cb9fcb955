"""Layer apply/diff features that need root: owners, devices, overlay whiteouts."""

from __future__ import annotations

import errno
import io
import logging
import os
import shutil
import stat
import tarfile
import tempfile
import traceback
from pathlib import Path

import pytest

from dockyard.image.layers import (
    OVERLAY_OPAQUE_XATTR,
    UnsafeLayerError,
    apply_layer,
    write_diff,
)
from dockyard.image.snapshots import OverlaySnapshotter, mounted
from tests.unit.test_layers_unit import build_tar, d, dev, f, hard, sym, tree

pytestmark = [pytest.mark.integration, pytest.mark.requires_root]

# A file capability blob (v2, cap_net_bind_service): binary, not UTF-8.
CAPABILITY = (b"\x01\x00\x00\x02\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
              b"\x00\x00\x00\x00")


def test_owners_modes_devices_and_xattrs(tmp_path: Path) -> None:
    data = build_tar([
        d("home/user", mode=0o700, uid=1000, gid=1000),
        f("usr/bin/su", b"su", mode=0o4755, uid=0, gid=0),
        f("usr/bin/ping", b"ping", mode=0o755,
          xattrs={"security.capability": CAPABILITY.decode("utf-8", "surrogateescape")}),
        f("home/user/notes", b"n", mode=0o640, uid=1000, gid=1000,
          xattrs={"user.origin": "layer", "trusted.overlay.opaque": "y"}),
        d("tmp", mode=0o1777),
        dev("dev/null"), dev("dev/sda", 8, 0, kind="blk"), dev("run/pipe", 0, 0, kind="fifo"),
        sym("home/user/link", "notes"),
    ])
    apply_layer(str(tmp_path), io.BytesIO(data))
    st = os.stat(tmp_path / "home/user")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, 0o700)
    assert stat.S_IMODE(os.stat(tmp_path / "usr/bin/su").st_mode) == 0o4755
    assert stat.S_IMODE(os.stat(tmp_path / "tmp").st_mode) == 0o1777
    null = os.lstat(tmp_path / "dev/null")
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    assert stat.S_ISBLK(os.lstat(tmp_path / "dev/sda").st_mode)
    assert stat.S_ISFIFO(os.lstat(tmp_path / "run/pipe").st_mode)
    assert os.getxattr(tmp_path / "usr/bin/ping", "security.capability") == CAPABILITY
    assert os.getxattr(tmp_path / "home/user/notes", "user.origin") == b"layer"
    assert OVERLAY_OPAQUE_XATTR not in os.listxattr(tmp_path / "home/user/notes")
    assert os.lstat(tmp_path / "home/user/link").st_uid == os.getuid()
    # Round trip keeps all of it.
    out = io.BytesIO()
    write_diff(None, str(tmp_path), out, overlay=False)
    again = tmp_path.parent / "again"
    again.mkdir()
    apply_layer(str(again), io.BytesIO(out.getvalue()))
    assert tree(again) == tree(tmp_path)


def test_overlay_whiteout_form(tmp_path: Path) -> None:
    apply_layer(str(tmp_path), io.BytesIO(build_tar([
        f(".wh.gone"), d("dir"), f("dir/.wh..wh..opq"), f("dir/new", b"n"),
        f("deep/er/.wh.x"), f("implicit/.wh..wh..opq"),
    ])), overlay_whiteouts=True)
    gone = os.lstat(tmp_path / "gone")
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == 0
    assert os.getxattr(tmp_path / "dir", OVERLAY_OPAQUE_XATTR) == b"y"
    assert os.getxattr(tmp_path / "implicit", OVERLAY_OPAQUE_XATTR) == b"y"
    assert stat.S_ISCHR(os.lstat(tmp_path / "deep/er/x").st_mode)
    assert not list(tmp_path.rglob(".wh.*"))
    out = io.BytesIO()
    write_diff(None, str(tmp_path), out, overlay=True)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        names = tar.getnames()
    assert names == ["deep", "deep/er", "deep/er/.wh.x", "dir", "dir/.wh..wh..opq", "dir/new",
                     ".wh.gone", "implicit", "implicit/.wh..wh..opq"]


def test_overlay_upper_from_real_mount_exports_whiteouts(tmp_path: Path) -> None:
    with OverlaySnapshotter(str(tmp_path / "ov")) as snapshots:
        snapshots.prepare("base-a")
        apply_layer(snapshots.upper_dir("base-a"), io.BytesIO(build_tar([
            f("a", b"a"), d("d"), f("d/x", b"x"), f("h1", b"h")])), overlay_whiteouts=True)
        snapshots.commit("base", "base-a")
        with mounted(snapshots.prepare("c", "base")) as where:
            os.unlink(os.path.join(where, "a"))
            # redirect_dir is off, so a lower dir cannot be renamed in place (the upper
            # would not hold its files); mv falls back to copy + delete, as here.
            with pytest.raises(OSError) as caught:
                os.rename(os.path.join(where, "d"), os.path.join(where, "e"))
            assert caught.value.errno == errno.EXDEV
            shutil.copytree(os.path.join(where, "d"), os.path.join(where, "e"))
            shutil.rmtree(os.path.join(where, "d"))
            os.link(os.path.join(where, "h1"), os.path.join(where, "h2"))
        out = io.BytesIO()
        write_diff(None, snapshots.upper_dir("c"), out, overlay=True)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert ".wh.a" in members and ".wh.d" in members
    assert "e/x" in members
    assert members["h2"].islnk() and members["h2"].linkname == "h1"


def _run_as_nobody(function) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            code = function()
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.fixture
def public_tmp():
    """A temp dir the unprivileged user can reach (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix=f"dockyard-layers-{os.getpid()}-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_device_nodes_skipped_rootless(public_tmp: Path) -> None:
    tmp_path = public_tmp
    root = tmp_path / "rootless"
    root.mkdir()
    os.chown(root, 65534, 65534)
    data = build_tar([dev("dev/null"), f("ok", b"fine", uid=0, gid=0), hard("ok2", "ok")])

    def child() -> int:
        logging.basicConfig(level=logging.WARNING)
        apply_layer(str(root), io.BytesIO(data))
        return 0

    assert _run_as_nobody(child) == 0
    assert not (root / "dev/null").exists()
    assert (root / "ok").read_bytes() == b"fine"
    assert os.stat(root / "ok").st_uid == 65534


def test_rootless_cannot_escape_either(public_tmp: Path) -> None:
    tmp_path = public_tmp
    root = tmp_path / "rootless"
    (tmp_path / "outside").mkdir()
    os.chmod(tmp_path / "outside", 0o777)  # writable, so only the unpacker's checks protect it
    root.mkdir()
    os.chown(root, 65534, 65534)
    data = build_tar([sym("evil", str(tmp_path / "outside")), f("evil/x", b"x")])

    def child() -> int:
        try:
            apply_layer(str(root), io.BytesIO(data))
        except UnsafeLayerError:
            return 0
        return 3

    assert _run_as_nobody(child) == 0
    assert os.listdir(tmp_path / "outside") == []
