"""The container's root filesystem: mounts in order, devices, pivot_root,
read-only root, masked and read-only paths.

Runs inside the container init, in its new mount namespace, before
pivot_root (`prepare_rootfs`) and after it (`finalize_rootfs`). Mount
destinations are always resolved inside the rootfs (`secure_join`): a
symlink in the image can never make us mount over a host path.
"""

from __future__ import annotations

import errno
import os
import stat

from dockyard import errdefs
from dockyard.linux import syscalls as sc
from dockyard.runtime.spec import Device, MountSpec, Spec

_MAX_SYMLINKS = 255

DEFAULT_DEVICES = (
    Device("/dev/null", "c", 1, 3, 0o666, 0, 0),
    Device("/dev/zero", "c", 1, 5, 0o666, 0, 0),
    Device("/dev/full", "c", 1, 7, 0o666, 0, 0),
    Device("/dev/random", "c", 1, 8, 0o666, 0, 0),
    Device("/dev/urandom", "c", 1, 9, 0o666, 0, 0),
    Device("/dev/tty", "c", 5, 0, 0o666, 0, 0),
)

_DEV_SYMLINKS = (
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
)

# statvfs flag bits whose mount flags the kernel locks in a user namespace;
# a bind remount must carry them over or it fails with EPERM.
_LOCKED_STATVFS = ((os.ST_NOSUID, sc.MS_NOSUID), (os.ST_NODEV, sc.MS_NODEV),
                   (os.ST_NOEXEC, sc.MS_NOEXEC), (os.ST_RDONLY, sc.MS_RDONLY))


class RootfsError(errdefs.FailedPrecondition):
    """A mount or filesystem step of the container init failed."""


def secure_join(root: str, unsafe: str) -> str:
    """Join unsafe onto root, resolving symlinks as if root were "/".

    Every component is resolved inside root; `..` and absolute symlink
    targets cannot climb above it.
    """
    parts = [p for p in unsafe.split("/") if p]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            resolved.append(part)
            continue
        if not stat.S_ISLNK(st.st_mode):
            resolved.append(part)
            continue
        links += 1
        if links > _MAX_SYMLINKS:
            raise RootfsError(f"too many symlinks resolving {unsafe} in {root}")
        target = os.readlink(candidate)
        if target.startswith("/"):
            resolved = []
        parts = [p for p in target.split("/") if p] + parts
    return os.path.join(root, *resolved)


def _locked_flags(path: str) -> int:
    try:
        flags = os.statvfs(path).f_flag
    except OSError:
        return 0
    return sum(ms for st_bit, ms in _LOCKED_STATVFS if flags & st_bit and ms != sc.MS_RDONLY)


def _make_mountpoint(dest: str, source_is_dir: bool) -> None:
    if os.path.lexists(dest):
        return
    if source_is_dir:
        os.makedirs(dest, exist_ok=True)
        return
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    os.close(os.open(dest, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW, 0o755))


def _cgroup_hierarchies() -> list[tuple[str, str, str, str]]:
    """(mount point, fstype, options-for-mount, root) of each host cgroup hierarchy."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            fstype, _source, superopts = right.split()[:3]
            if fstype not in ("cgroup", "cgroup2"):
                continue
            opts = [o for o in superopts.split(",") if o not in ("rw", "ro")]
            out.append((fields[4], fstype, ",".join(opts), fields[3]))
    return out


def _mount_cgroup(rootfs: str, m: MountSpec, dest: str, new_cgroupns: bool) -> None:
    # A new cgroup mount takes MS_RDONLY at once (as runc mounts it); only a
    # bind mount needs a second, remounting call to become read-only.
    flags = m.flags | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC
    hierarchies = _cgroup_hierarchies()
    if any(h[0] == "/sys/fs/cgroup" and h[1] == "cgroup2" for h in hierarchies):
        if new_cgroupns:
            sc.mount("cgroup2", dest, "cgroup2", flags)
            return
        own = _own_cgroup_path("")
        sc.mount("/sys/fs/cgroup" + own, dest, None, sc.MS_BIND | sc.MS_REC)
        if flags & sc.MS_RDONLY:
            sc.mount(None, dest, None, sc.MS_BIND | sc.MS_REMOUNT | flags)
        return
    # cgroup v1 (possibly hybrid): a tmpfs with one directory per hierarchy.
    sc.mount("tmpfs", dest, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, "mode=755")
    for mountpoint, fstype, options, _root in hierarchies:
        if not mountpoint.startswith("/sys/fs/cgroup/"):
            continue
        name = mountpoint[len("/sys/fs/cgroup/"):]
        target = os.path.join(dest, name)
        os.makedirs(target, exist_ok=True)
        if new_cgroupns:
            sc.mount(fstype, target, fstype, flags, None if fstype == "cgroup2" else options)
            continue
        own = _own_cgroup_path(options if fstype == "cgroup" else "")
        sc.mount(mountpoint + own, target, None, sc.MS_BIND | sc.MS_REC)
        if flags & sc.MS_RDONLY:
            sc.mount(None, target, None, sc.MS_BIND | sc.MS_REMOUNT | flags)
    if flags & sc.MS_RDONLY:
        sc.mount(None, dest, None, sc.MS_REMOUNT | flags, "mode=755")


def _own_cgroup_path(options: str) -> str:
    """This process's cgroup path in the hierarchy whose mount options are given."""
    wanted = {o for o in options.split(",") if o and "=" not in o}
    named = {o for o in options.split(",") if o.startswith("name=")}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _id, controllers, path = line.rstrip("\n").split(":", 2)
            ctrls = set(controllers.split(",")) if controllers else set()
            if not options and not controllers:
                return path
            if options and (ctrls & wanted or ctrls & named):
                return path
    return "/"


def mount_entry(rootfs: str, m: MountSpec, *, new_cgroupns: bool) -> None:
    """Mount one config.json mount under rootfs."""
    dest = secure_join(rootfs, m.destination)
    try:
        if m.is_bind:
            source_is_dir = os.path.isdir(m.source)
            if not os.path.exists(m.source):
                raise RootfsError(f"bind mount source {m.source} for {m.destination} does not exist")
            _make_mountpoint(dest, source_is_dir)
            sc.mount(m.source, dest, None, sc.MS_BIND | (m.flags & sc.MS_REC))
            wanted = m.flags & ~(sc.MS_BIND | sc.MS_REC | sc.MS_REMOUNT)
            if wanted:
                sc.mount(None, dest, None,
                         sc.MS_BIND | sc.MS_REMOUNT | wanted | _locked_flags(dest))
        elif m.type == "cgroup":
            _make_mountpoint(dest, True)
            _mount_cgroup(rootfs, m, dest, new_cgroupns)
        else:
            _make_mountpoint(dest, True)
            try:
                sc.mount(m.source or m.type, dest, m.type, m.flags, m.data or None)
            except OSError as exc:
                if m.type != "sysfs" or exc.errno not in (errno.EPERM, errno.EBUSY):
                    raise
                # Without a private network namespace sysfs cannot be mounted
                # in a user namespace: bind the host's, read-only, as runc does.
                sc.mount("/sys", dest, None, sc.MS_BIND | sc.MS_REC)
                sc.mount(None, dest, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY
                         | _locked_flags(dest))
        for prop in m.propagation:
            sc.mount(None, dest, None, prop)
    except OSError as exc:
        raise RootfsError(f"failed to mount {m.source or m.type} on {m.destination} "
                          f"(type {m.type}, options {','.join(m.options)}): {exc.strerror}") from exc


def create_devices(rootfs: str, devices: tuple[Device, ...]) -> None:
    """mknod each device; where mknod is not allowed (user namespace), bind the host's."""
    for dev in DEFAULT_DEVICES + devices:
        dest = secure_join(rootfs, dev.path)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        kind = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}[dev.type]
        if os.path.lexists(dest):
            os.unlink(dest)
        try:
            os.mknod(dest, kind | (dev.file_mode & 0o7777), os.makedev(dev.major, dev.minor))
            os.chown(dest, dev.uid, dev.gid, follow_symlinks=False)
            os.chmod(dest, dev.file_mode & 0o7777)
        except PermissionError:
            if not os.path.exists(dev.path):
                raise RootfsError(f"cannot create device {dev.path}: mknod not permitted and "
                                  "the host has no such device to bind") from None
            _make_mountpoint(dest, False)
            sc.mount(dev.path, dest, None, sc.MS_BIND)


def setup_dev_symlinks(rootfs: str) -> None:
    for target, link in _DEV_SYMLINKS:
        dest = secure_join(rootfs, link)
        if not os.path.lexists(dest):
            os.symlink(target, dest)
    if os.path.exists("/proc/kcore"):
        core = secure_join(rootfs, "/dev/core")
        if not os.path.lexists(core):
            os.symlink("/proc/kcore", core)


def setup_ptmx(rootfs: str) -> None:
    ptmx = secure_join(rootfs, "/dev/ptmx")
    if os.path.lexists(ptmx):
        os.unlink(ptmx)
    os.symlink("pts/ptmx", ptmx)


def _dev_is_bind_from_host(spec: Spec) -> bool:
    return any(m.destination == "/dev" and m.is_bind for m in spec.mounts)


def prepare_rootfs(spec: Spec) -> None:
    """Everything before pivot_root. Must run in the container's mount namespace."""
    rootfs = spec.root.path
    propagation = sc.MS_SLAVE | sc.MS_REC
    if spec.linux.rootfs_propagation:
        from dockyard.runtime.spec import _PROPAGATION
        propagation = _PROPAGATION[spec.linux.rootfs_propagation]
    # Stop our mounts from reaching the host (and the host's from surprising us).
    sc.mount(None, "/", None, propagation)
    # pivot_root needs the new root to be a mount point.
    sc.mount(rootfs, rootfs, None, sc.MS_BIND | sc.MS_REC)
    cgroupns = spec.linux.namespace("cgroup")
    new_cgroupns = bool(cgroupns and not cgroupns.path)
    for m in spec.mounts:
        mount_entry(rootfs, m, new_cgroupns=new_cgroupns)
    if not _dev_is_bind_from_host(spec):
        create_devices(rootfs, spec.linux.devices)
        setup_dev_symlinks(rootfs)
        if any(m.destination == "/dev/pts" for m in spec.mounts):
            setup_ptmx(rootfs)


def pivot_into(rootfs: str, *, no_pivot: bool = False) -> None:
    """Make rootfs the root, detaching the old one (the host) completely."""
    if no_pivot:
        os.chdir(rootfs)
        _move_and_chroot(rootfs)
        return
    old_root = os.open("/", os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    new_root = os.open(rootfs, os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fchdir(new_root)
        try:
            # pivot_root(".", ".") stacks the old root on top of the new one,
            # so no directory for it is needed inside the container.
            sc.pivot_root(".", ".")
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise RootfsError(f"pivot_root into {rootfs}: {exc.strerror}") from exc
            _move_and_chroot(rootfs)
            return
        os.fchdir(old_root)
        # The old root must not propagate its unmount back to the host.
        sc.mount(None, ".", None, sc.MS_SLAVE | sc.MS_REC)
        sc.umount(".", sc.MNT_DETACH)
    finally:
        os.close(old_root)
        os.close(new_root)
    os.chdir("/")


def _move_and_chroot(rootfs: str) -> None:
    # Only where pivot_root is impossible (rootfs on the initramfs) or asked
    # for: the host's mounts stay reachable to whoever can escape a chroot.
    sc.mount(rootfs, "/", None, sc.MS_MOVE)
    os.chroot(".")
    os.chdir("/")


def finalize_rootfs(spec: Spec) -> None:
    """After pivot_root: read-only root."""
    if spec.root.readonly:
        sc.mount(None, "/", None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | _locked_flags("/"))


def mask_paths(paths: tuple[str, ...]) -> None:
    for path in paths:
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                sc.mount("tmpfs", path, "tmpfs", sc.MS_RDONLY, None)
            else:
                sc.mount("/dev/null", path, None, sc.MS_BIND)
        except FileNotFoundError:
            continue
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                continue
            raise RootfsError(f"failed to mask {path}: {exc.strerror}") from exc


def readonly_paths(paths: tuple[str, ...]) -> None:
    for path in paths:
        try:
            sc.mount(path, path, None, sc.MS_BIND | sc.MS_REC)
            sc.mount(None, path, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | sc.MS_REC
                     | _locked_flags(path))
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                continue
            raise RootfsError(f"failed to make {path} read-only: {exc.strerror}") from exc


def write_sysctls(sysctl: dict[str, str]) -> None:
    for key, value in sysctl.items():
        path = "/proc/sys/" + key.replace(".", "/")
        try:
            with open(path, "w") as f:
                f.write(value)
        except OSError as exc:
            raise RootfsError(f"failed to set sysctl {key}={value}: {exc.strerror}") from exc
