"""Linux capabilities: OCI ``process.capabilities`` parsing and the calls the init makes.

The init must call the steps in this order (the kernel rules behind each):

1. ``drop_bounding(caps)`` while still root with CAP_SETPCAP: PR_CAPBSET_DROP
   needs CAP_SETPCAP, which a non-root user will not have after setuid.
2. ``set_keepcaps()``: without PR_SET_KEEPCAPS a setuid from 0 to non-zero
   clears the permitted set, and nothing could restore it.
3. setgroups / setgid / setuid (the user module).
4. ``clear_keepcaps()``: the flag must not leak into the container process.
5. ``apply_sets(caps)``: capset of effective, permitted, inheritable. After the
   user change the effective set is empty; capset refills it from permitted.
6. ``raise_ambient(caps)``: an ambient cap must already be in both permitted and
   inheritable, so this comes after capset.

``apply_capabilities(caps)`` runs 1, 5 and 6 for an init that stays root;
``apply_capabilities(caps, keep_caps_for_setuid=True)`` runs 1 and 2, and
``finish_after_setuid(caps)`` runs 4, 5 and 6 after the caller's step 3.

Load seccomp before step 1 when no_new_privs is off (the kernel then needs
CAP_SYS_ADMIN to install a filter), otherwise last, right before execve.
"""

from __future__ import annotations

import ctypes
import errno
import os

from dockyard import errdefs
from dockyard.linux import syscalls
from dockyard.record import field, record

# typing and collections.abc cost ~4 ms of start-up on `dockyard-runc run`;
# annotations only need them for type checkers.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

CAPABILITY_NAMES: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
CAPABILITY_NUMBERS: dict[str, int] = {name: i for i, name in enumerate(CAPABILITY_NAMES)}
LAST_KNOWN_CAP = len(CAPABILITY_NAMES) - 1

_DOCKER_DEFAULTS = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)

_SETS = ("bounding", "effective", "inheritable", "permitted", "ambient")
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def cap_number(name: str) -> int:
    """Number of a capability name ("CAP_CHOWN" or "chown")."""
    upper = name.upper()
    key = upper if upper.startswith("CAP_") else f"CAP_{upper}"
    try:
        return CAPABILITY_NUMBERS[key]
    except KeyError:
        raise errdefs.InvalidArgument(
            f"unknown capability {name!r}; expected a name such as CAP_CHOWN "
            f"(CAP_CHOWN..{CAPABILITY_NAMES[-1]})") from None


def cap_name(number: int) -> str:
    if 0 <= number < len(CAPABILITY_NAMES):
        return CAPABILITY_NAMES[number]
    return f"CAP_{number}"


def docker_default_capabilities() -> list[str]:
    """The 14 capabilities Docker grants a container without --privileged or cap-add/drop."""
    return list(_DOCKER_DEFAULTS)


def to_mask(numbers: Iterable[int]) -> int:
    mask = 0
    for number in numbers:
        mask |= 1 << number
    return mask


def last_cap() -> int:
    """Highest capability number the running kernel knows."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return LAST_KNOWN_CAP


# Read once at import: the init may run after pivot_root, where /proc can be
# missing, and must still drop every cap the kernel knows.
_KERNEL_LAST_CAP = last_cap()


def host_bounding_set() -> frozenset[int]:
    """Capabilities in this process's bounding set (what a child can still hold).

    One read of CapBnd in /proc/self/status, not a prctl per capability (41 of
    them on every create); the prctl probe is the fallback without /proc.
    """
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"CapBnd:"):
                    mask = int(line[7:], 16)
                    return frozenset(n for n in range(mask.bit_length()) if mask >> n & 1)
    except (OSError, ValueError):
        pass
    present = set()
    for number in range(last_cap() + 1):
        try:
            if syscalls.prctl(syscalls.PR_CAPBSET_READ, number) == 1:
                present.add(number)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
    return frozenset(present)


@record(frozen=True)
class Capabilities:
    """The five capability sets as numbers.

    ``warnings`` lists capabilities the spec asked for that were dropped because
    the host cannot grant them (not in the runtime's bounding set, or ambient
    without permitted+inheritable); the caller logs them.
    """

    bounding: frozenset[int] = frozenset()
    effective: frozenset[int] = frozenset()
    inheritable: frozenset[int] = frozenset()
    permitted: frozenset[int] = frozenset()
    ambient: frozenset[int] = frozenset()
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def from_oci(cls, spec: dict[str, Any] | None,
                 host_bounding: frozenset[int] | None = None) -> Capabilities:
        """Parse OCI ``process.capabilities``; ``host_bounding`` defaults to this process's."""
        spec = spec or {}
        if not isinstance(spec, dict):
            raise errdefs.InvalidArgument(
                f"process.capabilities: must be an object, got {type(spec).__name__}")
        available = host_bounding_set() if host_bounding is None else host_bounding
        warnings: list[str] = []
        sets: dict[str, frozenset[int]] = {}
        unavailable: set[int] = set()
        for set_name in _SETS:
            names = spec.get(set_name) or []
            if not isinstance(names, list):
                raise errdefs.InvalidArgument(
                    f"process.capabilities.{set_name}: must be a list of capability names")
            numbers = set()
            for i, name in enumerate(names):
                if not isinstance(name, str):
                    raise errdefs.InvalidArgument(
                        f"process.capabilities.{set_name}[{i}]: must be a string, got {name!r}")
                try:
                    number = cap_number(name)
                except errdefs.InvalidArgument as exc:
                    raise errdefs.InvalidArgument(
                        f"process.capabilities.{set_name}[{i}]: {exc}") from exc
                if number in available:
                    numbers.add(number)
                else:
                    unavailable.add(number)
            sets[set_name] = frozenset(numbers)
        for number in sorted(unavailable):
            warnings.append(
                f"capability {cap_name(number)} is not in the host's bounding set; "
                "dropped from the container")
        # The kernel refuses to raise an ambient cap that is not both permitted
        # and inheritable; drop it here so apply never fails half-way.
        ambient = sets["ambient"] & sets["permitted"] & sets["inheritable"]
        for number in sorted(sets["ambient"] - ambient):
            warnings.append(
                f"ambient capability {cap_name(number)} is not in both the permitted and "
                "inheritable sets; dropped from the ambient set")
        return cls(sets["bounding"], sets["effective"], sets["inheritable"],
                   sets["permitted"], ambient, tuple(warnings))

    def names(self, set_name: str) -> list[str]:
        return [cap_name(n) for n in sorted(getattr(self, set_name))]


# --- capget / capset binding -----------------------------------------------

class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_libc = syscalls.libc()
_capset = _libc.capset
_capset.argtypes = [ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData)]
_capset.restype = ctypes.c_int
_capget = _libc.capget
_capget.argtypes = [ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData)]
_capget.restype = ctypes.c_int


def _oserror(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def get_sets(pid: int = 0) -> tuple[int, int, int]:
    """(effective, permitted, inheritable) masks of ``pid`` (0 = this thread)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, pid)
    data = (_CapData * 2)()
    if _capget(ctypes.byref(header), data) < 0:
        raise _oserror(f"capget(pid {pid})")
    return tuple(  # type: ignore[return-value]
        getattr(data[0], attr) | (getattr(data[1], attr) << 32)
        for attr in ("effective", "permitted", "inheritable"))


def drop_bounding(caps: Capabilities) -> None:
    """Drop every capability outside ``caps.bounding`` (needs CAP_SETPCAP)."""
    for number in range(max(_KERNEL_LAST_CAP, LAST_KNOWN_CAP) + 1):
        if number in caps.bounding:
            continue
        try:
            syscalls.prctl(syscalls.PR_CAPBSET_DROP, number)
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # kernel does not know this cap
                continue
            raise errdefs.FailedPrecondition(
                f"cannot drop {cap_name(number)} from the bounding set: {exc.strerror}; "
                "the init needs CAP_SETPCAP at this point") from exc


def set_keepcaps() -> None:
    """Keep the permitted set across the setuid that follows."""
    syscalls.prctl(syscalls.PR_SET_KEEPCAPS, 1)


def clear_keepcaps() -> None:
    syscalls.prctl(syscalls.PR_SET_KEEPCAPS, 0)


def apply_sets(caps: Capabilities) -> None:
    """capset the effective, permitted and inheritable sets of the calling thread."""
    masks = {"effective": to_mask(caps.effective), "permitted": to_mask(caps.permitted),
             "inheritable": to_mask(caps.inheritable)}
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for word in range(2):
        for attr, mask in masks.items():
            setattr(data[word], attr, (mask >> (32 * word)) & 0xFFFFFFFF)
    if _capset(ctypes.byref(header), data) < 0:
        exc = _oserror("capset")
        raise errdefs.FailedPrecondition(
            f"cannot set capabilities (effective {caps.names('effective')}, permitted "
            f"{caps.names('permitted')}): {exc.strerror}; a set cannot gain capabilities "
            "the process no longer holds") from exc


def raise_ambient(caps: Capabilities) -> None:
    """Reset the ambient set to exactly ``caps.ambient``."""
    syscalls.prctl(syscalls.PR_CAP_AMBIENT, syscalls.PR_CAP_AMBIENT_CLEAR_ALL)
    for number in sorted(caps.ambient):
        try:
            syscalls.prctl(syscalls.PR_CAP_AMBIENT, syscalls.PR_CAP_AMBIENT_RAISE, number)
        except OSError as exc:
            raise errdefs.FailedPrecondition(
                f"cannot raise ambient capability {cap_name(number)}: {exc.strerror}; it must "
                "be in the permitted and inheritable sets") from exc


def apply_capabilities(caps: Capabilities, keep_caps_for_setuid: bool = False) -> None:
    """Apply all sets for an init that changes no user (see the module doc for the order).

    With ``keep_caps_for_setuid`` the bounding set is dropped and PR_SET_KEEPCAPS
    set, then the function returns: the caller does setgid/setuid, then calls
    ``finish_after_setuid(caps)``.
    """
    drop_bounding(caps)
    if keep_caps_for_setuid:
        set_keepcaps()
        return
    apply_sets(caps)
    raise_ambient(caps)


def finish_after_setuid(caps: Capabilities) -> None:
    """Second half of ``apply_capabilities(caps, keep_caps_for_setuid=True)``."""
    clear_keepcaps()
    apply_sets(caps)
    raise_ambient(caps)
