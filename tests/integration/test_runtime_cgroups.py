"""Cgroup limits as the container feels them: a memory limit ends in an OOM
kill, a pids limit stops a fork bomb, the limits read back from inside
through the container's own cgroup view, and stats for `events --stats`.
"""

from __future__ import annotations

import os

import pytest

from tests.integration.runtime_helpers import probe_script, run, sections, sh

pytestmark = [pytest.mark.integration, pytest.mark.requires_root]

MIB = 1024 * 1024


def _v2() -> bool:
    return os.path.exists("/sys/fs/cgroup/cgroup.controllers")


def _has_swap_accounting() -> bool:
    return _v2() or os.path.exists("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes")


def test_memory_limit_oom_kills_the_process(bundle, session_env):
    memory = {"limit": 24 * MIB}
    if _has_swap_accounting():
        memory["swap"] = 24 * MIB  # limit + swap: no swapping either
    bundle.config["linux"]["resources"]["memory"] = memory
    # `tail` keeps a whole "line" of /dev/zero in memory: it grows until killed.
    r = run(bundle, session_env, "tail", "/dev/zero", timeout=60)
    assert r.rc == 137, r
    # A child killed the same way is seen by the shell as SIGKILL.
    r = sh(bundle, session_env, "tail /dev/zero; echo rc=$?", timeout=60)
    assert r.rc == 0, r
    assert r.out.strip().endswith("rc=137")


def test_pids_limit_stops_fork_bomb(bundle, session_env):
    bundle.config["linux"]["resources"]["pids"] = {"limit": 20}
    r = sh(bundle, session_env, "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null "
           "|| cat /sys/fs/cgroup/pids.max; "
           "i=0; while [ $i -lt 40 ]; do sleep 30 & i=$((i+1)); done; echo all-forked")
    # busybox sh gives up (status 2) at the first fork the kernel refuses.
    assert r.rc == 2, r
    assert "can't fork: Resource temporarily unavailable" in r.err, r.err
    assert r.out.split() == ["20"]


def test_limits_visible_from_inside(bundle, session_env):
    bundle.config["linux"]["resources"].update({
        "memory": {"limit": 64 * MIB, "reservation": 32 * MIB},
        "cpu": {"shares": 512, "quota": 50000, "period": 100000},
        "pids": {"limit": 77},
    })
    if _v2():
        probes = {"mem": "cat /sys/fs/cgroup/memory.max", "low": "cat /sys/fs/cgroup/memory.low",
                  "cpu": "cat /sys/fs/cgroup/cpu.max", "pids": "cat /sys/fs/cgroup/pids.max",
                  "weight": "cat /sys/fs/cgroup/cpu.weight", "cg": "cat /proc/self/cgroup"}
        r = sh(bundle, session_env, probe_script(probes))
        assert r.rc == 0, r
        s = sections(r.out)
        assert s["mem"] == str(64 * MIB) and s["low"] == str(32 * MIB)
        assert s["cpu"] == "50000 100000" and s["pids"] == "77"
        assert s["cg"] == "0::/"
        return
    probes = {
        "mem": "cat /sys/fs/cgroup/memory/memory.limit_in_bytes",
        "soft": "cat /sys/fs/cgroup/memory/memory.soft_limit_in_bytes",
        "shares": "cat /sys/fs/cgroup/cpu/cpu.shares",
        "quota": "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us",
        "pids": "cat /sys/fs/cgroup/pids/pids.max",
        "cg": "cat /proc/self/cgroup",
        "procs": "cat /sys/fs/cgroup/pids/cgroup.procs",
    }
    r = sh(bundle, session_env, probe_script(probes))
    assert r.rc == 0, r
    s = sections(r.out)
    assert s["mem"] == str(64 * MIB)
    assert s["soft"] == str(32 * MIB)
    assert s["shares"] == "512"
    assert s["quota"].split() == ["50000", "100000"]
    assert s["pids"] == "77"
    # With a cgroup namespace the container's own cgroup is its root.
    for line in s["cg"].splitlines():
        assert line.endswith(":/"), s["cg"]
    assert "1" in s["procs"].split()
