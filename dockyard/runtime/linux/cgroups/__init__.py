# cgroups for the OCI runtime.
#   resources.py    linux.resources → frozen dataclasses (Resources.from_oci), validation
#   manager.py      CgroupManager protocol and new_manager() (picks v1 or v2)
#   paths.py        cgroupsPath rules, /proc/self/cgroup and mountinfo parsing
#   v1.py, v2.py    the two hierarchies; fs.py shared file I/O; stats.py runc stats shape
#   devices_bpf.py  cgroup v2 device rules as an eBPF program (bpf(2) via ctypes)
from .manager import CgroupManager, new_manager
from .resources import DeviceRule, Resources
from .v1 import V1Manager
from .v2 import V2Manager

__all__ = ["CgroupManager", "DeviceRule", "Resources", "V1Manager", "V2Manager", "new_manager"]
