"""The CgroupManager role and the factory that picks cgroup v1 or v2 for this host.

Lifecycle: new_manager() → set(resources) / apply(pid) (either order; both create
the cgroup) → add(pid) for each exec → freeze/thaw, stats, update via set() →
kill_all(SIGKILL) → remove(). remove() is idempotent.
"""

from __future__ import annotations

from . import paths

# A Protocol for type checkers only: typing costs start-up time on
# `dockyard-runc run`, and nothing checks managers with isinstance.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    from .resources import Resources
else:
    Protocol = object


class CgroupManager(Protocol):
    """One container's cgroup, in whichever hierarchy the host uses.

    path      the cgroupsPath as resolved: absolute within each hierarchy.
    apply     create the cgroup and move pid in.
    set       write limits; also serves `update`. Only fields set in Resources
              are written. Unavailable names a missing controller,
              InvalidArgument the OCI field the kernel refused.
    freeze    stop every task and wait until the kernel reports it frozen.
    stats     runc `events --stats` shaped dict (see stats.empty_stats).
    remove    rmdir everywhere, retrying briefly while tasks exit.
    """

    path: str

    def apply(self, pid: int) -> None: ...
    def set(self, resources: Resources) -> None: ...
    def add(self, pid: int) -> None: ...
    def freeze(self) -> None: ...
    def thaw(self) -> None: ...
    def state(self) -> str: ...
    def pids(self) -> list[int]: ...
    def stats(self) -> dict: ...
    def oom_kill_count(self) -> int: ...
    def kill_all(self, sig: int) -> None: ...
    def remove(self) -> None: ...
    def exists(self) -> bool: ...


def new_manager(cgroups_path: str | None, container_id: str, *,
                rootless: bool = False) -> CgroupManager:
    """The manager for cgroups_path on this host.

    Pure cgroup v2 when /sys/fs/cgroup is cgroup2; otherwise v1 (a hybrid host's
    cgroup2 mount at /sys/fs/cgroup/unified carries no controllers worth using).
    cgroups_path None or "" means "/dockyard/<container_id>".
    """
    paths.check_cgroups_path(cgroups_path)
    # mountinfo is read once here: on a host with many mounts it is the dear part.
    mounts = paths.read_cgroup_mounts()
    if paths.host_is_unified(mounts):
        from .v2 import V2Manager
        return V2Manager.for_host(cgroups_path, container_id, rootless=rootless)
    from .v1 import V1Manager
    return V1Manager.for_host(cgroups_path, container_id, rootless=rootless, mounts=mounts)
