"""Layer tars: safe streaming apply (with OCI whiteouts) and diff writing.

apply_layer unpacks a (compressed) layer tar into a directory without ever
letting an entry touch anything outside it. Every path is resolved one
component at a time from a file descriptor of the root with O_NOFOLLOW, so a
symlink planted by an earlier entry (or a lower layer) is never followed: a
path that would go through one is rejected with UnsafeLayerError. Decisions
that differ from a naive extract, on purpose:

- a leading "/" is stripped (as docker does), so "/etc/x" lands in etc/x;
- any ".." component is rejected, even one that would stay inside the root;
- a path whose parent is a symlink is rejected rather than resolved in scope;
- an existing non-directory is always unlinked before a new entry is created
  (O_EXCL), so a write can never modify an inode shared with another tree.

The tar headers are read by dockyard.image.tarstream (a faster reader than
tarfile's, with the same meaning for every field used here).

write_diff is the reverse: it turns an overlay upper dir (or the changes
between two flat trees, for the native snapshotter) into a deterministic PAX
tar whose sha256 is the diff_id.
"""

from __future__ import annotations

import collections
import enum
import errno
import gzip
import hashlib
import logging
import os
import shutil
import stat
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from dockyard import errdefs
from dockyard.image.compression import decompressing_reader
from dockyard.image.tarstream import DigestingReader, TarStream

log = logging.getLogger(__name__)

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
# Overlay keeps its own bookkeeping in trusted.overlay.*; a layer must never
# set it (it could redirect lookups) and a diff must never export it.
OVERLAY_XATTR_PREFIX = "trusted.overlay."
XATTR_PAX_PREFIX = "SCHILY.xattr."
# Larger than any sane single file in an image, small enough to catch a
# corrupt or hostile header before we start filling a disk.
DEFAULT_MAX_MEMBER_SIZE = 1 << 40

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20
_FD_CACHE_SIZE = 64  # directory fds kept open while a layer is applied


class UnsafeLayerError(errdefs.InvalidArgument):
    """A layer entry tried to escape the root or to write through a link."""


@dataclass(frozen=True)
class ApplyResult:
    diff_id: str  # "sha256:<hex>" of the uncompressed tar stream
    size: int  # bytes of the uncompressed tar stream


@dataclass(frozen=True)
class DiffResult:
    diff_id: str
    size: int


class ChangeKind(enum.Enum):
    ADD = "add"
    MODIFY = "modify"
    DELETE = "delete"


@dataclass(frozen=True)
class Change:
    kind: ChangeKind
    path: str  # relative, "/"-separated, no leading slash


# ------------------------------------------------------------------ helpers


class _DigestingWriter:
    def __init__(self, inner: BinaryIO) -> None:
        self._inner = inner
        self.hash = hashlib.sha256()
        self.count = 0

    def write(self, data: bytes) -> int:
        self._inner.write(data)
        self.hash.update(data)
        self.count += len(data)
        return len(data)


def _corrupt_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [tarfile.TarError, EOFError, zlib.error,
                                         gzip.BadGzipFile]
    try:
        from isal import isal_zlib

        errors.append(isal_zlib.error)
    except ImportError:  # pragma: no cover
        pass
    try:
        import zstandard

        errors.append(zstandard.ZstdError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


_CORRUPT = _corrupt_errors()


def _split_member_path(name: str) -> list[str]:
    parts = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise UnsafeLayerError(
                f"layer entry {name!r} contains a '..' component; refusing to unpack a layer "
                "that points outside its root")
        parts.append(part)
    return parts


def _proc_path(dir_fd: int, name: str = "") -> str:
    # /proc/self/fd/N resolves to the already-opened directory, so only the
    # last component is looked up, and the *xattr(follow_symlinks=False)
    # calls never follow it.
    base = f"/proc/self/fd/{dir_fd}"
    return f"{base}/{name}" if name else base


def _remove_entry(dir_fd: int, name: str) -> bool:
    """Remove name (a whole tree if a directory); True when a directory went."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)
        return True
    os.unlink(name, dir_fd=dir_fd)
    return False


# -------------------------------------------------------------------- apply


class _Unpacker:
    def __init__(self, root_fd: int, overlay_whiteouts: bool, max_member_size: int) -> None:
        self.root_fd = root_fd
        self.overlay = overlay_whiteouts
        self.max_member_size = max_member_size
        # Every path this layer wrote, with all its ancestors: an opaque
        # whiteout removes what lower layers left, never this layer's own work.
        self.written: set[tuple[str, ...]] = set()
        self.dirs: dict[tuple[str, ...], tarfile.TarInfo] = {}
        self.warned_chown = False
        self.fd_cache: collections.OrderedDict[tuple[str, ...], int] = collections.OrderedDict()
        # Directories this apply made (() for a root that started empty).
        self.fresh: set[tuple[str, ...]] = set() if os.listdir(root_fd) else {()}

    # -- path resolution

    def open_parent(self, parts: Sequence[str], member: str, create: bool) -> int | None:
        """An fd of the directory that holds parts[-1], or None when it is missing.

        The caller owns (and closes) the fd returned.
        """
        fd = self.dir_fd(tuple(parts[:-1]), member, create)
        return None if fd is None else os.dup(fd)

    def dir_fd(self, dir_parts: tuple[str, ...], member: str, create: bool) -> int | None:
        """A cached fd of the directory dir_parts, opened one component at a
        time with O_NOFOLLOW. Layers list siblings together, so caching the
        directories just used saves a walk from the root per entry; the cache
        is dropped whenever a directory is removed (see remove), so an fd can
        never point at a directory that is no longer in the tree."""
        if not dir_parts:
            return self.root_fd
        cached = self.fd_cache.get(dir_parts)
        if cached is not None:
            self.fd_cache.move_to_end(dir_parts)
            return cached
        parent = self.dir_fd(dir_parts[:-1], member, create)
        if parent is None:
            return None
        component = dir_parts[-1]
        try:
            fd = os.open(component, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                return None
            os.mkdir(component, 0o755, dir_fd=parent)
            self.fresh.add(dir_parts)
            fd = os.open(component, _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            where = "/".join(dir_parts)
            st = os.stat(component, dir_fd=parent, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                raise UnsafeLayerError(
                    f"layer entry {member!r} goes through symlink {where!r}; a layer "
                    "may not write through a symlink") from exc
            if not create:
                return None
            raise errdefs.InvalidArgument(
                f"layer entry {member!r}: parent {where!r} is not a directory") from exc
        self.fd_cache[dir_parts] = fd
        if len(self.fd_cache) > _FD_CACHE_SIZE:
            _, evicted = self.fd_cache.popitem(last=False)
            os.close(evicted)
        return fd

    def remove(self, dir_fd: int, name: str) -> None:
        if _remove_entry(dir_fd, name):
            self.drop_fd_cache()
            self.fresh.clear()

    def drop_fd_cache(self) -> None:
        while self.fd_cache:
            os.close(self.fd_cache.popitem()[1])

    def mark_written(self, parts: Sequence[str]) -> None:
        for end in range(1, len(parts) + 1):
            self.written.add(tuple(parts[:end]))

    # -- entries

    def apply(self, tar: TarStream, member: tarfile.TarInfo) -> None:
        parts = _split_member_path(member.name)
        if not parts:
            return  # the root itself ("./"): the snapshot owns its root's metadata
        base = parts[-1]
        if base.startswith(WHITEOUT_PREFIX):
            self.whiteout(parts, member)
            return
        if member.size > self.max_member_size and member.isreg():
            raise UnsafeLayerError(
                f"layer entry {member.name!r} declares {member.size} bytes, more than the "
                f"limit of {self.max_member_size}; the layer is corrupt or hostile")
        parent_fd = self.open_parent(parts, member.name, create=True)
        assert parent_fd is not None
        try:
            self.write_entry(tar, member, parts, parent_fd)
        finally:
            os.close(parent_fd)
        self.mark_written(parts)

    def write_entry(self, tar: TarStream, member: tarfile.TarInfo,
                    parts: list[str], parent_fd: int) -> None:
        name = parts[-1]
        # In a directory this apply created, only this layer's own entries
        # can exist, so a name it has not written needs no lookup first.
        absent = tuple(parts[:-1]) in self.fresh and tuple(parts) not in self.written
        if member.isdir():
            try:
                if absent:
                    raise FileNotFoundError
                st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    os.unlink(name, dir_fd=parent_fd)
                    os.mkdir(name, 0o700, dir_fd=parent_fd)
                    self.fresh.add(tuple(parts))
            except FileNotFoundError:
                os.mkdir(name, 0o700, dir_fd=parent_fd)
                self.fresh.add(tuple(parts))
            self.set_owner_and_xattrs(parent_fd, name, member)
            self.dirs[tuple(parts)] = member  # mode and times once its children are in
            return
        if member.islnk():
            self.hardlink(member, parts, parent_fd)
            return
        if not absent:
            self.remove(parent_fd, name)
        if member.isreg():
            self.write_file(tar, member, parent_fd, name)
        elif member.issym():
            os.symlink(member.linkname, name, dir_fd=parent_fd)
        elif member.ischr() or member.isblk() or member.isfifo():
            kind = stat.S_IFCHR if member.ischr() else (
                stat.S_IFBLK if member.isblk() else stat.S_IFIFO)
            try:
                os.mknod(name, kind | 0o600, os.makedev(member.devmajor, member.devminor),
                         dir_fd=parent_fd)
            except PermissionError:
                log.warning("skipping device node %s in layer: mknod is not permitted here "
                            "(rootless?)", member.name)
                return
        else:
            log.warning("skipping layer entry %s of unsupported tar type %r",
                        member.name, member.type)
            return
        self.set_owner_and_xattrs(parent_fd, name, member)
        if not member.issym():
            os.chmod(name, member.mode & 0o7777, dir_fd=parent_fd)
        self.set_times(parent_fd, name, member)

    def write_file(self, tar: TarStream, member: tarfile.TarInfo,
                   parent_fd: int, name: str) -> None:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=parent_fd)
        try:
            tar.copy_to(member, fd)
        finally:
            os.close(fd)

    def hardlink(self, member: tarfile.TarInfo, parts: list[str], parent_fd: int) -> None:
        target_parts = _split_member_path(member.linkname)
        if not target_parts:
            raise UnsafeLayerError(
                f"layer entry {member.name!r} is a hardlink to the layer root itself")
        if target_parts == parts:
            return
        target_fd = self.open_parent(target_parts, member.name, create=False)
        if target_fd is None:
            raise errdefs.InvalidArgument(
                f"layer entry {member.name!r} links to {member.linkname!r}, which is not in "
                "the layer")
        try:
            try:
                st = os.stat(target_parts[-1], dir_fd=target_fd, follow_symlinks=False)
            except FileNotFoundError as exc:
                raise errdefs.InvalidArgument(
                    f"layer entry {member.name!r} links to {member.linkname!r}, which is not "
                    "in the layer") from exc
            if stat.S_ISDIR(st.st_mode):
                raise UnsafeLayerError(
                    f"layer entry {member.name!r} is a hardlink to directory "
                    f"{member.linkname!r}")
            self.remove(parent_fd, parts[-1])
            os.link(target_parts[-1], parts[-1], src_dir_fd=target_fd, dst_dir_fd=parent_fd,
                    follow_symlinks=False)
        finally:
            os.close(target_fd)

    def whiteout(self, parts: list[str], member: tarfile.TarInfo) -> None:
        base = parts[-1]
        if base == OPAQUE_WHITEOUT:
            self.opaque(parts, member)
            return
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return  # aufs metadata (.wh..wh.plnk and friends): meaningless here
        hidden = base[len(WHITEOUT_PREFIX):]
        target = [*parts[:-1], hidden]
        parent_fd = self.open_parent(target, member.name, create=self.overlay)
        if parent_fd is None:
            return  # nothing below to hide
        try:
            if not self.overlay:
                self.remove(parent_fd, hidden)
                return
            self.remove(parent_fd, hidden)
            try:
                os.mknod(hidden, stat.S_IFCHR | 0o600, os.makedev(0, 0), dir_fd=parent_fd)
            except PermissionError as exc:
                raise errdefs.Unavailable(
                    f"cannot create the overlay whiteout for {'/'.join(target)!r}: mknod is "
                    "not permitted; unpack with overlay_whiteouts=False (native snapshotter)"
                ) from exc
            self.chown(parent_fd, hidden, member)
        finally:
            os.close(parent_fd)
        self.mark_written(target)

    def opaque(self, parts: list[str], member: tarfile.TarInfo) -> None:
        dir_parts = parts[:-1]
        parent_fd = self.open_parent(parts, member.name, create=self.overlay)
        if parent_fd is None:
            return
        try:
            if self.overlay:
                os.setxattr(_proc_path(parent_fd), OVERLAY_OPAQUE_XATTR, b"y")
            else:
                self.remove_unwritten(parent_fd, tuple(dir_parts))
        finally:
            os.close(parent_fd)
        self.mark_written(dir_parts)

    def remove_unwritten(self, dir_fd: int, prefix: tuple[str, ...]) -> None:
        for entry in os.listdir(dir_fd):
            path = (*prefix, entry)
            if path not in self.written:
                self.remove(dir_fd, entry)
                continue
            st = os.stat(entry, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                child = os.open(entry, _DIR_FLAGS, dir_fd=dir_fd)
                try:
                    self.remove_unwritten(child, path)
                finally:
                    os.close(child)

    # -- metadata

    def chown(self, parent_fd: int, name: str, member: tarfile.TarInfo) -> None:
        try:
            os.chown(name, member.uid, member.gid, dir_fd=parent_fd, follow_symlinks=False)
        except OSError as exc:
            # Rootless: ids outside our mapping cannot be set; the files stay ours.
            if exc.errno not in (errno.EPERM, errno.EINVAL):
                raise
            if not self.warned_chown:
                log.warning("cannot set layer file owners (%s); keeping the current user", exc)
                self.warned_chown = True

    def set_owner_and_xattrs(self, parent_fd: int, name: str, member: tarfile.TarInfo) -> None:
        self.chown(parent_fd, name, member)
        for key, value in member.pax_headers.items():
            if not key.startswith(XATTR_PAX_PREFIX):
                continue
            attr = key[len(XATTR_PAX_PREFIX):]
            if attr.startswith(OVERLAY_XATTR_PREFIX):
                log.warning("ignoring overlay-internal xattr %s on layer entry %s",
                            attr, member.name)
                continue
            raw = value.encode("utf-8", "surrogateescape")
            try:
                os.setxattr(_proc_path(parent_fd, name), attr, raw, follow_symlinks=False)
            except OSError as exc:
                if attr.startswith("security.") or exc.errno in (errno.ENOTSUP, errno.EPERM):
                    log.warning("cannot set xattr %s on %s (%s); skipped",
                                attr, member.name, exc)
                    continue
                raise

    def set_times(self, parent_fd: int, name: str, member: tarfile.TarInfo) -> None:
        mtime_ns = int(member.mtime * 1_000_000_000)
        atime = member.pax_headers.get("atime")
        atime_ns = int(float(atime) * 1_000_000_000) if atime else mtime_ns
        os.utime(name, ns=(atime_ns, mtime_ns), dir_fd=parent_fd, follow_symlinks=False)

    def finish_directories(self) -> None:
        # Deepest first, so setting a parent's mtime is the last touch it gets.
        for parts, member in sorted(self.dirs.items(), key=lambda item: -len(item[0])):
            parent_fd = self.open_parent(list(parts), member.name, create=False)
            if parent_fd is None:
                continue
            try:
                st = os.stat(parts[-1], dir_fd=parent_fd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    continue  # replaced by a later entry
                os.chmod(parts[-1], member.mode & 0o7777, dir_fd=parent_fd)
                self.set_times(parent_fd, parts[-1], member)
            except FileNotFoundError:
                continue
            finally:
                os.close(parent_fd)


def apply_layer(root_dir: str, stream: BinaryIO, *, compression: str | None = "auto",
                overlay_whiteouts: bool = False,
                max_member_size: int = DEFAULT_MAX_MEMBER_SIZE) -> ApplyResult:
    """Unpack a layer tar from stream into root_dir, returning its diff_id.

    overlay_whiteouts=True writes deletions as overlayfs whiteouts (0/0
    character devices, trusted.overlay.opaque=y) for unpacking into an
    overlay upper dir; False deletes for real (native snapshotter, flat
    extract). Raises UnsafeLayerError for entries that try to leave root_dir,
    DataLoss for a truncated or corrupt stream.
    """
    try:
        root_fd = os.open(root_dir, _DIR_FLAGS)
    except OSError as exc:
        raise errdefs.NotFound(f"layer target directory {root_dir}: {exc.strerror}") from exc
    unpacker = _Unpacker(root_fd, overlay_whiteouts, max_member_size)
    reader: DigestingReader | None = None
    try:
        reader = DigestingReader(decompressing_reader(stream, compression))
        try:
            tar = TarStream(reader)
            for member in tar:
                unpacker.apply(tar, member)
            reader.drain()
        except _CORRUPT as exc:
            raise errdefs.DataLoss(
                f"layer stream for {root_dir} is truncated or corrupt after "
                f"{reader.count} bytes: {exc}") from exc
        unpacker.finish_directories()
    finally:
        if reader is not None:
            reader.close()
        unpacker.drop_fd_cache()
        os.close(root_fd)
    return ApplyResult(diff_id="sha256:" + reader.hash.hexdigest(), size=reader.count)


# --------------------------------------------------------------------- diff


def _list_xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM):
            return {}
        raise
    values = {}
    for name in names:
        if name.startswith(OVERLAY_XATTR_PREFIX) or name == "security.selinux":
            continue
        try:
            values[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError as exc:
            if exc.errno != errno.ENODATA:
                raise
    return values


def _is_overlay_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OVERLAY_OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _sorted_names(path: str) -> list[str]:
    return sorted(os.listdir(path), key=os.fsencode)


class _TarEmitter:
    def __init__(self, tar: tarfile.TarFile, base: str) -> None:
        self.tar = tar
        self.base = base
        self.inodes: dict[tuple[int, int], str] = {}

    def marker(self, rel: str) -> None:
        info = tarfile.TarInfo(rel)
        info.type = tarfile.REGTYPE
        info.mode = 0o644
        self.tar.addfile(info)

    def whiteout(self, rel: str) -> None:
        head, _, base = rel.rpartition("/")
        self.marker(f"{head}/{WHITEOUT_PREFIX}{base}" if head else WHITEOUT_PREFIX + base)

    def entry(self, rel: str, st: os.stat_result | None = None) -> None:
        path = os.path.join(self.base, rel)
        st = st or os.lstat(path)
        info = tarfile.TarInfo(rel)
        info.mode = stat.S_IMODE(st.st_mode)
        info.uid, info.gid = st.st_uid, st.st_gid
        info.uname = info.gname = ""
        info.mtime = int(st.st_mtime)  # whole seconds, as docker writes them
        for attr, value in _list_xattrs(path).items():
            info.pax_headers[XATTR_PAX_PREFIX + attr] = value.decode("utf-8", "surrogateescape")
        key = (st.st_dev, st.st_ino)
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1 and key in self.inodes:
            info.type = tarfile.LNKTYPE
            info.linkname = self.inodes[key]
            self.tar.addfile(info)
            return
        if stat.S_ISREG(st.st_mode):
            if st.st_nlink > 1:
                self.inodes[key] = rel
            info.type = tarfile.REGTYPE
            info.size = st.st_size
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with open(fd, "rb") as source:
                self.tar.addfile(info, source)
            return
        if stat.S_ISDIR(st.st_mode):
            info.type = tarfile.DIRTYPE
        elif stat.S_ISLNK(st.st_mode):
            info.type = tarfile.SYMTYPE
            info.linkname = os.readlink(path)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            info.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
            info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        elif stat.S_ISFIFO(st.st_mode):
            info.type = tarfile.FIFOTYPE
        else:
            log.debug("not exporting socket %s", path)
            return
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            self.inodes[key] = rel
        self.tar.addfile(info)


def _walk_overlay_upper(emitter: _TarEmitter, rel: str) -> None:
    directory = os.path.join(emitter.base, rel)
    for name in _sorted_names(directory):
        child = f"{rel}/{name}" if rel else name
        path = os.path.join(directory, name)
        st = os.lstat(path)
        if _is_overlay_whiteout(st):
            emitter.whiteout(child)
            continue
        emitter.entry(child, st)
        if stat.S_ISDIR(st.st_mode):
            if _is_opaque(path):
                emitter.marker(f"{child}/{OPAQUE_WHITEOUT}")
            _walk_overlay_upper(emitter, child)


def _same_content(left: str, right: str) -> bool:
    with open(left, "rb") as one, open(right, "rb") as two:
        while True:
            a, b = one.read(_CHUNK), two.read(_CHUNK)
            if a != b:
                return False
            if not a:
                return True


def _differs(lower: str, upper: str, lst: os.stat_result, ust: os.stat_result) -> bool:
    if (lst.st_mode, lst.st_uid, lst.st_gid) != (ust.st_mode, ust.st_uid, ust.st_gid):
        return True
    if stat.S_ISDIR(ust.st_mode):
        return lst.st_mtime_ns != ust.st_mtime_ns or _list_xattrs(lower) != _list_xattrs(upper)
    if lst.st_size != ust.st_size or lst.st_rdev != ust.st_rdev:
        return True
    if stat.S_ISLNK(ust.st_mode) and os.readlink(lower) != os.readlink(upper):
        return True
    if _list_xattrs(lower) != _list_xattrs(upper):
        return True
    if lst.st_mtime_ns != ust.st_mtime_ns:
        return True
    # Timestamps truncated to whole seconds (as tar leaves them) cannot tell a
    # same-second rewrite apart, so only then compare the bytes.
    if stat.S_ISREG(ust.st_mode) and ust.st_mtime_ns % 1_000_000_000 == 0:
        return not _same_content(lower, upper)
    return False


def _added_tree(upper: str, rel: str) -> Iterator[Change]:
    for name in _sorted_names(os.path.join(upper, rel)):
        child = f"{rel}/{name}" if rel else name
        yield Change(ChangeKind.ADD, child)
        if os.path.isdir(os.path.join(upper, child)) and not os.path.islink(
                os.path.join(upper, child)):
            yield from _added_tree(upper, child)


def _diff_walk(lower: str, upper: str, rel: str) -> Iterator[Change]:
    lower_dir, upper_dir = os.path.join(lower, rel), os.path.join(upper, rel)
    lower_names = set(os.listdir(lower_dir))
    upper_names = set(os.listdir(upper_dir))
    for name in sorted(lower_names | upper_names, key=os.fsencode):
        child = f"{rel}/{name}" if rel else name
        if name not in upper_names:
            yield Change(ChangeKind.DELETE, child)
            continue
        upper_path = os.path.join(upper_dir, name)
        ust = os.lstat(upper_path)
        if name not in lower_names:
            yield Change(ChangeKind.ADD, child)
            if stat.S_ISDIR(ust.st_mode):
                yield from _added_tree(upper, child)
            continue
        lower_path = os.path.join(lower_dir, name)
        lst = os.lstat(lower_path)
        if _differs(lower_path, upper_path, lst, ust):
            yield Change(ChangeKind.MODIFY, child)
        if stat.S_ISDIR(ust.st_mode):
            if stat.S_ISDIR(lst.st_mode):
                yield from _diff_walk(lower, upper, child)
            else:
                yield from _added_tree(upper, child)


def diff_directories(lower: str, upper: str) -> list[Change]:
    """What changed from the flat tree lower to the flat tree upper.

    Sorted depth-first (a directory before its children). A deleted directory
    is one DELETE; its children are not listed.
    """
    return list(_diff_walk(lower, upper, ""))


def write_diff(lower_dirs: Sequence[str] | None, upper_dir: str, out_stream: BinaryIO, *,
               overlay: bool = True) -> DiffResult:
    """Write the OCI layer tar (uncompressed, PAX) for a snapshot's changes.

    overlay=True: upper_dir is an overlay upper dir; it is the change set, its
    0/0 character devices become .wh.<name> and opaque dirs get .wh..wh..opq;
    lower_dirs is not needed. overlay=False: upper_dir is a flat tree and
    lower_dirs holds at most one flat tree (the parent's) to compare against;
    None or empty exports the whole of upper_dir.
    """
    writer = _DigestingWriter(out_stream)
    with tarfile.open(fileobj=writer, mode="w|",  # type: ignore[call-overload]
                      format=tarfile.PAX_FORMAT) as tar:
        emitter = _TarEmitter(tar, upper_dir)
        if overlay:
            _walk_overlay_upper(emitter, "")
        elif not lower_dirs:
            for change in _added_tree(upper_dir, ""):
                emitter.entry(change.path)
        else:
            if len(lower_dirs) != 1:
                raise errdefs.InvalidArgument(
                    f"a flat diff compares against one parent tree, got {len(lower_dirs)}")
            for change in diff_directories(lower_dirs[0], upper_dir):
                if change.kind is ChangeKind.DELETE:
                    emitter.whiteout(change.path)
                else:
                    emitter.entry(change.path)
    return DiffResult(diff_id="sha256:" + writer.hash.hexdigest(), size=writer.count)
