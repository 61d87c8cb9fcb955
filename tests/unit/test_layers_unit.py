"""Layer apply/diff without root: crafted tars, whiteouts, compression, round trips.

The tar builders here are shared with tests/integration/test_layers.py.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import tarfile
import time
from pathlib import Path

import pytest

from dockyard import errdefs
from dockyard.image import compression, layers
from dockyard.image.layers import UnsafeLayerError, apply_layer, diff_directories, write_diff

# ------------------------------------------------------------ tar builders


def f(name: str, data: bytes = b"", mode: int = 0o644, **extra) -> tuple:
    return ("file", name, data, mode, extra)


def d(name: str, mode: int = 0o755, **extra) -> tuple:
    return ("dir", name, b"", mode, extra)


def sym(name: str, target: str) -> tuple:
    return ("sym", name, target, 0o777, {})


def hard(name: str, target: str) -> tuple:
    return ("hard", name, target, 0o644, {})


def dev(name: str, major: int = 1, minor: int = 3, kind: str = "chr") -> tuple:
    return (kind, name, (major, minor), 0o666, {})


def build_tar(entries: list[tuple], *, truncate_at: int | None = None) -> bytes:
    """A PAX tar of entries; extra keys: uid, gid, mtime, xattrs, size (a lie)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for kind, name, payload, mode, extra in entries:
            info = tarfile.TarInfo(name)
            info.mode = mode
            info.uid = extra.get("uid", os.getuid())
            info.gid = extra.get("gid", os.getgid())
            info.mtime = extra.get("mtime", 1_600_000_000)
            for key, value in extra.get("xattrs", {}).items():
                info.pax_headers["SCHILY.xattr." + key] = value
            content = None
            if kind == "file":
                info.type = tarfile.REGTYPE
                info.size = len(payload)
                content = io.BytesIO(payload)
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, payload
            elif kind == "hard":
                info.type, info.linkname = tarfile.LNKTYPE, payload
            elif kind in ("chr", "blk", "fifo"):
                info.type = {"chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE,
                             "fifo": tarfile.FIFOTYPE}[kind]
                info.devmajor, info.devminor = payload
            tar.addfile(info, content)
    data = buffer.getvalue()
    return data if truncate_at is None else data[:truncate_at]


def huge_member_tar(declared: int) -> bytes:
    """A tar whose one member claims `declared` bytes but carries only 1 KiB."""
    info = tarfile.TarInfo("big")
    info.size = declared
    header = info.tobuf(format=tarfile.PAX_FORMAT)
    return header + b"x" * 1024


# -------------------------------------------------------------- tree views


def tree(root: str | Path) -> dict[str, tuple]:
    """Everything a user can observe about a tree, keyed by relative path."""
    root = str(root)
    out: dict[str, tuple] = {}
    inode_names: dict[tuple[int, int], str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            mode = st.st_mode
            detail: object = None
            if stat.S_ISREG(mode):
                detail = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            elif stat.S_ISLNK(mode):
                detail = os.readlink(path)
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                detail = st.st_rdev
            xattrs = {}
            try:
                for attr in os.listxattr(path, follow_symlinks=False):
                    if not attr.startswith("trusted.overlay.") and attr != "security.selinux":
                        xattrs[attr] = os.getxattr(path, attr, follow_symlinks=False)
            except OSError:
                pass
            link = None
            if not stat.S_ISDIR(mode) and st.st_nlink > 1:
                link = inode_names.setdefault((st.st_dev, st.st_ino), rel)
            mtime = int(st.st_mtime) if not stat.S_ISDIR(mode) else None
            out[rel] = (stat.S_IFMT(mode), stat.S_IMODE(mode), st.st_uid, st.st_gid, detail,
                        mtime, tuple(sorted(xattrs.items())), link)
    return out


def fingerprint_outside(base: Path, root: Path) -> dict[str, tuple]:
    """The tree around root (root excluded): must never change."""
    view = tree(base)
    prefix = os.path.relpath(root, base)
    return {k: v for k, v in view.items() if k != prefix and not k.startswith(prefix + "/")}


@pytest.fixture
def sandbox(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "canary").write_bytes(b"canary")
    return tmp_path, root


def apply_bytes(root: Path, data: bytes, **kwargs) -> layers.ApplyResult:
    return apply_layer(str(root), io.BytesIO(data), **kwargs)


# ------------------------------------------------------------------ basics


def test_apply_basic_tree_and_diff_id(tmp_path: Path) -> None:
    data = build_tar([
        d("etc", mode=0o750),
        f("etc/hosts", b"127.0.0.1 localhost\n", mode=0o640, mtime=1_500_000_000),
        f("usr/bin/tool", b"#!/bin/sh\n", mode=0o755),  # parents implicit
        sym("bin", "usr/bin"),
        hard("usr/bin/tool2", "usr/bin/tool"),
        f("./dot/x", b"x"),
    ])
    result = apply_bytes(tmp_path, data)
    assert result.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert result.size == len(data)
    assert (tmp_path / "etc/hosts").read_bytes() == b"127.0.0.1 localhost\n"
    assert stat.S_IMODE(os.stat(tmp_path / "etc").st_mode) == 0o750
    assert stat.S_IMODE(os.stat(tmp_path / "etc/hosts").st_mode) == 0o640
    assert os.stat(tmp_path / "etc/hosts").st_mtime == 1_500_000_000
    assert os.stat(tmp_path / "etc").st_mtime == 1_600_000_000  # set after its children
    assert os.readlink(tmp_path / "bin") == "usr/bin"
    assert os.stat(tmp_path / "usr/bin/tool").st_ino == os.stat(tmp_path / "usr/bin/tool2").st_ino
    assert (tmp_path / "dot/x").read_bytes() == b"x"


@pytest.mark.parametrize("kind", ["gzip", "zstd", None])
def test_compression_auto_and_explicit(tmp_path: Path, kind: str | None) -> None:
    data = build_tar([f("a", b"hello" * 1000)])
    packed = io.BytesIO()
    writer = compression.compressing_writer(packed, kind)
    writer.write(data)
    if kind is not None:
        writer.close()
    for mode in ("auto", kind):
        target = tmp_path / f"{mode}"
        target.mkdir()
        result = apply_layer(str(target), io.BytesIO(packed.getvalue()), compression=mode)
        assert result.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
        assert (target / "a").read_bytes() == b"hello" * 1000


def test_unknown_compression_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        apply_layer(str(tmp_path), io.BytesIO(b""), compression="lz4")


def test_truncated_gzip_is_data_loss(tmp_path: Path) -> None:
    data = build_tar([f("a", os.urandom(100_000))])
    packed = io.BytesIO()
    writer = compression.compressing_writer(packed, "gzip")
    writer.write(data)
    writer.close()
    with pytest.raises(errdefs.DataLoss):
        apply_bytes(tmp_path, packed.getvalue()[:-5000])


def test_later_entry_replaces_earlier(tmp_path: Path) -> None:
    apply_bytes(tmp_path, build_tar([d("x"), f("x/inner", b"1"), f("x", b"file now"),
                                     f("y", b"file"), d("y"), sym("z", "a"), f("z", b"z")]))
    assert (tmp_path / "x").read_bytes() == b"file now"
    assert (tmp_path / "y").is_dir()
    assert not (tmp_path / "z").is_symlink()


# ---------------------------------------------------------------- security


def _assert_rejected(sandbox: tuple[Path, Path], entries_or_bytes, error=UnsafeLayerError,
                     **kwargs) -> None:
    base, root = sandbox
    before = fingerprint_outside(base, root)
    data = entries_or_bytes if isinstance(entries_or_bytes, bytes) else build_tar(
        entries_or_bytes)
    with pytest.raises(error):
        apply_bytes(root, data, **kwargs)
    assert fingerprint_outside(base, root) == before
    assert (base / "outside/canary").read_bytes() == b"canary"


def test_dotdot_escape_rejected(sandbox) -> None:
    _assert_rejected(sandbox, [f("../escape", b"x")])
    assert not (sandbox[0] / "escape").exists()


def test_dotdot_in_middle_rejected(sandbox) -> None:
    _assert_rejected(sandbox, [d("a"), f("a/../../escape", b"x")])


def test_absolute_path_is_stripped_into_root(sandbox) -> None:
    base, root = sandbox
    before = fingerprint_outside(base, root)
    apply_bytes(root, build_tar([f(f"{base}/outside/canary", b"pwned"), f("/abs/path", b"ok")]))
    assert fingerprint_outside(base, root) == before
    assert (root / "abs/path").read_bytes() == b"ok"
    assert (root / str(base).lstrip("/") / "outside/canary").read_bytes() == b"pwned"


def test_symlink_to_absolute_outside_then_write_through(sandbox) -> None:
    base, _ = sandbox
    _assert_rejected(sandbox, [sym("evil", str(base / "outside")), f("evil/pwned", b"x")])
    assert not (base / "outside/pwned").exists()


def test_symlink_relative_escape_then_write_through(sandbox) -> None:
    _assert_rejected(sandbox, [sym("evil", "../../"), f("evil/x", b"x")])


def test_symlink_then_nested_dir_through_it(sandbox) -> None:
    base, _ = sandbox
    _assert_rejected(sandbox, [sym("evil", str(base / "outside")), d("evil/sub")])


def test_symlink_planted_in_lower_tree_is_not_followed(sandbox) -> None:
    base, root = sandbox
    os.symlink(base / "outside", root / "lib")
    _assert_rejected(sandbox, [f("lib/pwned", b"x")])


def test_dir_replaced_by_symlink_then_write(sandbox) -> None:
    base, _ = sandbox
    _assert_rejected(sandbox, [d("d"), f("d/ok", b"1"), sym("d", str(base / "outside")),
                               f("d/canary", b"pwned")])


def test_symlink_replaced_by_file_stays_inside(sandbox) -> None:
    base, root = sandbox
    before = fingerprint_outside(base, root)
    apply_bytes(root, build_tar([sym("s", str(base / "outside/canary")), f("s", b"mine")]))
    assert (root / "s").read_bytes() == b"mine"
    assert fingerprint_outside(base, root) == before


def test_hardlink_to_dotdot_outside_rejected(sandbox) -> None:
    _assert_rejected(sandbox, [hard("link", "../outside/canary")])


def test_hardlink_to_absolute_path_is_not_host_file(sandbox) -> None:
    # "/etc/passwd" is stripped to the layer's etc/passwd, which does not exist.
    _assert_rejected(sandbox, [hard("passwd", "/etc/passwd")], error=errdefs.InvalidArgument)


def test_hardlink_through_symlink_rejected(sandbox) -> None:
    base, _ = sandbox
    _assert_rejected(sandbox, [sym("evil", str(base / "outside")), hard("link", "evil/canary")])


def test_write_to_hardlinked_name_never_modifies_shared_inode(sandbox) -> None:
    base, root = sandbox
    os.link(base / "outside/canary", root / "shared")  # as a lower tree could hold
    before = os.stat(base / "outside/canary")
    apply_bytes(root, build_tar([f("a", b"original"), hard("b", "a"), f("b", b"rewritten"),
                                 f("shared", b"rewritten")]))
    assert (root / "a").read_bytes() == b"original"
    assert (root / "b").read_bytes() == b"rewritten"
    assert (base / "outside/canary").read_bytes() == b"canary"
    after = os.stat(base / "outside/canary")
    assert (after.st_mtime_ns, after.st_size, after.st_mode) == (
        before.st_mtime_ns, before.st_size, before.st_mode)
    assert (root / "shared").read_bytes() == b"rewritten"


def test_huge_declared_size_with_truncated_stream_is_data_loss(sandbox) -> None:
    _assert_rejected(sandbox, huge_member_tar(1 << 30), error=errdefs.DataLoss)


def test_member_over_size_cap_rejected(sandbox) -> None:
    _assert_rejected(sandbox, build_tar([f("a", b"x" * 2000)]), max_member_size=1000)


def test_truncated_tar_is_data_loss(sandbox) -> None:
    data = build_tar([f("a", b"x" * 5000), f("b", b"y")], truncate_at=3000)
    _assert_rejected(sandbox, data, error=errdefs.DataLoss)


def test_whiteout_through_symlink_rejected(sandbox) -> None:
    base, _ = sandbox
    _assert_rejected(sandbox, [sym("evil", str(base / "outside")), f("evil/.wh.canary")])
    _assert_rejected(sandbox, [f("../.wh.outside")])
    _assert_rejected(sandbox, [f("../outside/.wh..wh..opq")])


# --------------------------------------------------------------- whiteouts


def _lower(root: Path) -> None:
    apply_bytes(root, build_tar([
        d("keep"), f("keep/a", b"a"), f("gone", b"g"), d("dir"), f("dir/x", b"x"),
        d("opaque"), f("opaque/old1", b"1"), d("opaque/oldsub"), f("opaque/oldsub/f", b"f"),
    ]))


def test_flat_whiteouts_delete_for_real(tmp_path: Path) -> None:
    _lower(tmp_path)
    apply_bytes(tmp_path, build_tar([
        f(".wh.gone"), f(".wh.dir"), f("keep/.wh.missing"), f("nowhere/.wh.x"),
        d("opaque"), f("opaque/new", b"n"), f("opaque/.wh..wh..opq"), f("opaque/later", b"l"),
    ]))
    assert not (tmp_path / "gone").exists()
    assert not (tmp_path / "dir").exists()
    assert not (tmp_path / "nowhere").exists()
    assert (tmp_path / "keep/a").read_bytes() == b"a"
    assert sorted(os.listdir(tmp_path / "opaque")) == ["later", "new"]
    assert not list(tmp_path.rglob(".wh.*"))


# ----------------------------------------------------------------- diffing


def test_full_export_round_trip_and_determinism(tmp_path: Path) -> None:
    source = tmp_path / "a"
    source.mkdir()
    apply_bytes(source, build_tar([
        d("etc", mode=0o700), f("etc/conf", b"c" * 3000, mode=0o600), sym("link", "etc/conf"),
        f("bin/tool", b"t", mode=0o755), hard("bin/tool-alias", "bin/tool"),
        f("with xattr", b"v", xattrs={"user.test": "value"}),
    ]))
    first, second = io.BytesIO(), io.BytesIO()
    result = write_diff(None, str(source), first, overlay=False)
    assert write_diff(None, str(source), second, overlay=False) == result
    assert first.getvalue() == second.getvalue()
    assert result.diff_id == "sha256:" + hashlib.sha256(first.getvalue()).hexdigest()
    copy = tmp_path / "b"
    copy.mkdir()
    applied = apply_bytes(copy, first.getvalue())
    assert applied.diff_id == result.diff_id
    assert tree(copy) == tree(source)


def test_diff_directories_and_flat_round_trip(tmp_path: Path) -> None:
    lower, upper, replay = tmp_path / "lower", tmp_path / "upper", tmp_path / "replay"
    for path in (lower, upper, replay):
        path.mkdir()
    base_layer = build_tar([
        d("etc"), f("etc/keep", b"k"), f("etc/change", b"old"), f("etc/gone", b"g"),
        d("var/lib/pkg"), f("var/lib/pkg/a", b"a"), sym("l", "etc/keep"), f("t", b"same-size"),
    ])
    apply_bytes(lower, base_layer)
    apply_bytes(upper, base_layer)
    apply_bytes(replay, base_layer)
    (upper / "etc/change").write_bytes(b"new content")
    (upper / "etc/gone").unlink()
    shutil.rmtree(upper / "var/lib")
    (upper / "new").mkdir()
    (upper / "new/file").write_bytes(b"n")
    (upper / "l").unlink()
    os.symlink("etc/change", upper / "l")
    (upper / "t").write_bytes(b"SAME-SIZE")  # same size; mtime tells
    os.utime(upper / "t", ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))
    changes = {(c.kind.value, c.path) for c in diff_directories(str(lower), str(upper))}
    assert ("delete", "etc/gone") in changes
    assert ("modify", "etc/change") in changes
    assert ("delete", "var/lib") in changes
    assert ("delete", "var/lib/pkg") not in changes
    assert ("add", "new") in changes and ("add", "new/file") in changes
    assert ("modify", "l") in changes
    assert ("modify", "t") in changes  # same size and mtime: contents compared
    assert not any(path == "etc/keep" for _, path in changes)
    out = io.BytesIO()
    write_diff([str(lower)], str(upper), out, overlay=False)
    apply_bytes(replay, out.getvalue())
    assert tree(replay) == tree(upper)


def test_overlay_style_upper_without_whiteouts_exports(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    upper.mkdir()
    (upper / "d").mkdir()
    (upper / "d/f").write_bytes(b"f")
    out = io.BytesIO()
    write_diff(None, str(upper), out, overlay=True)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        assert tar.getnames() == ["d", "d/f"]
        assert tar.getmember("d/f").mtime == int(os.stat(upper / "d/f").st_mtime)
    assert time.time() > 0
