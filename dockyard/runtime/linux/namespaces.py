"""Namespaces: which to create, which to join by path, and the user
namespace ID mappings.

Ordering constraints (why the code is shaped this way):
- a user namespace is joined or created first, so every namespace made
  after it is owned by it (mounting proc needs CAP_SYS_ADMIN over the pid
  namespace's owner);
- a new pid namespace only applies to children, so the init is forked after
  it exists;
- the cgroup namespace is unshared after the process sits in its cgroup, so
  the container sees its own cgroup as the root;
- the mount namespace is joined last: after it, host paths are gone.
"""

from __future__ import annotations

import _socket as socket  # not socket.py: its enums and imports cost ~5 ms
import fcntl
import os
import struct

from dockyard import errdefs
from dockyard.linux import syscalls as sc
from dockyard.runtime.spec import IDMapping, Linux

CLONE_FLAGS = {
    "user": sc.CLONE_NEWUSER,
    "pid": sc.CLONE_NEWPID,
    "network": sc.CLONE_NEWNET,
    "mount": sc.CLONE_NEWNS,
    "ipc": sc.CLONE_NEWIPC,
    "uts": sc.CLONE_NEWUTS,
    "cgroup": sc.CLONE_NEWCGROUP,
    "time": sc.CLONE_NEWTIME,
}

# /proc/<pid>/ns/<name> for each OCI namespace type.
PROC_NAMES = {
    "user": "user", "pid": "pid", "network": "net", "mount": "mnt",
    "ipc": "ipc", "uts": "uts", "cgroup": "cgroup", "time": "time",
}

# Join order for setns: user first, mount last.
JOIN_ORDER = ("user", "ipc", "uts", "network", "pid", "cgroup", "time", "mount")


def open_namespace_paths(linux: Linux, kinds: tuple[str, ...] = JOIN_ORDER) -> list[tuple[str, int]]:
    """Open every namespace given by path, before joining any (paths are host paths)."""
    opened: list[tuple[str, int]] = []
    try:
        for kind in kinds:
            ns = linux.namespace(kind)
            if ns and ns.path:
                try:
                    opened.append((kind, os.open(ns.path, os.O_RDONLY | os.O_CLOEXEC)))
                except OSError as exc:
                    raise errdefs.InvalidArgument(
                        f"cannot open {kind} namespace {ns.path}: {exc.strerror}") from exc
    except BaseException:
        for _, fd in opened:
            os.close(fd)
        raise
    return opened


def join(kind: str, fd: int) -> None:
    try:
        sc.setns(fd, CLONE_FLAGS[kind])
    except OSError as exc:
        raise errdefs.FailedPrecondition(f"failed to join {kind} namespace: {exc.strerror}") from exc


def new_namespace_flags(linux: Linux, exclude: tuple[str, ...] = ()) -> int:
    flags = 0
    for ns in linux.namespaces:
        if not ns.path and ns.type not in exclude:
            flags |= CLONE_FLAGS[ns.type]
    return flags


def unshare(flags: int) -> None:
    if not flags:
        return
    try:
        sc.unshare(flags)
    except OSError as exc:
        names = [k for k, v in CLONE_FLAGS.items() if flags & v]
        raise errdefs.Unavailable(
            f"cannot create {', '.join(names)} namespace(s): {exc.strerror}; "
            "check that the kernel supports them and that you are root") from exc


def write_id_mappings(pid: int, uid_mappings: tuple[IDMapping, ...],
                      gid_mappings: tuple[IDMapping, ...]) -> None:
    """Write /proc/<pid>/{uid,gid}_map for a process that just made a user namespace."""
    def fmt(mappings: tuple[IDMapping, ...]) -> bytes:
        return "".join(f"{m.container_id} {m.host_id} {m.size}\n" for m in mappings).encode()

    for name, mappings in (("uid_map", uid_mappings), ("gid_map", gid_mappings)):
        path = f"/proc/{pid}/{name}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, fmt(mappings))
            finally:
                os.close(fd)
        except OSError as exc:
            raise errdefs.InvalidArgument(
                f"linux.{'uidMappings' if name == 'uid_map' else 'gidMappings'}: "
                f"the kernel refused the mapping: {exc.strerror}") from exc


_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


def bring_up_loopback() -> None:
    """A new network namespace has `lo` down; Docker's containers have it up."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        ifreq = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(s, _SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH14s", b"lo", flags | _IFF_UP, b""))
    finally:
        s.close()
