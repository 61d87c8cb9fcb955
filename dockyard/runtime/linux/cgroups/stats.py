"""The runc `events --stats` shape that both managers fill in.

Keys follow runc's libcontainer/cgroups stats JSON so that tools reading
`dockyard-runc events --stats` (and the engine's /containers/{id}/stats) see
the names they already know. Times are nanoseconds, sizes bytes.
"""

from __future__ import annotations

import os


def _memory_entry() -> dict:
    return {"limit": 0, "usage": 0, "max": 0, "failcnt": 0}


def empty_stats() -> dict:
    return {
        "cpu": {"usage": {"total": 0, "percpu": [], "kernel": 0, "user": 0},
                "throttling": {"periods": 0, "throttledPeriods": 0, "throttledTime": 0}},
        "memory": {"cache": 0, "usage": _memory_entry(), "swap": _memory_entry(),
                   "kernel": _memory_entry(), "kernelTCP": _memory_entry(), "raw": {}},
        "pids": {"current": 0, "limit": 0},
        "blkio": {"ioServiceBytesRecursive": [], "ioServicedRecursive": []},
        "hugetlb": {},
    }


def cpuacct_stat_to_ns(ticks: int) -> int:
    """cpuacct.stat counts USER_HZ ticks; runc reports nanoseconds."""
    return ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
