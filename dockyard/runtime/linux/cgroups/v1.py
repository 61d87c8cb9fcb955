"""cgroup v1 manager: one directory per mounted hierarchy, one writer per controller.

A container's cgroup is the same path in every hierarchy (cpu, memory, pids, ...);
`dirs` maps each controller to its directory, and comounted controllers
(cpu,cpuacct) share one. Limits are written only for fields the spec sets.
"""

from __future__ import annotations

import os

from dockyard.errdefs import FailedPrecondition, InvalidArgument, Unavailable

from . import fs, paths
from .stats import cpuacct_stat_to_ns, empty_stats

# resources.py is for type checkers only here: delete, kill and state never
# parse limits, and each module imported costs every command start-up time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from .resources import CPU, BlockIO, Memory, Resources

# Hierarchies a container joins, like runc's cgroupfs driver (name=systemd included,
# so tools that look there find the container).
JOINED = ("cpuset", "cpu", "cpuacct", "memory", "devices", "freezer", "blkio", "pids",
          "hugetlb", "net_cls", "net_prio", "perf_event", "rdma", "misc", "name=systemd")

_FREEZE_TIMEOUT = 5.0
_R = "linux.resources"


class V1Manager:
    """CgroupManager for cgroup v1 (and the v1 half of a hybrid host)."""

    def __init__(self, path: str, dirs: dict[str, str], *, rootless: bool = False) -> None:
        self.path = path
        self.dirs = dict(dirs)
        self.rootless = rootless

    @classmethod
    def for_host(cls, cgroups_path: str | None, container_id: str, *,
                 rootless: bool = False,
                 mounts: list[paths.CgroupMount] | None = None) -> V1Manager:
        own = paths.read_self_cgroup()
        dirs: dict[str, str] = {}
        resolved = paths.resolve(cgroups_path, container_id, own.get("memory", "/"))
        for mount in paths.read_cgroup_mounts() if mounts is None else mounts:
            if mount.fs_type != "cgroup":
                continue
            for controller in mount.controllers:
                if controller not in JOINED or controller in dirs:
                    continue
                where = paths.resolve(cgroups_path, container_id, own.get(controller, "/"))
                if mount.root != "/" and (where + "/").startswith(mount.root + "/"):
                    # The hierarchy is mounted from a subtree (inside a container).
                    where = where[len(mount.root):] or "/"
                dirs[controller] = paths.join(mount.mountpoint, where)
        return cls(resolved, dirs, rootless=rootless)

    # --- lifecycle ---------------------------------------------------------------------

    def _unique_dirs(self) -> list[str]:
        return list(dict.fromkeys(self.dirs.values()))

    def _create(self) -> None:
        for controller, directory in self.dirs.items():
            hook = _inherit_cpuset if controller == "cpuset" else None
            try:
                fs.make_dirs(directory, hook)
            except FailedPrecondition:
                if not self.rootless:
                    raise

    def apply(self, pid: int) -> None:
        self._create()
        self.add(pid)

    def add(self, pid: int) -> None:
        for directory in self._unique_dirs():
            try:
                fs.write(directory, "cgroup.procs", pid, field="process")
            except (FailedPrecondition, Unavailable):
                if not (self.rootless and os.geteuid() != 0):
                    raise

    def exists(self) -> bool:
        return any(os.path.isdir(d) for d in self._unique_dirs())

    def remove(self) -> None:
        errors = []
        for directory in self._unique_dirs():
            try:
                fs.remove_tree(directory)
            except FailedPrecondition as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    # --- limits ------------------------------------------------------------------------

    def _dir(self, controller: str) -> str:
        directory = self.dirs.get(controller)
        if directory is None:
            raise Unavailable(
                f"cgroup controller {controller!r} is not mounted in the cgroup v1 hierarchy "
                f"(no cgroup mount with {controller} under /sys/fs/cgroup); mount it or drop "
                "the limit")
        return directory

    def set(self, resources: Resources) -> None:
        if resources.unified:
            raise InvalidArgument(
                f"{_R}.unified: needs cgroup v2, but this host uses cgroup v1")
        self._create()
        if resources.memory is not None:
            _set_memory(self, resources.memory)
        if resources.cpu is not None:
            _set_cpu(self, resources.cpu)
        if resources.pids is not None:
            limit = resources.pids.limit
            fs.write(self._dir("pids"), "pids.max", limit if limit > 0 else "max",
                     field=f"{_R}.pids.limit")
        if resources.block_io is not None:
            _set_blkio(self, resources.block_io)
        for huge in resources.hugepage_limits:
            fs.write(self._dir("hugetlb"), f"hugetlb.{huge.page_size}.limit_in_bytes",
                     huge.limit, field=f"{_R}.hugepageLimits")
        if resources.network is not None:
            if resources.network.class_id is not None:
                fs.write(self._dir("net_cls"), "net_cls.classid", resources.network.class_id,
                         field=f"{_R}.network.classID")
            for prio in resources.network.priorities:
                fs.write(self._dir("net_prio"), "net_prio.ifpriomap",
                         f"{prio.name} {prio.priority}", field=f"{_R}.network.priorities")
        if resources.devices:
            directory = self._dir("devices")
            fs.write(directory, "devices.deny", "a", field=f"{_R}.devices")
            # Deny-all rules right after that reset (Docker's configs start with
            # one) would only write the same "a" again.
            rules = resources.devices
            first = 0
            while first < len(rules) and rules[first].type == "a" and not rules[first].allow:
                first += 1
            for i, rule in enumerate(rules[first:], first):
                fs.write(directory, "devices.allow" if rule.allow else "devices.deny",
                         rule.v1_line(), field=f"{_R}.devices[{i}]")

    # --- freezer -----------------------------------------------------------------------

    def _freezer_state(self) -> str:
        return fs.read_text(self._dir("freezer"), "freezer.state", "THAWED")

    def freeze(self) -> None:
        directory = self._dir("freezer")
        fs.write(directory, "freezer.state", "FROZEN", field="freezer.state")
        try:
            # A task in an uninterruptible sleep keeps the cgroup FREEZING; rewriting
            # FROZEN makes the kernel retry it.
            def frozen() -> bool:
                if self._freezer_state() == "FROZEN":
                    return True
                fs.write(directory, "freezer.state", "FROZEN", field="freezer.state")
                return False

            fs.wait_for(frozen, _FREEZE_TIMEOUT, f"cgroup {directory} to freeze")
        except Unavailable:
            self.thaw()
            raise

    def thaw(self) -> None:
        directory = self._dir("freezer")
        fs.write(directory, "freezer.state", "THAWED", field="freezer.state")
        fs.wait_for(lambda: self._freezer_state() == "THAWED", _FREEZE_TIMEOUT,
                    f"cgroup {directory} to thaw")

    def state(self) -> str:
        if "freezer" not in self.dirs or not os.path.isdir(self.dirs["freezer"]):
            return "thawed"
        return "frozen" if self._freezer_state() == "FROZEN" else "thawed"

    # --- processes ---------------------------------------------------------------------

    def pids(self) -> list[int]:
        for controller in ("pids", "memory", "freezer", "devices", "cpu"):
            if controller in self.dirs:
                return fs.walk_pids(self.dirs[controller])
        dirs = self._unique_dirs()
        return fs.walk_pids(dirs[0]) if dirs else []

    def kill_all(self, sig: int) -> None:
        fs.signal_frozen(self, sig, can_freeze="freezer" in self.dirs
                         and os.path.isdir(self.dirs["freezer"]))

    # --- accounting --------------------------------------------------------------------

    def oom_kill_count(self) -> int:
        directory = self.dirs.get("memory")
        if directory is None:
            return 0
        return fs.read_keyed(directory, "memory.oom_control").get("oom_kill", 0)

    def stats(self) -> dict:
        out = empty_stats()
        cpuacct = self.dirs.get("cpuacct")
        if cpuacct:
            usage = out["cpu"]["usage"]
            usage["total"] = fs.read_int(cpuacct, "cpuacct.usage")
            percpu = fs.read_text(cpuacct, "cpuacct.usage_percpu", "")
            usage["percpu"] = [int(x) for x in percpu.split()]
            ticks = fs.read_keyed(cpuacct, "cpuacct.stat")
            usage["user"] = cpuacct_stat_to_ns(ticks.get("user", 0))
            usage["kernel"] = cpuacct_stat_to_ns(ticks.get("system", 0))
        cpu = self.dirs.get("cpu")
        if cpu:
            stat = fs.read_keyed(cpu, "cpu.stat")
            out["cpu"]["throttling"] = {"periods": stat.get("nr_periods", 0),
                                        "throttledPeriods": stat.get("nr_throttled", 0),
                                        "throttledTime": stat.get("throttled_time", 0)}
        memory = self.dirs.get("memory")
        if memory:
            mem = out["memory"]
            for key, prefix in (("usage", "memory"), ("swap", "memory.memsw"),
                                ("kernel", "memory.kmem"), ("kernelTCP", "memory.kmem.tcp")):
                mem[key] = {"limit": fs.read_int(memory, f"{prefix}.limit_in_bytes"),
                            "usage": fs.read_int(memory, f"{prefix}.usage_in_bytes"),
                            "max": fs.read_int(memory, f"{prefix}.max_usage_in_bytes"),
                            "failcnt": fs.read_int(memory, f"{prefix}.failcnt")}
            mem["raw"] = fs.read_keyed(memory, "memory.stat")
            mem["cache"] = mem["raw"].get("total_cache", mem["raw"].get("cache", 0))
        pids = self.dirs.get("pids")
        if pids:
            limit = fs.read_int(pids, "pids.max")
            out["pids"] = {"current": fs.read_int(pids, "pids.current"),
                           "limit": 0 if limit == fs.UINT64_MAX else limit}
        blkio = self.dirs.get("blkio")
        if blkio:
            out["blkio"] = _blkio_stats(blkio)
        hugetlb = self.dirs.get("hugetlb")
        if hugetlb and os.path.isdir(hugetlb):
            for name in sorted(os.listdir(hugetlb)):
                if name.startswith("hugetlb.") and name.endswith(".usage_in_bytes"):
                    size = name.split(".")[1]
                    out["hugetlb"][size] = {
                        "usage": fs.read_int(hugetlb, name),
                        "max": fs.read_int(hugetlb, f"hugetlb.{size}.max_usage_in_bytes"),
                        "failcnt": fs.read_int(hugetlb, f"hugetlb.{size}.failcnt")}
        return out


def _inherit_cpuset(directory: str) -> None:
    parent = os.path.dirname(directory)
    for name in ("cpuset.cpus", "cpuset.mems"):
        if not fs.read_text(directory, name, ""):
            fs.write(directory, name, fs.read_text(parent, name, ""), field=name)


def _set_memory(manager: V1Manager, memory: Memory) -> None:
    field = f"{_R}.memory"
    needs = (memory.limit, memory.swap, memory.reservation, memory.swappiness,
             memory.kernel_tcp) + ((True,) if memory.disable_oom_killer else ())
    if all(v in (None, 0) for v in needs):
        return
    directory = manager._dir("memory")
    limit = memory.limit or None
    swap = memory.swap or None
    if swap is not None and not os.path.exists(os.path.join(directory,
                                                            "memory.memsw.limit_in_bytes")):
        swap = None  # no swap accounting in this kernel: nothing to limit
    if limit is not None and swap is not None:
        # The kernel insists memsw >= limit at every moment, so a growing pair
        # writes memsw first and a shrinking pair writes the limit first.
        current_memsw = fs.read_int(directory, "memory.memsw.limit_in_bytes")
        if swap == -1 or swap > current_memsw:
            order = [("memory.memsw.limit_in_bytes", swap, "swap"),
                     ("memory.limit_in_bytes", limit, "limit")]
        else:
            order = [("memory.limit_in_bytes", limit, "limit"),
                     ("memory.memsw.limit_in_bytes", swap, "swap")]
        for name, value, key in order:
            fs.write(directory, name, value, field=f"{field}.{key}")
    elif limit is not None:
        fs.write(directory, "memory.limit_in_bytes", limit, field=f"{field}.limit")
    elif swap is not None:
        fs.write(directory, "memory.memsw.limit_in_bytes", swap, field=f"{field}.swap")
    if memory.reservation:
        fs.write(directory, "memory.soft_limit_in_bytes", memory.reservation,
                 field=f"{field}.reservation")
    if memory.kernel_tcp:
        fs.try_write(directory, "memory.kmem.tcp.limit_in_bytes", memory.kernel_tcp,
                     field=f"{field}.kernelTCP")
    if memory.swappiness is not None:
        fs.write(directory, "memory.swappiness", memory.swappiness, field=f"{field}.swappiness")
    if memory.disable_oom_killer:
        fs.write(directory, "memory.oom_control", 1, field=f"{field}.disableOOMKiller")


def _set_cpu(manager: V1Manager, cpu: CPU) -> None:
    field = f"{_R}.cpu"
    if cpu.cpus or cpu.mems:
        directory = manager._dir("cpuset")
        # mems before cpus matters not; both must be subsets of the parent's.
        if cpu.cpus:
            fs.write(directory, "cpuset.cpus", cpu.cpus, field=f"{field}.cpus")
        if cpu.mems:
            fs.write(directory, "cpuset.mems", cpu.mems, field=f"{field}.mems")
    wants_cpu = (cpu.shares, cpu.quota, cpu.period, cpu.burst, cpu.idle,
                 cpu.realtime_period, cpu.realtime_runtime)
    if all(v in (None, 0) for v in wants_cpu):
        return
    directory = manager._dir("cpu")
    if cpu.shares:
        fs.write(directory, "cpu.shares", cpu.shares, field=f"{field}.shares")
    writes = []
    if cpu.period:
        writes.append(("cpu.cfs_period_us", cpu.period, "period"))
    if cpu.quota:
        writes.append(("cpu.cfs_quota_us", cpu.quota, "quota"))
    try:
        for name, value, key in writes:
            fs.write(directory, name, value, field=f"{field}.{key}")
    except InvalidArgument:
        # A new period can be invalid against the old quota and vice versa.
        for name, value, key in reversed(writes):
            fs.write(directory, name, value, field=f"{field}.{key}")
    if cpu.burst is not None:
        fs.write(directory, "cpu.cfs_burst_us", cpu.burst, field=f"{field}.burst")
    if cpu.realtime_period:
        fs.try_write(directory, "cpu.rt_period_us", cpu.realtime_period,
                     field=f"{field}.realtimePeriod")
    if cpu.realtime_runtime:
        fs.try_write(directory, "cpu.rt_runtime_us", cpu.realtime_runtime,
                     field=f"{field}.realtimeRuntime")
    if cpu.idle is not None:
        fs.try_write(directory, "cpu.idle", cpu.idle, field=f"{field}.idle")


def _set_blkio(manager: V1Manager, blkio: BlockIO) -> None:
    field = f"{_R}.blockIO"
    throttles = (("blkio.throttle.read_bps_device", blkio.throttle_read_bps,
                  "throttleReadBpsDevice"),
                 ("blkio.throttle.write_bps_device", blkio.throttle_write_bps,
                  "throttleWriteBpsDevice"),
                 ("blkio.throttle.read_iops_device", blkio.throttle_read_iops,
                  "throttleReadIOPSDevice"),
                 ("blkio.throttle.write_iops_device", blkio.throttle_write_iops,
                  "throttleWriteIOPSDevice"))
    if not (blkio.weight or blkio.leaf_weight or blkio.weight_device
            or any(rules for _n, rules, _k in throttles)):
        return
    directory = manager._dir("blkio")
    # CFQ exposed blkio.weight; with BFQ the same knob is blkio.bfq.weight.
    prefix = "blkio." if os.path.exists(os.path.join(directory, "blkio.weight")) else "blkio.bfq."
    if blkio.weight:
        fs.write(directory, f"{prefix}weight", blkio.weight, field=f"{field}.weight")
    if blkio.leaf_weight:
        fs.write(directory, "blkio.leaf_weight", blkio.leaf_weight, field=f"{field}.leafWeight")
    for i, dev in enumerate(blkio.weight_device):
        if dev.weight:
            fs.write(directory, f"{prefix}weight_device", f"{dev.major}:{dev.minor} {dev.weight}",
                     field=f"{field}.weightDevice[{i}]")
        if dev.leaf_weight:
            fs.write(directory, "blkio.leaf_weight_device",
                     f"{dev.major}:{dev.minor} {dev.leaf_weight}",
                     field=f"{field}.weightDevice[{i}].leafWeight")
    for name, rules, key in throttles:
        for i, dev in enumerate(rules):
            fs.write(directory, name, f"{dev.major}:{dev.minor} {dev.rate}",
                     field=f"{field}.{key}[{i}]")


def _blkio_stats(directory: str) -> dict:
    out: dict[str, list] = {}
    for key, name in (("ioServiceBytesRecursive", "io_service_bytes_recursive"),
                      ("ioServicedRecursive", "io_serviced_recursive")):
        text = fs.read_text(directory, f"blkio.{name}", "")
        if not text:
            text = fs.read_text(directory, f"blkio.throttle.{name}", "")
        entries = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 3 and ":" in parts[0]:
                major, minor = parts[0].split(":")
                entries.append({"major": int(major), "minor": int(minor), "op": parts[1],
                                "value": int(parts[2])})
        out[key] = entries
    return out

