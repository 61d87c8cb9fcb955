"""cgroup v2 manager: one directory in the unified hierarchy.

A controller works in a cgroup only when every ancestor lists it in
cgroup.subtree_control, so creating the cgroup enables, level by level, every
controller the root offers. Device rules are an eBPF program (devices_bpf).
"""

from __future__ import annotations

import _signal as signal  # not signal.py: its enums (and `enum`) cost ~4 ms
import os

from dockyard.errdefs import FailedPrecondition, InvalidArgument, Unavailable

from . import fs, paths
from .stats import empty_stats

# resources.py is for type checkers only here: delete, kill and state never
# parse limits, and each module imported costs every command start-up time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from .resources import CPU, BlockIO, Memory, Resources

_FREEZE_TIMEOUT = 5.0
_R = "linux.resources"


def shares_to_weight(shares: int) -> int:
    """cpu.shares (2-262144) → cpu.weight (1-10000), the mapping runc and crun use."""
    if shares == 0:
        return 0
    return 1 + ((shares - 2) * 9999) // 262142


def blkio_weight_to_io_weight(weight: int) -> int:
    """blkio.weight (10-1000) → io.weight (1-10000), as runc converts it."""
    if weight == 0:
        return 0
    return 1 + (weight - 10) * 9999 // 990


class V2Manager:
    """CgroupManager for the unified hierarchy mounted at `root`."""

    def __init__(self, path: str, *, root: str = paths.CGROUP_ROOT,
                 rootless: bool = False) -> None:
        self.path = path
        self.root = root
        self.dir = paths.join(root, path)
        self.rootless = rootless

    @classmethod
    def for_host(cls, cgroups_path: str | None, container_id: str, *,
                 root: str = paths.CGROUP_ROOT, rootless: bool = False) -> V2Manager:
        own = paths.read_self_cgroup().get("", "/")
        return cls(paths.resolve(cgroups_path, container_id, own), root=root, rootless=rootless)

    # --- lifecycle ---------------------------------------------------------------------

    def _create(self) -> None:
        fs.make_dirs(self.dir)
        self._enable_controllers()

    def _enable_controllers(self) -> None:
        """Turn on in each ancestor's subtree_control what that ancestor itself has."""
        relative = os.path.relpath(self.dir, self.root)
        parts = [] if relative == "." else relative.split(os.sep)
        current = self.root
        for part in parts:
            available = fs.read_text(current, "cgroup.controllers", "").split()
            enabled = fs.read_text(current, "cgroup.subtree_control", "").split()
            wanted = [c for c in available if c not in enabled]
            if wanted:
                try:
                    fs.write(current, "cgroup.subtree_control",
                             " ".join(f"+{c}" for c in wanted), field="cgroup.subtree_control")
                except (InvalidArgument, FailedPrecondition, Unavailable):
                    # One refused controller (busy, threaded, no permission) must not
                    # cost the others; set() reports the ones a limit really needs.
                    for controller in wanted:
                        try:
                            fs.write(current, "cgroup.subtree_control", f"+{controller}",
                                     field="cgroup.subtree_control")
                        except (InvalidArgument, FailedPrecondition, Unavailable):
                            continue
            current = os.path.join(current, part)

    def apply(self, pid: int) -> None:
        try:
            self._create()
        except FailedPrecondition:
            if not self.rootless:
                raise
            return
        self.add(pid)

    def add(self, pid: int) -> None:
        try:
            fs.write(self.dir, "cgroup.procs", pid, field="process")
        except (FailedPrecondition, Unavailable):
            if not (self.rootless and os.geteuid() != 0):
                raise

    def exists(self) -> bool:
        return os.path.isdir(self.dir)

    def remove(self) -> None:
        # Attached device programs go away with the directory.
        fs.remove_tree(self.dir)

    # --- limits ------------------------------------------------------------------------

    def _need(self, controller: str, field: str) -> str:
        controllers = fs.read_text(self.dir, "cgroup.controllers", "").split()
        if controller not in controllers:
            raise Unavailable(
                f"{field}: cgroup v2 controller {controller!r} is not available for "
                f"{self.dir} in the hierarchy at {self.root} (enabled here: "
                f"{' '.join(controllers) or 'none'}); enable it in the parents' "
                "cgroup.subtree_control or drop the limit")
        return self.dir

    def set(self, resources: Resources) -> None:
        for key in resources.unified:
            if "/" in key or ".." in key or not key:
                raise InvalidArgument(
                    f"{_R}.unified: key {key!r} must be a file name in the cgroup directory")
        self._create()
        if resources.memory is not None:
            self._set_memory(resources.memory)
        if resources.cpu is not None:
            self._set_cpu(resources.cpu)
        if resources.pids is not None:
            limit = resources.pids.limit
            fs.write(self._need("pids", f"{_R}.pids"), "pids.max",
                     limit if limit > 0 else "max", field=f"{_R}.pids.limit")
        if resources.block_io is not None:
            self._set_io(resources.block_io)
        for huge in resources.hugepage_limits:
            fs.write(self._need("hugetlb", f"{_R}.hugepageLimits"),
                     f"hugetlb.{huge.page_size}.max", huge.limit, field=f"{_R}.hugepageLimits")
        network = resources.network
        if network is not None and (network.class_id is not None or network.priorities):
            raise Unavailable(
                f"{_R}.network: net_cls/net_prio exist only on cgroup v1; this host uses "
                "cgroup v2 (use nftables/tc on the container's interfaces instead)")
        for key, value in resources.unified.items():
            fs.write(self.dir, key, value, field=f"{_R}.unified.{key}")
        if resources.devices:
            # Here only: its ctypes bindings cost start-up to every command.
            from . import devices_bpf

            devices_bpf.apply_rules(self.dir, resources.devices)

    def _set_memory(self, memory: Memory) -> None:
        field = f"{_R}.memory"
        limit, swap = memory.limit or None, memory.swap or None
        if limit is None and swap is None and not memory.reservation:
            return  # swappiness, kernel, kernelTCP, disableOOMKiller have no v2 file
        directory = self._need("memory", field)
        if limit is not None:
            fs.write(directory, "memory.max", "max" if limit == -1 else limit,
                     field=f"{field}.limit")
        if swap is not None:
            if swap == -1:
                swap_max: str | int = "max"
            elif limit is None or limit == -1:
                raise InvalidArgument(
                    f"{field}.swap: {swap} needs a finite memory.limit on cgroup v2 "
                    "(OCI swap is memory plus swap; v2 limits swap alone)")
            else:
                swap_max = swap - limit
            if not os.path.exists(os.path.join(directory, "memory.swap.max")):
                if swap_max not in ("max", 0):
                    raise Unavailable(
                        f"{field}.swap: {directory}/memory.swap.max does not exist; the "
                        "kernel has no swap accounting (boot with swapaccount=1)")
            else:
                fs.write(directory, "memory.swap.max", swap_max, field=f"{field}.swap")
        if memory.reservation:
            fs.write(directory, "memory.low", memory.reservation, field=f"{field}.reservation")

    def _set_cpu(self, cpu: CPU) -> None:
        field = f"{_R}.cpu"
        if cpu.cpus or cpu.mems:
            directory = self._need("cpuset", field)
            if cpu.cpus:
                fs.write(directory, "cpuset.cpus", cpu.cpus, field=f"{field}.cpus")
            if cpu.mems:
                fs.write(directory, "cpuset.mems", cpu.mems, field=f"{field}.mems")
        if not (cpu.shares or cpu.quota or cpu.period or cpu.burst is not None):
            if cpu.idle is not None:
                fs.write(self.dir, "cpu.idle", cpu.idle, field=f"{field}.idle")
            return
        directory = self._need("cpu", field)
        if cpu.shares:
            fs.write(directory, "cpu.weight", shares_to_weight(cpu.shares),
                     field=f"{field}.shares")
        if cpu.quota or cpu.period:
            value = str(cpu.quota) if cpu.quota and cpu.quota > 0 else "max"
            if cpu.period:
                value += f" {cpu.period}"
            fs.write(directory, "cpu.max", value, field=f"{field}.quota")
        if cpu.burst is not None:
            fs.write(directory, "cpu.max.burst", cpu.burst, field=f"{field}.burst")
        if cpu.idle is not None:
            fs.write(directory, "cpu.idle", cpu.idle, field=f"{field}.idle")

    def _set_io(self, blkio: BlockIO) -> None:
        field = f"{_R}.blockIO"
        throttles = (("rbps", blkio.throttle_read_bps, "throttleReadBpsDevice"),
                     ("wbps", blkio.throttle_write_bps, "throttleWriteBpsDevice"),
                     ("riops", blkio.throttle_read_iops, "throttleReadIOPSDevice"),
                     ("wiops", blkio.throttle_write_iops, "throttleWriteIOPSDevice"))
        if not (blkio.weight or blkio.weight_device or any(r for _k, r, _f in throttles)):
            return
        directory = self._need("io", field)
        # BFQ takes the blkio scale unchanged; io.weight needs converting.
        bfq = os.path.exists(os.path.join(directory, "io.bfq.weight"))
        if blkio.weight:
            if bfq:
                fs.write(directory, "io.bfq.weight", blkio.weight, field=f"{field}.weight")
            else:
                fs.write(directory, "io.weight",
                         f"default {blkio_weight_to_io_weight(blkio.weight)}",
                         field=f"{field}.weight")
        for i, dev in enumerate(blkio.weight_device):
            if dev.weight:
                weight = dev.weight if bfq else blkio_weight_to_io_weight(dev.weight)
                fs.write(directory, "io.bfq.weight" if bfq else "io.weight",
                         f"{dev.major}:{dev.minor} {weight}", field=f"{field}.weightDevice[{i}]")
        for key, rules, name in throttles:
            for i, dev in enumerate(rules):
                rate = dev.rate if dev.rate else "max"
                fs.write(directory, "io.max", f"{dev.major}:{dev.minor} {key}={rate}",
                         field=f"{field}.{name}[{i}]")

    # --- freezer -----------------------------------------------------------------------

    def _events(self) -> dict[str, int]:
        return fs.read_keyed(self.dir, "cgroup.events")

    def freeze(self) -> None:
        fs.write(self.dir, "cgroup.freeze", 1, field="cgroup.freeze")
        try:
            fs.wait_for(lambda: self._events().get("frozen") == 1, _FREEZE_TIMEOUT,
                        f"cgroup {self.dir} to freeze")
        except Unavailable:
            self.thaw()
            raise

    def thaw(self) -> None:
        fs.write(self.dir, "cgroup.freeze", 0, field="cgroup.freeze")
        fs.wait_for(lambda: self._events().get("frozen", 0) == 0, _FREEZE_TIMEOUT,
                    f"cgroup {self.dir} to thaw")

    def state(self) -> str:
        if not self.exists():
            return "thawed"
        return "frozen" if self._events().get("frozen") == 1 else "thawed"

    # --- processes ---------------------------------------------------------------------

    def pids(self) -> list[int]:
        return fs.walk_pids(self.dir)

    def kill_all(self, sig: int) -> None:
        if not self.exists():
            return
        if sig == signal.SIGKILL and os.path.exists(os.path.join(self.dir, "cgroup.kill")):
            fs.write(self.dir, "cgroup.kill", 1, field="cgroup.kill")
            return
        fs.signal_frozen(self, sig)

    # --- accounting --------------------------------------------------------------------

    def oom_kill_count(self) -> int:
        return fs.read_keyed(self.dir, "memory.events").get("oom_kill", 0)

    def stats(self) -> dict:
        out = empty_stats()
        d = self.dir
        cpu = fs.read_keyed(d, "cpu.stat")
        out["cpu"]["usage"].update(total=cpu.get("usage_usec", 0) * 1000,
                                   user=cpu.get("user_usec", 0) * 1000,
                                   kernel=cpu.get("system_usec", 0) * 1000)
        out["cpu"]["throttling"] = {"periods": cpu.get("nr_periods", 0),
                                    "throttledPeriods": cpu.get("nr_throttled", 0),
                                    "throttledTime": cpu.get("throttled_usec", 0) * 1000}
        if os.path.exists(os.path.join(d, "memory.current")):
            mem = out["memory"]
            usage = fs.read_int(d, "memory.current")
            limit = fs.read_int(d, "memory.max", fs.UINT64_MAX)
            mem["usage"] = {"limit": limit, "usage": usage,
                            "max": fs.read_int(d, "memory.peak"),
                            "failcnt": fs.read_keyed(d, "memory.events").get("max", 0)}
            # OCI (and runc's stats) count swap as memory plus swap.
            swap_limit = fs.read_int(d, "memory.swap.max", fs.UINT64_MAX)
            mem["swap"] = {
                "limit": fs.UINT64_MAX if fs.UINT64_MAX in (limit, swap_limit)
                else limit + swap_limit,
                "usage": usage + fs.read_int(d, "memory.swap.current"),
                "max": 0, "failcnt": fs.read_keyed(d, "memory.swap.events").get("fail", 0)}
            mem["raw"] = fs.read_keyed(d, "memory.stat")
            mem["cache"] = mem["raw"].get("file", 0)
        if os.path.exists(os.path.join(d, "pids.current")):
            limit = fs.read_int(d, "pids.max")
            out["pids"] = {"current": fs.read_int(d, "pids.current"),
                           "limit": 0 if limit == fs.UINT64_MAX else limit}
        out["blkio"] = _io_stats(fs.read_text(d, "io.stat", ""))
        if os.path.isdir(d):
            for name in sorted(os.listdir(d)):
                if name.startswith("hugetlb.") and name.endswith(".current"):
                    size = name.split(".")[1]
                    out["hugetlb"][size] = {
                        "usage": fs.read_int(d, name),
                        "max": fs.read_int(d, f"hugetlb.{size}.max"),
                        "failcnt": fs.read_keyed(d, f"hugetlb.{size}.events").get("max", 0)}
        return out


def _io_stats(text: str) -> dict:
    """io.stat lines ("8:0 rbytes=1 wbytes=2 rios=3 wios=4 ...") in runc's blkio shape."""
    service_bytes, serviced = [], []
    for line in text.splitlines():
        device, *pairs = line.split()
        if ":" not in device:
            continue
        major, minor = (int(x) for x in device.split(":"))
        values = dict(pair.split("=", 1) for pair in pairs if "=" in pair)
        for key, op, target in (("rbytes", "Read", service_bytes),
                                ("wbytes", "Write", service_bytes),
                                ("rios", "Read", serviced), ("wios", "Write", serviced)):
            if key in values:
                target.append({"major": major, "minor": minor, "op": op,
                               "value": int(values[key])})
    return {"ioServiceBytesRecursive": service_bytes, "ioServicedRecursive": serviced}
