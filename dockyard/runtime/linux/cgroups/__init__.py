# cgroups for the OCI runtime.
#   resources.py    linux.resources → frozen dataclasses (Resources.from_oci), validation
#   manager.py      CgroupManager protocol and new_manager() (picks v1 or v2)
#   paths.py        cgroupsPath rules, /proc/self/cgroup and mountinfo parsing
#   v1.py, v2.py    the two hierarchies; fs.py shared file I/O; stats.py runc stats shape
#   devices_bpf.py  cgroup v2 device rules as an eBPF program (bpf(2) via ctypes)
# Modules load on first use (here and in new_manager): a host needs only one
# of v1.py and v2.py, and only create and update parse resources; every module
# imported costs each `dockyard-runc` command start-up time.
from .manager import CgroupManager, new_manager

__all__ = ["CgroupManager", "DeviceRule", "Resources", "V1Manager", "V2Manager", "new_manager"]


def __getattr__(name: str):
    if name in ("DeviceRule", "Resources"):
        from . import resources as module
    elif name == "V1Manager":
        from . import v1 as module
    elif name == "V2Manager":
        from . import v2 as module
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(module, name)
