"""OCI `linux.resources` as frozen dataclasses, validated before any cgroup file is touched.

`Resources.from_oci` is the only way in from a config.json; every problem is an
InvalidArgument naming the OCI field (for example
"linux.resources.memory.limit: must be an integer"), so the user can fix the
bundle without reading a traceback. Absent fields stay None and are not written.
"""

from __future__ import annotations

from dockyard.errdefs import InvalidArgument
from dockyard.record import field, record

# typing costs ~4 ms of start-up on `dockyard-runc run`; annotations only need it
# for type checkers.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_UINT64_MAX = (1 << 64) - 1
_PAGE_SIZE_RE = r"^[1-9][0-9]*[KMG]B$"
_CPU_LIST_RE = r"^\s*$|^\d+(-\d+)?(,\d+(-\d+)?)*$"


@record(frozen=True)
class DeviceRule:
    """One device cgroup rule; major/minor None mean "any" (written as '*')."""

    allow: bool
    type: str = "a"  # "a" (all), "c" (char) or "b" (block)
    major: int | None = None
    minor: int | None = None
    access: str = "rwm"

    def v1_line(self) -> str:
        """The rule in devices.allow / devices.deny syntax, e.g. "c 1:3 rwm"."""
        if self.type == "a":
            return "a"
        major = "*" if self.major is None else str(self.major)
        minor = "*" if self.minor is None else str(self.minor)
        return f"{self.type} {major}:{minor} {self.access}"


@record(frozen=True)
class Memory:
    limit: int | None = None
    reservation: int | None = None
    swap: int | None = None  # OCI meaning: memory + swap
    kernel: int | None = None  # deprecated by the kernel; parsed, never written
    kernel_tcp: int | None = None
    swappiness: int | None = None
    disable_oom_killer: bool | None = None


@record(frozen=True)
class CPU:
    shares: int | None = None
    quota: int | None = None
    burst: int | None = None
    period: int | None = None
    realtime_runtime: int | None = None
    realtime_period: int | None = None
    cpus: str | None = None
    mems: str | None = None
    idle: int | None = None


@record(frozen=True)
class Pids:
    limit: int  # <= 0 means unlimited, as in runc


@record(frozen=True)
class WeightDevice:
    major: int
    minor: int
    weight: int | None = None
    leaf_weight: int | None = None


@record(frozen=True)
class ThrottleDevice:
    major: int
    minor: int
    rate: int


@record(frozen=True)
class BlockIO:
    weight: int | None = None
    leaf_weight: int | None = None
    weight_device: tuple[WeightDevice, ...] = ()
    throttle_read_bps: tuple[ThrottleDevice, ...] = ()
    throttle_write_bps: tuple[ThrottleDevice, ...] = ()
    throttle_read_iops: tuple[ThrottleDevice, ...] = ()
    throttle_write_iops: tuple[ThrottleDevice, ...] = ()


@record(frozen=True)
class HugepageLimit:
    page_size: str  # "2MB", "1GB": the spelling the kernel uses in file names
    limit: int


@record(frozen=True)
class InterfacePriority:
    name: str
    priority: int


@record(frozen=True)
class Network:
    class_id: int | None = None
    priorities: tuple[InterfacePriority, ...] = ()


@record(frozen=True)
class Resources:
    """Everything `linux.resources` can ask of a cgroup.

    `devices` empty means "leave the device controller alone"; a non-empty list
    is applied as deny-all followed by the rules in order (later rules win).
    """

    memory: Memory | None = None
    cpu: CPU | None = None
    pids: Pids | None = None
    block_io: BlockIO | None = None
    devices: tuple[DeviceRule, ...] = ()
    hugepage_limits: tuple[HugepageLimit, ...] = ()
    network: Network | None = None
    unified: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_oci(cls, raw: dict | None) -> Resources:
        if raw is None:
            return cls()
        base = "linux.resources"
        _need_object(raw, base)
        unified = _opt_object(raw, "unified", base) or {}
        for key, value in unified.items():
            if not isinstance(value, str):
                raise InvalidArgument(f"{base}.unified.{key}: must be a string")
        return cls(
            memory=_memory(_opt_object(raw, "memory", base), f"{base}.memory"),
            cpu=_cpu(_opt_object(raw, "cpu", base), f"{base}.cpu"),
            pids=_pids(_opt_object(raw, "pids", base), f"{base}.pids"),
            block_io=_block_io(_opt_object(raw, "blockIO", base), f"{base}.blockIO"),
            devices=tuple(_device(d, f"{base}.devices[{i}]")
                          for i, d in enumerate(_opt_list(raw, "devices", base))),
            hugepage_limits=tuple(_hugepage(h, f"{base}.hugepageLimits[{i}]")
                                  for i, h in enumerate(_opt_list(raw, "hugepageLimits", base))),
            network=_network(_opt_object(raw, "network", base), f"{base}.network"),
            unified=dict(unified),
        )


# --- small field readers; each names the full OCI path in its error ---------------------

def _need_object(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where}: must be an object")
    return value


def _opt_object(raw: dict, key: str, where: str) -> dict | None:
    value = raw.get(key)
    return None if value is None else _need_object(value, f"{where}.{key}")


def _opt_list(raw: dict, key: str, where: str) -> list:
    value = raw.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidArgument(f"{where}.{key}: must be an array")
    return value


def _int(raw: dict, key: str, where: str, *, low: int = _INT64_MIN, high: int = _INT64_MAX,
         required: bool = False) -> int | None:
    value = raw.get(key)
    if value is None:
        if required:
            raise InvalidArgument(f"{where}.{key}: is required")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{where}.{key}: must be an integer")
    if not low <= value <= high:
        raise InvalidArgument(f"{where}.{key}: {value} is out of range [{low}, {high}]")
    return value


def _uint(raw: dict, key: str, where: str, *, high: int = _UINT64_MAX,
          required: bool = False) -> int | None:
    return _int(raw, key, where, low=0, high=high, required=required)


def _bool(raw: dict, key: str, where: str) -> bool | None:
    value = raw.get(key)
    if value is not None and not isinstance(value, bool):
        raise InvalidArgument(f"{where}.{key}: must be a boolean")
    return value


def _str(raw: dict, key: str, where: str) -> str | None:
    value = raw.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidArgument(f"{where}.{key}: must be a string")
    return value


def _memory(raw: dict | None, where: str) -> Memory | None:
    if raw is None:
        return None
    mem = Memory(
        limit=_int(raw, "limit", where),
        reservation=_int(raw, "reservation", where),
        swap=_int(raw, "swap", where),
        kernel=_int(raw, "kernel", where),
        kernel_tcp=_int(raw, "kernelTCP", where),
        swappiness=_uint(raw, "swappiness", where),
        disable_oom_killer=_bool(raw, "disableOOMKiller", where),
    )
    if mem.swappiness is not None and mem.swappiness > 100:
        raise InvalidArgument(f"{where}.swappiness: {mem.swappiness} is not within 0-100")
    if (mem.limit is not None and mem.swap is not None and mem.limit > 0 and mem.swap > 0
            and mem.swap < mem.limit):
        raise InvalidArgument(
            f"{where}.swap: {mem.swap} is below memory.limit {mem.limit}; OCI swap counts "
            "memory plus swap, so it must be >= limit (or -1 for unlimited)")
    return mem


def _matches(pattern: str, value: str) -> bool:
    # `re` only when a config has such a field: `run` does not otherwise import it (~7 ms).
    import re
    return re.match(pattern, value) is not None


def _cpuset_list(raw: dict, key: str, where: str) -> str | None:
    value = _str(raw, key, where)
    if value is not None and not _matches(_CPU_LIST_RE, value):
        raise InvalidArgument(f"{where}.{key}: {value!r} is not a list like '0-2,4'")
    return value


def _cpu(raw: dict | None, where: str) -> CPU | None:
    if raw is None:
        return None
    cpu = CPU(
        shares=_uint(raw, "shares", where),
        quota=_int(raw, "quota", where),
        burst=_uint(raw, "burst", where),
        period=_uint(raw, "period", where),
        realtime_runtime=_int(raw, "realtimeRuntime", where),
        realtime_period=_uint(raw, "realtimePeriod", where),
        cpus=_cpuset_list(raw, "cpus", where),
        mems=_cpuset_list(raw, "mems", where),
        idle=_int(raw, "idle", where),
    )
    # 0 means "not set" for quota, period and shares, as in runc.
    if cpu.period and not 1000 <= cpu.period <= 1_000_000:
        raise InvalidArgument(f"{where}.period: {cpu.period} is not within 1000-1000000 (µs)")
    if cpu.quota is not None and 0 < cpu.quota < 1000:
        raise InvalidArgument(f"{where}.quota: {cpu.quota} must be >= 1000 µs, or -1 for none")
    return cpu


def _pids(raw: dict | None, where: str) -> Pids | None:
    if raw is None:
        return None
    limit = _int(raw, "limit", where, required=True)
    assert limit is not None
    return Pids(limit=limit)


def _major_minor(raw: dict, where: str) -> tuple[int, int]:
    major = _int(raw, "major", where, low=0, required=True)
    minor = _int(raw, "minor", where, low=0, required=True)
    assert major is not None and minor is not None
    return major, minor


def _throttles(raw: dict, key: str, where: str) -> tuple[ThrottleDevice, ...]:
    out = []
    for i, item in enumerate(_opt_list(raw, key, where)):
        at = f"{where}.{key}[{i}]"
        _need_object(item, at)
        major, minor = _major_minor(item, at)
        rate = _uint(item, "rate", at, required=True)
        assert rate is not None
        out.append(ThrottleDevice(major, minor, rate))
    return tuple(out)


def _weight(raw: dict, key: str, where: str) -> int | None:
    value = _uint(raw, key, where, high=0xFFFF)
    if value is not None and value != 0 and not 10 <= value <= 1000:
        raise InvalidArgument(f"{where}.{key}: {value} is not within 10-1000")
    return value


def _block_io(raw: dict | None, where: str) -> BlockIO | None:
    if raw is None:
        return None
    weights = []
    for i, item in enumerate(_opt_list(raw, "weightDevice", where)):
        at = f"{where}.weightDevice[{i}]"
        _need_object(item, at)
        major, minor = _major_minor(item, at)
        weights.append(WeightDevice(major, minor, _weight(item, "weight", at),
                                    _weight(item, "leafWeight", at)))
    return BlockIO(
        weight=_weight(raw, "weight", where),
        leaf_weight=_weight(raw, "leafWeight", where),
        weight_device=tuple(weights),
        throttle_read_bps=_throttles(raw, "throttleReadBpsDevice", where),
        throttle_write_bps=_throttles(raw, "throttleWriteBpsDevice", where),
        throttle_read_iops=_throttles(raw, "throttleReadIOPSDevice", where),
        throttle_write_iops=_throttles(raw, "throttleWriteIOPSDevice", where),
    )


def _device(raw: Any, where: str) -> DeviceRule:
    _need_object(raw, where)
    allow = raw.get("allow")
    if not isinstance(allow, bool):
        raise InvalidArgument(f"{where}.allow: is required and must be a boolean")
    dev_type = _str(raw, "type", where) or "a"
    if dev_type not in ("a", "c", "b"):
        raise InvalidArgument(f"{where}.type: {dev_type!r} is not one of 'a', 'c', 'b'")
    # runc and docker spell "any" as a missing number or -1.
    major = _int(raw, "major", where, low=-1)
    minor = _int(raw, "minor", where, low=-1)
    access = _str(raw, "access", where) or "rwm"
    if not access or any(c not in "rwm" for c in access) or len(set(access)) != len(access):
        raise InvalidArgument(f"{where}.access: {access!r} must be letters from 'rwm'")
    return DeviceRule(
        allow=allow, type=dev_type,
        major=None if major in (None, -1) else major,
        minor=None if minor in (None, -1) else minor,
        access="".join(c for c in "rwm" if c in access),
    )


def _hugepage(raw: Any, where: str) -> HugepageLimit:
    _need_object(raw, where)
    size = _str(raw, "pageSize", where)
    if size is None or not _matches(_PAGE_SIZE_RE, size):
        raise InvalidArgument(f"{where}.pageSize: {size!r} must look like '2MB' or '1GB'")
    limit = _uint(raw, "limit", where, required=True)
    assert limit is not None
    return HugepageLimit(size, limit)


def _network(raw: dict | None, where: str) -> Network | None:
    if raw is None:
        return None
    priorities = []
    for i, item in enumerate(_opt_list(raw, "priorities", where)):
        at = f"{where}.priorities[{i}]"
        _need_object(item, at)
        name = _str(item, "name", at)
        if not name:
            raise InvalidArgument(f"{at}.name: is required")
        prio = _uint(item, "priority", at, high=0xFFFFFFFF, required=True)
        assert prio is not None
        priorities.append(InterfacePriority(name, prio))
    return Network(class_id=_uint(raw, "classID", where, high=0xFFFFFFFF),
                   priorities=tuple(priorities))
