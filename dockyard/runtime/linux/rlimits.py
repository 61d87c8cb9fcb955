"""Resource limits from OCI ``process.rlimits``.

``parse_rlimits`` validates the spec before anything runs; ``apply_rlimits``
sets them on the calling process (the init, before execve) or, with ``pid``,
on another process through prlimit. Raising a hard limit above the current one
needs CAP_SYS_RESOURCE in the runtime's user namespace.
"""

from __future__ import annotations

import resource

from dockyard import errdefs
from dockyard.record import record

# typing and collections.abc cost ~4 ms of start-up on `dockyard-runc run`;
# annotations only need them for type checkers.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

# Numbers from <asm-generic/resource.h> (x86, arm, riscv, ...); the resource
# module's own constant wins where it has one (it lacks RLIMIT_LOCKS).
_GENERIC_NUMBERS = (
    "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_DATA", "RLIMIT_STACK", "RLIMIT_CORE", "RLIMIT_RSS",
    "RLIMIT_NPROC", "RLIMIT_NOFILE", "RLIMIT_MEMLOCK", "RLIMIT_AS", "RLIMIT_LOCKS",
    "RLIMIT_SIGPENDING", "RLIMIT_MSGQUEUE", "RLIMIT_NICE", "RLIMIT_RTPRIO", "RLIMIT_RTTIME",
)
RLIMIT_TYPES: dict[str, int] = {
    name: getattr(resource, name, number) for number, name in enumerate(_GENERIC_NUMBERS)
}

# OCI carries limits as uint64, where all ones means unlimited; Python's
# resource module spells unlimited as RLIM_INFINITY (-1).
UNLIMITED = (1 << 64) - 1


@record(frozen=True)
class Rlimit:
    type: str
    hard: int
    soft: int

    @property
    def resource_id(self) -> int:
        return RLIMIT_TYPES[self.type]

    def as_python(self) -> tuple[int, int]:
        """(soft, hard) as the resource module expects them."""
        return (_to_python(self.soft), _to_python(self.hard))


def _to_python(value: int) -> int:
    return resource.RLIM_INFINITY if value == UNLIMITED else value


def _limit(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= UNLIMITED:
        raise errdefs.InvalidArgument(
            f"{path}: must be an integer between 0 and {UNLIMITED} (unlimited), got {value!r}")
    return value


def parse_rlimits(spec: list[dict[str, Any]] | None) -> list[Rlimit]:
    """Validate OCI ``process.rlimits`` into ``Rlimit`` values (no syscall)."""
    if spec is None:
        return []
    if not isinstance(spec, list):
        raise errdefs.InvalidArgument("process.rlimits: must be a list")
    limits: list[Rlimit] = []
    seen: set[str] = set()
    for i, raw in enumerate(spec):
        path = f"process.rlimits[{i}]"
        if not isinstance(raw, dict):
            raise errdefs.InvalidArgument(f"{path}: must be an object")
        kind = raw.get("type")
        if kind not in RLIMIT_TYPES:
            raise errdefs.InvalidArgument(
                f"{path}.type: unknown rlimit type {kind!r}; expected one of "
                f"{', '.join(RLIMIT_TYPES)}")
        if kind in seen:
            raise errdefs.InvalidArgument(f"{path}.type: {kind} is given more than once")
        seen.add(kind)
        hard = _limit(raw.get("hard"), f"{path}.hard")
        soft = _limit(raw.get("soft"), f"{path}.soft")
        if soft > hard:
            raise errdefs.InvalidArgument(
                f"{path}: soft limit {soft} of {kind} is above its hard limit {hard}; "
                "lower soft or raise hard")
        limits.append(Rlimit(kind, hard, soft))
    return limits


def apply_rlimits(limits: Iterable[Rlimit], pid: int | None = None) -> None:
    """Set each limit on this process, or on ``pid`` via prlimit."""
    for limit in limits:
        try:
            if pid is None:
                resource.setrlimit(limit.resource_id, limit.as_python())
            else:
                resource.prlimit(pid, limit.resource_id, limit.as_python())
        except (OSError, ValueError) as exc:
            target = "the container process" if pid is None else f"pid {pid}"
            raise errdefs.FailedPrecondition(
                f"cannot set {limit.type} to soft {limit.soft} / hard {limit.hard} on {target}: "
                f"{exc}; raising a hard limit needs CAP_SYS_RESOURCE") from exc


def current_rlimits(pid: int = 0) -> dict[str, tuple[int, int]]:
    """Current (soft, hard) of every limit, in OCI form (unlimited = 2**64-1)."""
    def to_oci(value: int) -> int:
        return UNLIMITED if value == resource.RLIM_INFINITY else value

    out = {}
    for name, resource_id in RLIMIT_TYPES.items():
        soft, hard = resource.prlimit(pid, resource_id) if pid else resource.getrlimit(resource_id)
        out[name] = (to_oci(soft), to_oci(hard))
    return out
