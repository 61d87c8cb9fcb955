"""cgroup layer without root: OCI parsing, cgroupsPath rules, the eBPF device
filter (run through a small interpreter), and the v1/v2 writers against a
directory tree of plain files standing in for cgroupfs."""

from __future__ import annotations

import os
import struct

import pytest

from dockyard.errdefs import InvalidArgument, Unavailable
from dockyard.runtime.linux.cgroups import (
    DeviceRule,
    Resources,
    V1Manager,
    V2Manager,
    devices_bpf,
    new_manager,
    paths,
)
from dockyard.runtime.linux.cgroups.v2 import blkio_weight_to_io_weight, shares_to_weight

MiB = 1 << 20


# --- Resources.from_oci ------------------------------------------------------------------

FULL = {
    "memory": {"limit": 64 * MiB, "reservation": 32 * MiB, "swap": 128 * MiB,
               "kernel": -1, "swappiness": 10, "disableOOMKiller": True},
    "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0"},
    "pids": {"limit": 42},
    "blockIO": {"weight": 500, "throttleReadBpsDevice": [{"major": 8, "minor": 0,
                                                          "rate": 1048576}]},
    "devices": [{"allow": False, "access": "rwm"},
                {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "wr"},
                {"allow": True, "type": "c", "major": 136, "access": "rwm"}],
    "hugepageLimits": [{"pageSize": "2MB", "limit": 4 * MiB}],
    "network": {"classID": 1048577, "priorities": [{"name": "eth0", "priority": 5}]},
    "unified": {"memory.high": "100000000"},
}


def test_from_oci_reads_every_section():
    res = Resources.from_oci(FULL)
    assert res.memory.limit == 64 * MiB and res.memory.swap == 128 * MiB
    assert res.memory.disable_oom_killer is True and res.memory.swappiness == 10
    assert (res.cpu.shares, res.cpu.quota, res.cpu.period) == (512, 50000, 100000)
    assert res.pids.limit == 42
    assert res.block_io.throttle_read_bps[0].rate == 1048576
    assert res.devices[0] == DeviceRule(allow=False)
    assert res.devices[1] == DeviceRule(True, "c", 1, 3, "rw")  # access normalised
    assert res.devices[2].minor is None
    assert res.hugepage_limits[0].page_size == "2MB"
    assert res.network.priorities[0].name == "eth0"
    assert res.unified == {"memory.high": "100000000"}


def test_from_oci_none_and_empty_mean_no_limits():
    assert Resources.from_oci(None) == Resources()
    assert Resources.from_oci({}) == Resources()


@pytest.mark.parametrize("raw, message", [
    ({"memory": {"limit": "64m"}}, "linux.resources.memory.limit: must be an integer"),
    ({"memory": {"limit": True}}, "linux.resources.memory.limit: must be an integer"),
    ({"memory": {"swappiness": 101}}, "linux.resources.memory.swappiness"),
    ({"memory": {"limit": 100, "swap": 50}}, "linux.resources.memory.swap"),
    ({"cpu": {"quota": 10}}, "linux.resources.cpu.quota"),
    ({"cpu": {"period": 5}}, "linux.resources.cpu.period"),
    ({"cpu": {"cpus": "0-a"}}, "linux.resources.cpu.cpus"),
    ({"cpu": {"shares": -1}}, "linux.resources.cpu.shares"),
    ({"pids": {}}, "linux.resources.pids.limit: is required"),
    ({"blockIO": {"weight": 5}}, "linux.resources.blockIO.weight"),
    ({"blockIO": {"throttleReadBpsDevice": [{"major": 8}]}},
     r"linux.resources.blockIO.throttleReadBpsDevice\[0\].minor"),
    ({"devices": [{"type": "c"}]}, r"linux.resources.devices\[0\].allow"),
    ({"devices": [{"allow": True, "type": "x"}]}, r"linux.resources.devices\[0\].type"),
    ({"devices": [{"allow": True, "access": "rwx"}]}, r"linux.resources.devices\[0\].access"),
    ({"hugepageLimits": [{"pageSize": "2M", "limit": 1}]}, "pageSize"),
    ({"unified": {"pids.max": 10}}, "linux.resources.unified.pids.max"),
    ({"memory": []}, "linux.resources.memory: must be an object"),
    ([], "linux.resources: must be an object"),
])
def test_from_oci_names_the_bad_field(raw, message):
    with pytest.raises(InvalidArgument, match=message):
        Resources.from_oci(raw)


def test_device_rule_v1_lines():
    assert DeviceRule(False).v1_line() == "a"
    assert DeviceRule(True, "c", 1, 3, "rw").v1_line() == "c 1:3 rw"
    assert DeviceRule(True, "b", None, None, "m").v1_line() == "b *:* m"


# --- cgroupsPath ---------------------------------------------------------------------------

def test_cgroups_path_rules():
    assert paths.resolve(None, "abc", "/own") == "/dockyard/abc"
    assert paths.resolve("", "abc", "/own") == "/dockyard/abc"
    assert paths.resolve("/a/b/", "abc", "/own") == "/a/b"
    assert paths.resolve("a/b", "abc", "/own/x") == "/own/x/a/b"
    with pytest.raises(InvalidArgument, match="systemd cgroup driver not supported"):
        paths.resolve("system.slice:docker:abc", "abc", "/")
    with pytest.raises(InvalidArgument, match=r"\.\."):
        paths.resolve("/a/../../etc", "abc", "/")
    with pytest.raises(InvalidArgument, match="container id"):
        paths.resolve(None, "../x", "/")
    with pytest.raises(InvalidArgument, match="use a path"):
        new_manager("machine.slice:dockyard:abc", "abc")


def test_parse_proc_cgroup_and_mountinfo():
    own = paths.parse_proc_cgroup("4:memory:/m\n2:cpu,cpuacct:/c\n1:name=systemd:/s\n0::/u\n")
    assert own == {"memory": "/m", "cpu": "/c", "cpuacct": "/c", "name=systemd": "/s", "": "/u"}
    mountinfo = (
        "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
        "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
        "40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate\n")
    mounts = paths.parse_mountinfo(mountinfo)
    assert [m.controllers for m in mounts] == [("cpu", "cpuacct"), ("name=systemd",), ()]
    assert not paths.host_is_unified(mounts)
    pure = paths.parse_mountinfo("30 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n")
    assert paths.host_is_unified(pure)


# --- eBPF device filter --------------------------------------------------------------------

def interpret(program: bytes, dev_type: str, major: int, minor: int, access: str) -> int:
    """Run the handful of eBPF opcodes devices_bpf emits, as the kernel would."""
    ctx = [{"c": 2, "b": 1}[dev_type] | sum({"m": 1, "r": 2, "w": 4}[a] for a in access) << 16,
           major, minor]
    regs: list = [0] * 11
    regs[1] = "ctx"  # r1 holds the context pointer on entry
    insns = [struct.unpack("<BBhi", program[i:i + 8]) for i in range(0, len(program), 8)]
    pc = 0
    while True:
        op, r, off, imm = insns[pc]
        dst, src = r & 0xF, r >> 4
        pc += 1
        if op == 0x61:
            assert regs[src] == "ctx", "load through a register that is not the context"
            regs[dst] = ctx[off // 4]
        elif op == 0x54:
            regs[dst] &= imm & 0xFFFFFFFF
        elif op == 0x74:
            regs[dst] >>= imm
        elif op == 0xBC:
            regs[dst] = regs[src]
        elif op == 0xB7:
            regs[dst] = imm
        elif op == 0x55:
            pc += off if regs[dst] != imm else 0
        elif op == 0x5D:
            pc += off if regs[dst] != regs[src] else 0
        elif op == 0x95:
            return regs[0]
        else:
            raise AssertionError(f"unexpected opcode {op:#x}")


def reference(rules, dev_type, major, minor, access) -> int:
    """v1 semantics: deny all, then the last matching rule wins."""
    verdict = 0
    for rule in rules:
        if rule.type != "a":
            if rule.type != dev_type or not set(access) <= set(rule.access):
                continue
            if rule.major is not None and rule.major != major:
                continue
            if rule.minor is not None and rule.minor != minor:
                continue
        verdict = int(rule.allow)
    return verdict


RULE_SETS = [
    [],
    [DeviceRule(False)],
    [DeviceRule(True)],
    [DeviceRule(False), DeviceRule(True, "c", 1, 3, "rwm")],
    [DeviceRule(False), DeviceRule(True, "c", 1, None, "rw"), DeviceRule(False, "c", 1, 5)],
    [DeviceRule(True, "c", 136, None, "rwm"), DeviceRule(True, "b", 8, 0, "r"),
     DeviceRule(True), DeviceRule(False, "b", None, None, "rwm")],
]
REQUESTS = [(t, major, minor, acc) for t in "cb" for major, minor in ((1, 3), (1, 5), (8, 0),
                                                                       (136, 2))
            for acc in ("r", "w", "rw", "m", "rwm")]


@pytest.mark.parametrize("rules", RULE_SETS, ids=range(len(RULE_SETS)))
def test_device_filter_matches_v1_semantics(rules):
    program = devices_bpf.assemble(rules)
    assert len(program) % 8 == 0
    for request in REQUESTS:
        assert interpret(program, *request) == reference(rules, *request), request


def test_device_filter_instruction_encoding():
    program = devices_bpf.assemble([DeviceRule(True, "c", 1, 3, "rwm")])
    words = [struct.unpack("<BBhi", program[i:i + 8]) for i in range(0, len(program), 8)]
    assert words[0] == (0x61, 0x12, 0, 0)  # r2 = *(u32 *)(r1 + 0): src r1, dst r2
    # if r2 != CHAR jump over the major and minor tests and the mov/exit pair.
    assert words[6] == (0x55, 0x02, 4, 2)
    assert words[-2:] == [(0xB7, 0x00, 0, 0), (0x95, 0, 0, 0)]  # default: deny
    # A catch-all rule ends the program: nothing after it would be reachable.
    assert devices_bpf.assemble([DeviceRule(False)])[-16:] == (
        devices_bpf.insn(0xB7, 0, imm=0) + devices_bpf.insn(0x95))


# --- plain-file hierarchies ------------------------------------------------------------------

def _touch(directory, **files):
    os.makedirs(directory, exist_ok=True)
    for name, content in files.items():
        with open(os.path.join(directory, name.replace("__", ".")), "w") as f:
            f.write(content)


def _read(directory, name):
    with open(os.path.join(directory, name)) as f:
        return f.read()


V2_FILES = dict(cgroup__procs="", cgroup__subtree_control="", memory__max="max",
                memory__low="0", memory__swap__max="max", cpu__weight="100", cpu__max="max",
                cpuset__cpus="", cpuset__mems="", pids__max="max", io__weight="default 100",
                io__max="", hugetlb__2MB__max="max", memory__high="max")


@pytest.fixture
def v2(tmp_path):
    root = str(tmp_path)
    _touch(root, cgroup__controllers="cpuset cpu io memory hugetlb pids",
           cgroup__subtree_control="")
    _touch(os.path.join(root, "p"), cgroup__controllers="cpuset cpu io memory hugetlb pids",
           cgroup__subtree_control="")
    leaf = os.path.join(root, "p", "c")
    _touch(leaf, cgroup__controllers="cpuset cpu io memory hugetlb pids", **V2_FILES)
    return V2Manager("/p/c", root=root)


def test_v2_writes_limits_in_v2_units(v2):
    v2.set(Resources.from_oci(FULL | {"devices": [], "network": None}))
    assert _read(v2.dir, "memory.max") == str(64 * MiB)
    assert _read(v2.dir, "memory.swap.max") == str(64 * MiB)  # OCI swap is memory+swap
    assert _read(v2.dir, "memory.low") == str(32 * MiB)
    assert _read(v2.dir, "cpu.weight") == str(shares_to_weight(512))
    assert _read(v2.dir, "cpu.max") == "50000 100000"
    assert _read(v2.dir, "cpuset.cpus") == "0-1"
    assert _read(v2.dir, "pids.max") == "42"
    assert _read(v2.dir, "io.weight") == f"default {blkio_weight_to_io_weight(500)}"
    assert _read(v2.dir, "io.max") == "8:0 rbps=1048576"
    assert _read(v2.dir, "hugetlb.2MB.max") == str(4 * MiB)
    assert _read(v2.dir, "memory.high") == "100000000"
    # Every ancestor got the controllers it offers.
    for parent in (v2.root, os.path.join(v2.root, "p")):
        assert _read(parent, "cgroup.subtree_control") == "+cpuset +cpu +io +memory +hugetlb +pids"


def test_v2_unlimited_values(v2):
    v2.set(Resources.from_oci({"memory": {"limit": -1, "swap": -1}, "pids": {"limit": -1},
                               "cpu": {"quota": -1, "period": 100000}}))
    assert _read(v2.dir, "memory.max") == "max"
    assert _read(v2.dir, "memory.swap.max") == "max"
    assert _read(v2.dir, "pids.max") == "max"
    assert _read(v2.dir, "cpu.max") == "max 100000"


def test_v2_rejects_bad_unified_keys_and_swap_without_limit(v2):
    for key in ("../x", "a/b", ".."):
        with pytest.raises(InvalidArgument, match="linux.resources.unified"):
            v2.set(Resources.from_oci({"unified": {key: "1"}}))
    with pytest.raises(InvalidArgument, match="linux.resources.memory.swap"):
        v2.set(Resources.from_oci({"memory": {"swap": 100 * MiB}}))


def test_v2_missing_controller_is_unavailable_naming_it(v2):
    with open(os.path.join(v2.dir, "cgroup.controllers"), "w") as f:
        f.write("cpu")
    with pytest.raises(Unavailable, match=r"controller 'memory'.*hierarchy at"):
        v2.set(Resources.from_oci({"memory": {"limit": MiB}}))
    with pytest.raises(Unavailable, match="net_cls"):
        v2.set(Resources.from_oci({"network": {"classID": 1}}))


def test_v2_stats_from_files(v2):
    _touch(v2.dir, cpu__stat="usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n"
                             "nr_periods 4\nnr_throttled 1\nthrottled_usec 20\n",
           memory__current="4096", memory__peak="8192", memory__max="1048576",
           memory__events="low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n",
           memory__stat="anon 100\nfile 200\n", memory__swap__current="0",
           pids__current="3", pids__max="max", io__stat="8:0 rbytes=10 wbytes=20 rios=1 wios=2\n")
    stats = v2.stats()
    assert stats["cpu"]["usage"] == {"total": 1_500_000, "percpu": [], "kernel": 500_000,
                                     "user": 1_000_000}
    assert stats["cpu"]["throttling"] == {"periods": 4, "throttledPeriods": 1,
                                          "throttledTime": 20_000}
    assert stats["memory"]["usage"] == {"limit": 1048576, "usage": 4096, "max": 8192,
                                        "failcnt": 3}
    assert stats["memory"]["raw"] == {"anon": 100, "file": 200}
    assert stats["pids"] == {"current": 3, "limit": 0}
    assert stats["blkio"]["ioServiceBytesRecursive"] == [
        {"major": 8, "minor": 0, "op": "Read", "value": 10},
        {"major": 8, "minor": 0, "op": "Write", "value": 20}]
    assert v2.oom_kill_count() == 2


def test_shares_to_weight_matches_runc():
    assert [shares_to_weight(s) for s in (2, 1024, 262144)] == [1, 39, 10000]


@pytest.fixture
def v1(tmp_path):
    dirs = {}
    files = {
        "memory": dict(memory__limit_in_bytes="9223372036854771712",
                       memory__memsw__limit_in_bytes="9223372036854771712",
                       memory__soft_limit_in_bytes="", memory__swappiness="60",
                       memory__oom_control="oom_kill_disable 0\nunder_oom 0\noom_kill 4\n"),
        "cpu": dict(cpu__shares="1024", cpu__cfs_quota_us="-1", cpu__cfs_period_us="100000"),
        "pids": dict(pids__max="max"),
        "devices": dict(devices__allow="", devices__deny=""),
        "freezer": dict(freezer__state="THAWED"),
    }
    for controller, content in files.items():
        dirs[controller] = os.path.join(str(tmp_path), controller, "ctr")
        _touch(dirs[controller], cgroup__procs="", **content)
    return V1Manager("/ctr", dirs)


def test_v1_writes_limits(v1):
    v1.set(Resources.from_oci({
        "memory": {"limit": 64 * MiB, "swap": 128 * MiB, "reservation": MiB,
                   "swappiness": 0, "disableOOMKiller": True},
        "cpu": {"shares": 512, "quota": 20000, "period": 50000},
        "pids": {"limit": 0},
        "devices": [{"allow": False, "access": "rwm"},
                    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"}],
    }))
    memory, cpu = v1.dirs["memory"], v1.dirs["cpu"]
    assert _read(memory, "memory.limit_in_bytes") == str(64 * MiB)
    assert _read(memory, "memory.memsw.limit_in_bytes") == str(128 * MiB)
    assert _read(memory, "memory.soft_limit_in_bytes") == str(MiB)
    assert _read(memory, "memory.swappiness") == "0"
    assert _read(memory, "memory.oom_control") == "1"
    assert (_read(cpu, "cpu.shares"), _read(cpu, "cpu.cfs_quota_us"),
            _read(cpu, "cpu.cfs_period_us")) == ("512", "20000", "50000")
    assert _read(v1.dirs["pids"], "pids.max") == "max"
    assert _read(v1.dirs["devices"], "devices.deny") == "a"
    assert _read(v1.dirs["devices"], "devices.allow") == "c 1:3 rwm"


def test_v1_errors_name_controller_and_field(v1):
    with pytest.raises(Unavailable, match="'blkio'.*cgroup v1"):
        v1.set(Resources.from_oci({"blockIO": {"weight": 100}}))
    with pytest.raises(InvalidArgument, match="linux.resources.unified"):
        v1.set(Resources.from_oci({"unified": {"memory.high": "1"}}))
    # Fields that are set but empty need no controller at all.
    v1.set(Resources.from_oci({"blockIO": {}, "memory": {}}))


def test_v1_state_and_oom_count_from_files(v1):
    assert v1.state() == "thawed"
    assert v1.oom_kill_count() == 4
