"""Where a container's cgroup lives: cgroupsPath rules and the host's cgroup mounts.

cgroupsPath follows runc's cgroupfs driver:
  "/a/b"  relative to the root of each hierarchy (as mounted here);
  "a/b"   relative to the cgroup the runtime itself runs in (/proc/self/cgroup);
  None/"" "/dockyard/<container-id>".
runc's systemd form "slice:prefix:name" is refused: dockyard has no systemd driver.
"""

from __future__ import annotations

import os
import posixpath

from dockyard.errdefs import InvalidArgument
from dockyard.record import record

DEFAULT_PARENT = "/dockyard"
CGROUP_ROOT = "/sys/fs/cgroup"
_NOT_CONTROLLERS = frozenset({"rw", "ro", "xattr", "noprefix", "clone_children",
                              "cpuset_v2_mode", "favordynmods", "nsdelegate",
                              "memory_recursiveprot", "none"})


@record(frozen=True)
class CgroupMount:
    fs_type: str  # "cgroup" (v1) or "cgroup2"
    mountpoint: str
    root: str  # the part of the hierarchy mounted there, "/" unless bind-mounted
    controllers: tuple[str, ...]  # v1 only: "memory", "cpu", "name=systemd", ...


def default_path(container_id: str) -> str:
    return f"{DEFAULT_PARENT}/{container_id}"


def check_cgroups_path(cgroups_path: str | None) -> None:
    if not cgroups_path:
        return
    if cgroups_path.count(":") == 2 and not cgroups_path.startswith("/"):
        raise InvalidArgument(
            f"linux.cgroupsPath: {cgroups_path!r} uses runc's systemd form "
            "'slice:prefix:name'; systemd cgroup driver not supported; use a path")
    if any(part == ".." for part in cgroups_path.split("/")):
        raise InvalidArgument(f"linux.cgroupsPath: {cgroups_path!r} must not contain '..'")
    if "\x00" in cgroups_path:
        raise InvalidArgument("linux.cgroupsPath: must not contain NUL bytes")


def resolve(cgroups_path: str | None, container_id: str, own_cgroup: str) -> str:
    """The absolute path inside one hierarchy; own_cgroup is where this process sits."""
    check_cgroups_path(cgroups_path)
    if not cgroups_path:
        if not container_id or "/" in container_id or container_id in (".", ".."):
            raise InvalidArgument(
                f"container id {container_id!r} cannot name a cgroup; pass a cgroupsPath")
        return default_path(container_id)
    if cgroups_path.startswith("/"):
        return posixpath.normpath(cgroups_path)
    return posixpath.normpath(posixpath.join(own_cgroup or "/", cgroups_path))


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """/proc/<pid>/cgroup as {controller: path}; the v2 entry has the key ""."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _hier, controllers, path = parts
        if not controllers:
            out[""] = path
            continue
        for name in controllers.split(","):
            out[name] = path
    return out


def parse_mountinfo(text: str) -> list[CgroupMount]:
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        try:
            sep = fields.index("-")
        except ValueError:
            continue
        fs_type = fields[sep + 1]
        if fs_type not in ("cgroup", "cgroup2"):
            continue
        root = _unescape(fields[3])
        mountpoint = _unescape(fields[4])
        controllers: tuple[str, ...] = ()
        if fs_type == "cgroup":
            options = fields[sep + 3].split(",")
            controllers = tuple(o for o in options if o not in _NOT_CONTROLLERS
                                and ("=" not in o or o.startswith("name=")))
        mounts.append(CgroupMount(fs_type, mountpoint, root, controllers))
    return mounts


def _unescape(value: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        value = value.replace(code, char)
    return value


def read_self_cgroup() -> dict[str, str]:
    with open("/proc/self/cgroup") as f:
        return parse_proc_cgroup(f.read())


def read_cgroup_mounts() -> list[CgroupMount]:
    with open("/proc/self/mountinfo") as f:
        return parse_mountinfo(f.read())


def host_is_unified(mounts: list[CgroupMount] | None = None) -> bool:
    """True for a pure cgroup v2 host, where /sys/fs/cgroup itself is cgroup2."""
    mounts = read_cgroup_mounts() if mounts is None else mounts
    return any(m.fs_type == "cgroup2" and m.mountpoint == CGROUP_ROOT for m in mounts)


def join(mountpoint: str, cgroup_path: str) -> str:
    return os.path.join(mountpoint, cgroup_path.lstrip("/")).rstrip("/") or "/"
