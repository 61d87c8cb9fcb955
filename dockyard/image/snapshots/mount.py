"""Perform a snapshotter's list of core.Mount onto a directory, and undo it.

Options follow mount(8) and containerd: flag words (ro, rw, bind, rbind,
nosuid, ...) become mount flags, everything else is filesystem data. A bind
mount that must be read-only takes two calls (bind, then remount), as the
kernel ignores MS_RDONLY on the first.

Overlay data longer than the kernel's one-page limit is shortened the way
containerd does it: the mount runs with the process's working directory set
to the directory the paths share, so they become short relative names. The
working directory is process-wide, so these mounts hold a lock and restore
it with fchdir; dockyard code never relies on a relative cwd.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import threading
from collections.abc import Iterator, Sequence

from dockyard import errdefs
from dockyard.image.core import Mount
from dockyard.linux import syscalls

# Page size minus headroom: the kernel copies at most one page of mount data.
MAX_MOUNT_DATA = 4000

_FLAGS: dict[str, tuple[bool, int]] = {
    "ro": (True, syscalls.MS_RDONLY),
    "rw": (False, syscalls.MS_RDONLY),
    "bind": (True, syscalls.MS_BIND),
    "rbind": (True, syscalls.MS_BIND | syscalls.MS_REC),
    "nosuid": (True, syscalls.MS_NOSUID),
    "suid": (False, syscalls.MS_NOSUID),
    "nodev": (True, syscalls.MS_NODEV),
    "dev": (False, syscalls.MS_NODEV),
    "noexec": (True, syscalls.MS_NOEXEC),
    "exec": (False, syscalls.MS_NOEXEC),
    "sync": (True, syscalls.MS_SYNCHRONOUS),
    "async": (False, syscalls.MS_SYNCHRONOUS),
    "dirsync": (True, syscalls.MS_DIRSYNC),
    "noatime": (True, syscalls.MS_NOATIME),
    "atime": (False, syscalls.MS_NOATIME),
    "nodiratime": (True, syscalls.MS_NODIRATIME),
    "diratime": (False, syscalls.MS_NODIRATIME),
    "relatime": (True, syscalls.MS_RELATIME),
    "norelatime": (False, syscalls.MS_RELATIME),
    "strictatime": (True, syscalls.MS_STRICTATIME),
    "remount": (True, syscalls.MS_REMOUNT),
}
_PROPAGATION = {
    "private": syscalls.MS_PRIVATE, "rprivate": syscalls.MS_PRIVATE | syscalls.MS_REC,
    "slave": syscalls.MS_SLAVE, "rslave": syscalls.MS_SLAVE | syscalls.MS_REC,
    "shared": syscalls.MS_SHARED, "rshared": syscalls.MS_SHARED | syscalls.MS_REC,
    "unbindable": syscalls.MS_UNBINDABLE,
    "runbindable": syscalls.MS_UNBINDABLE | syscalls.MS_REC,
}
_OVERLAY_PATH_KEYS = ("lowerdir", "upperdir", "workdir")
_cwd_lock = threading.Lock()


def parse_options(options: Sequence[str]) -> tuple[int, int, list[str]]:
    """Split options into (flags, propagation flags, data words)."""
    flags = propagation = 0
    data: list[str] = []
    for option in options:
        if option in _FLAGS:
            set_it, bit = _FLAGS[option]
            flags = flags | bit if set_it else flags & ~bit
        elif option in _PROPAGATION:
            propagation |= _PROPAGATION[option]
        else:
            data.append(option)
    return flags, propagation, data


def compact_overlay_data(data: list[str]) -> tuple[str, list[str]]:
    """Rewrite overlay path options relative to their common directory.

    Returns (directory to mount from, new data words).
    """
    paths: list[str] = []
    for word in data:
        key, _, value = word.partition("=")
        if key in _OVERLAY_PATH_KEYS:
            paths.extend(value.split(":"))
    common = os.path.commonpath(paths) if paths else "/"
    if not paths or any(not path.startswith("/") for path in paths):
        return "", data
    if len(paths) == 1:
        common = os.path.dirname(common)
    out = []
    for word in data:
        key, _, value = word.partition("=")
        if key in _OVERLAY_PATH_KEYS:
            value = ":".join(os.path.relpath(path, common) for path in value.split(":"))
            word = f"{key}={value}"
        out.append(word)
    return common, out


def _mount_overlay(mount: Mount, target: str, flags: int, data: list[str]) -> None:
    joined = ",".join(data)
    if len(joined.encode()) <= MAX_MOUNT_DATA:
        syscalls.mount(mount.source or "overlay", target, "overlay", flags, joined)
        return
    workdir, short = compact_overlay_data(data)
    joined = ",".join(short)
    if not workdir or len(joined.encode()) > MAX_MOUNT_DATA:
        raise errdefs.InvalidArgument(
            f"overlay mount options for {target} are {len(joined.encode())} bytes even with "
            f"relative paths, over the {MAX_MOUNT_DATA}-byte limit; flatten the image")
    target = os.path.abspath(target)
    with _cwd_lock:
        previous = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.chdir(workdir)
            syscalls.mount(mount.source or "overlay", target, "overlay", flags, joined)
        finally:
            os.fchdir(previous)
            os.close(previous)


def mount_one(mount: Mount, target: str) -> None:
    flags, propagation, data = parse_options(mount.options)
    try:
        if mount.type == "bind" or flags & syscalls.MS_BIND:
            bind_flags = syscalls.MS_BIND | (flags & syscalls.MS_REC)
            syscalls.mount(mount.source, target, None, bind_flags, None)
            extra = flags & ~(syscalls.MS_BIND | syscalls.MS_REC)
            if extra:
                # The first bind ignores everything but MS_BIND|MS_REC.
                syscalls.mount(None, target, None,
                               syscalls.MS_REMOUNT | syscalls.MS_BIND | extra, None)
        elif mount.type == "overlay":
            _mount_overlay(mount, target, flags, data)
        else:
            syscalls.mount(mount.source, target, mount.type, flags, ",".join(data) or None)
        if propagation:
            syscalls.mount(None, target, None, propagation, None)
    except OSError as exc:
        raise errdefs.FailedPrecondition(
            f"failed to mount {mount.type} {mount.source} on {target}: {exc.strerror or exc}"
        ) from exc


def mount_all(mounts: Sequence[Mount], target: str) -> None:
    """Mount each of mounts on target (or its Mount.target below target), in order.

    On failure every mount already made is undone before the error is raised.
    """
    done: list[str] = []
    try:
        for mount in mounts:
            where = os.path.join(target, mount.target.lstrip("/")) if mount.target else target
            mount_one(mount, where)
            done.append(where)
    except BaseException:
        for where in reversed(done):
            with contextlib.suppress(OSError):
                syscalls.umount(where, syscalls.MNT_DETACH)
        raise


def unmount_all(target: str, flags: int = 0) -> int:
    """Unmount everything stacked on target; returns how many mounts went."""
    count = 0
    while count < 1024:
        try:
            syscalls.umount(target, flags | syscalls.UMOUNT_NOFOLLOW)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOENT):
                return count
            raise errdefs.FailedPrecondition(
                f"failed to unmount {target}: {exc.strerror or exc}; is a process using it?"
            ) from exc
        count += 1
    return count


@contextlib.contextmanager
def mounted(mounts: Sequence[Mount], target: str | None = None) -> Iterator[str]:
    """Mount on target (a fresh temp dir when None) for the block, then unmount."""
    made = target is None
    where = tempfile.mkdtemp(prefix="dockyard-mount-") if target is None else target
    try:
        mount_all(mounts, where)
        try:
            yield where
        finally:
            unmount_all(where, syscalls.MNT_DETACH)
    finally:
        if made:
            # rmdir, never rmtree: if the unmount failed, the snapshot is still below.
            with contextlib.suppress(OSError):
                os.rmdir(where)
