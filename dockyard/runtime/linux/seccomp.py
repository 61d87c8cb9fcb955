"""Seccomp: compile the OCI ``linux.seccomp`` object into a libseccomp filter.

Two phases, so the container init does the least possible work:

* ``compile_filter(spec)`` validates the whole object (every error names its
  field path) and builds the libseccomp context. It makes no syscall that
  changes the process, so the runtime calls it in the parent before fork.
* ``SeccompFilter.load()`` is the only call that applies the filter; the init
  calls it as close to execve as possible.

The filter never sets no_new_privs itself (``SCMP_FLTATR_CTL_NNP`` is 0): the
init sets ``PR_SET_NO_NEW_PRIVS`` when ``process.noNewPrivileges`` asks for it.
Without no_new_privs the kernel requires CAP_SYS_ADMIN to load a filter, so in
that case the init must load it before dropping capabilities.

``docker_profile_to_oci`` turns Docker's profile format (archMap, rule groups
with includes/excludes) into the OCI form for one container, as the engine does
when it writes the bundle.

libseccomp (``libseccomp.so.2``) is bound with ctypes here and loaded at import
time, because the forked init must not load libraries lazily.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os

from dockyard import errdefs
from dockyard.record import record

# typing costs ~4 ms of start-up on `dockyard-runc run`; annotations only need it
# for type checkers.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# --- constants from <seccomp.h> (libseccomp 2.5 ABI) ---------------------

_ACT_KILL_PROCESS = 0x80000000
_ACT_KILL_THREAD = 0x00000000
_ACT_TRAP = 0x00030000
_ACT_ERRNO = 0x00050000
_ACT_TRACE = 0x7FF00000
_ACT_LOG = 0x7FFC0000
_ACT_ALLOW = 0x7FFF0000

_SIMPLE_ACTIONS = {
    "SCMP_ACT_KILL": _ACT_KILL_THREAD,
    "SCMP_ACT_KILL_THREAD": _ACT_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": _ACT_KILL_PROCESS,
    "SCMP_ACT_TRAP": _ACT_TRAP,
    "SCMP_ACT_ALLOW": _ACT_ALLOW,
    "SCMP_ACT_LOG": _ACT_LOG,
}
# Actions that carry a 16-bit value (errno to return, or ptrace message).
_VALUE_ACTIONS = {"SCMP_ACT_ERRNO": _ACT_ERRNO, "SCMP_ACT_TRACE": _ACT_TRACE}

OPERATORS = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}

ARCHITECTURES = frozenset({
    "SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_ARM",
    "SCMP_ARCH_AARCH64", "SCMP_ARCH_LOONGARCH64", "SCMP_ARCH_M68K", "SCMP_ARCH_MIPS",
    "SCMP_ARCH_MIPS64", "SCMP_ARCH_MIPS64N32", "SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64",
    "SCMP_ARCH_MIPSEL64N32", "SCMP_ARCH_PPC", "SCMP_ARCH_PPC64", "SCMP_ARCH_PPC64LE",
    "SCMP_ARCH_S390", "SCMP_ARCH_S390X", "SCMP_ARCH_SH", "SCMP_ARCH_SHEB",
    "SCMP_ARCH_PARISC", "SCMP_ARCH_PARISC64", "SCMP_ARCH_RISCV64",
})

# enum scmp_filter_attr
_ATTR_CTL_NNP = 3
_ATTR_CTL_TSYNC = 4
_ATTR_CTL_LOG = 6
_ATTR_CTL_SSB = 7

_FLAG_ATTRS = {
    "SECCOMP_FILTER_FLAG_TSYNC": _ATTR_CTL_TSYNC,
    "SECCOMP_FILTER_FLAG_LOG": _ATTR_CTL_LOG,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": _ATTR_CTL_SSB,
}
_UNSUPPORTED_FLAGS = frozenset({"SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"})

_NR_SCMP_ERROR = -1
_MAX_ARGS = 6
_UINT64_MAX = (1 << 64) - 1


# --- ctypes binding --------------------------------------------------------

class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    void_p, u32, c_int = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int
    signatures: dict[str, tuple[list[Any], Any]] = {
        "seccomp_init": ([u32], void_p),
        "seccomp_release": ([void_p], None),
        "seccomp_arch_add": ([void_p, u32], c_int),
        "seccomp_arch_native": ([], u32),
        "seccomp_arch_resolve_name": ([ctypes.c_char_p], u32),
        "seccomp_syscall_resolve_name": ([ctypes.c_char_p], c_int),
        "seccomp_rule_add_array": (
            [void_p, u32, c_int, ctypes.c_uint, ctypes.POINTER(_ArgCmp)], c_int),
        "seccomp_attr_set": ([void_p, c_int, u32], c_int),
        "seccomp_load": ([void_p], c_int),
        "seccomp_export_bpf": ([void_p, c_int], c_int),
        "seccomp_version": ([], ctypes.POINTER(_Version)),
    }
    for name, (argtypes, restype) in signatures.items():
        function = getattr(lib, name)
        function.argtypes = argtypes
        function.restype = restype
    return lib


def _open_libseccomp() -> tuple[ctypes.CDLL | None, str]:
    try:
        return _bind(ctypes.CDLL("libseccomp.so.2", use_errno=True)), ""
    except (OSError, AttributeError) as exc:
        return None, str(exc)


_lib, _lib_error = _open_libseccomp()


def _require_lib() -> ctypes.CDLL:
    if _lib is None:
        raise errdefs.Unavailable(
            f"seccomp needs libseccomp.so.2, which could not be loaded ({_lib_error}); "
            "install the libseccomp2 package or run the container with seccomp=unconfined")
    return _lib


def libseccomp_version() -> tuple[int, int, int]:
    """Version of the loaded libseccomp, e.g. (2, 5, 4)."""
    version = _require_lib().seccomp_version().contents
    return (version.major, version.minor, version.micro)


def native_arch_token() -> int:
    """libseccomp's AUDIT_ARCH token for the architecture this process runs on."""
    return int(_require_lib().seccomp_arch_native())


# --- validated, library-free form of the spec ------------------------------

@record(frozen=True)
class ArgCondition:
    index: int
    op: int
    value: int
    value_two: int


@record(frozen=True)
class SyscallRule:
    names: tuple[str, ...]
    action: int
    args: tuple[ArgCondition, ...]
    path: str  # field path in the spec, for error messages


@record(frozen=True)
class SeccompConfig:
    default_action: int
    architectures: tuple[str, ...]
    flags: tuple[str, ...]
    rules: tuple[SyscallRule, ...]


def _quote(value: Any) -> str:
    return json.dumps(value)


def _invalid(path: str, message: str) -> errdefs.InvalidArgument:
    return errdefs.InvalidArgument(f"{path}: {message}")


def _uint(value: Any, path: str, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise _invalid(path, f"must be an integer between 0 and {maximum}, got {value!r}")
    return value


def _action(name: Any, errno_ret: Any, path: str, errno_path: str) -> int:
    if name == "SCMP_ACT_NOTIFY":
        raise errdefs.NotImplementedFeature(
            f"{path}: SCMP_ACT_NOTIFY (seccomp user notification) is not supported by dockyard; "
            "use SCMP_ACT_ERRNO or SCMP_ACT_TRACE instead")
    if name in _SIMPLE_ACTIONS:
        if errno_ret is not None:
            raise _invalid(errno_path, f"errnoRet applies only to SCMP_ACT_ERRNO and "
                                       f"SCMP_ACT_TRACE, not {name}")
        return _SIMPLE_ACTIONS[name]
    if name in _VALUE_ACTIONS:
        value = errno.EPERM if errno_ret is None else _uint(errno_ret, errno_path, 0xFFFF)
        return _VALUE_ACTIONS[name] | value
    raise _invalid(path, f"unknown action {_quote(name)}")


def _arg(raw: Any, path: str) -> ArgCondition:
    if not isinstance(raw, dict):
        raise _invalid(path, f"must be an object, got {type(raw).__name__}")
    index = raw.get("index")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < _MAX_ARGS:
        raise _invalid(f"{path}.index",
                       f"syscall argument index must be 0 to {_MAX_ARGS - 1}, got {index!r}")
    op = raw.get("op")
    if op not in OPERATORS:
        raise _invalid(f"{path}.op", f"unknown operator {_quote(op)}")
    value = _uint(raw.get("value"), f"{path}.value", _UINT64_MAX)
    value_two = _uint(raw.get("valueTwo", 0), f"{path}.valueTwo", _UINT64_MAX)
    return ArgCondition(index, OPERATORS[op], value, value_two)


def parse_seccomp(spec: dict[str, Any], path: str = "linux.seccomp") -> SeccompConfig:
    """Validate an OCI ``linux.seccomp`` object; needs no library and makes no syscall."""
    if not isinstance(spec, dict):
        raise _invalid(path, f"must be an object, got {type(spec).__name__}")
    if spec.get("listenerPath"):
        raise errdefs.NotImplementedFeature(
            f"{path}.listenerPath: seccomp user notification is not supported by dockyard; "
            "remove listenerPath (and SCMP_ACT_NOTIFY rules) from the profile")
    default_action = _action(spec.get("defaultAction"), spec.get("defaultErrnoRet"),
                             f"{path}.defaultAction", f"{path}.defaultErrnoRet")

    architectures = spec.get("architectures") or []
    if not isinstance(architectures, list):
        raise _invalid(f"{path}.architectures", "must be a list")
    for i, arch in enumerate(architectures):
        if arch not in ARCHITECTURES:
            raise _invalid(f"{path}.architectures[{i}]",
                           f"unknown architecture {_quote(arch)}")

    flags = spec.get("flags") or []
    if not isinstance(flags, list):
        raise _invalid(f"{path}.flags", "must be a list")
    for i, flag in enumerate(flags):
        if flag in _UNSUPPORTED_FLAGS:
            raise errdefs.NotImplementedFeature(
                f"{path}.flags[{i}]: {flag} needs libseccomp 2.6, which dockyard does not use; "
                "remove the flag")
        if flag not in _FLAG_ATTRS:
            raise _invalid(f"{path}.flags[{i}]", f"unknown flag {_quote(flag)}")

    syscalls = spec.get("syscalls") or []
    if not isinstance(syscalls, list):
        raise _invalid(f"{path}.syscalls", "must be a list")
    rules = []
    for i, raw in enumerate(syscalls):
        rule_path = f"{path}.syscalls[{i}]"
        if not isinstance(raw, dict):
            raise _invalid(rule_path, f"must be an object, got {type(raw).__name__}")
        names = raw.get("names")
        if (not isinstance(names, list) or not names
                or not all(isinstance(n, str) and n for n in names)):
            raise _invalid(f"{rule_path}.names", "must be a non-empty list of syscall names")
        action = _action(raw.get("action"), raw.get("errnoRet"),
                         f"{rule_path}.action", f"{rule_path}.errnoRet")
        raw_args = raw.get("args") or []
        if not isinstance(raw_args, list):
            raise _invalid(f"{rule_path}.args", "must be a list")
        args = tuple(_arg(a, f"{rule_path}.args[{j}]") for j, a in enumerate(raw_args))
        rules.append(SyscallRule(tuple(names), action, args, rule_path))
    return SeccompConfig(default_action, tuple(architectures), tuple(flags), tuple(rules))


# --- the compiled filter -----------------------------------------------------

class SeccompFilter:
    """A built libseccomp context. ``load()`` applies it to the calling thread.

    Build it before fork; the forked init inherits the context and only loads it.
    ``skipped_syscalls`` lists names this libseccomp does not know (skipped, as runc
    does, because profiles name syscalls newer than the host).
    """

    def __init__(self, config: SeccompConfig, ctx: int) -> None:
        self.config = config
        self.skipped_syscalls: tuple[str, ...] = ()
        self._ctx: int | None = ctx

    def load(self) -> None:
        """Install the filter in the kernel for this process (irreversible)."""
        rc = _require_lib().seccomp_load(self._live_ctx())
        if rc < 0:
            raise errdefs.FailedPrecondition(
                f"failed to load seccomp filter: {os.strerror(-rc)}; without no_new_privs the "
                "filter must be loaded while the process still holds CAP_SYS_ADMIN"
            ) from OSError(-rc, os.strerror(-rc))

    def export_bpf(self) -> bytes:
        """The BPF program libseccomp generates, for inspection and tests."""
        fd = os.memfd_create("dockyard-seccomp-bpf", os.MFD_CLOEXEC)
        try:
            rc = _require_lib().seccomp_export_bpf(self._live_ctx(), fd)
            if rc < 0:
                raise errdefs.Unavailable(
                    f"failed to export seccomp BPF: {os.strerror(-rc)}"
                ) from OSError(-rc, os.strerror(-rc))
            os.lseek(fd, 0, os.SEEK_SET)
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def release(self) -> None:
        if self._ctx is not None and _lib is not None:
            _lib.seccomp_release(self._ctx)
        self._ctx = None

    def __enter__(self) -> SeccompFilter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()

    def _live_ctx(self) -> int:
        if self._ctx is None:
            raise errdefs.FailedPrecondition("seccomp filter was already released")
        return self._ctx


def _check(rc: int, message: str) -> None:
    if rc < 0:
        raise errdefs.InvalidArgument(f"{message}: {os.strerror(-rc)}") from OSError(
            -rc, os.strerror(-rc))


def _add_rule(lib: ctypes.CDLL, ctx: int, rule: SyscallRule, name: str, number: int) -> None:
    indexes = [arg.index for arg in rule.args]
    # As runc does: several conditions on one argument are alternatives (one rule
    # each, OR); conditions on distinct arguments must all hold (one rule, AND).
    if len(set(indexes)) != len(indexes):
        groups: list[tuple[ArgCondition, ...]] = [(arg,) for arg in rule.args]
    else:
        groups = [rule.args]
    for group in groups:
        array = (_ArgCmp * max(len(group), 1))(
            *[_ArgCmp(a.index, a.op, a.value, a.value_two) for a in group])
        rc = lib.seccomp_rule_add_array(ctx, rule.action, number, len(group), array)
        _check(rc, f"{rule.path}: cannot add rule for syscall {name!r}")


def compile_filter(spec: dict[str, Any]) -> SeccompFilter:
    """Validate ``spec`` (OCI ``linux.seccomp``) and build its libseccomp context.

    Does not touch the process's seccomp state; call ``load()`` on the result.
    """
    config = parse_seccomp(spec)
    lib = _require_lib()
    ctx = lib.seccomp_init(config.default_action)
    if not ctx:
        raise errdefs.InvalidArgument(
            "linux.seccomp.defaultAction: libseccomp refused the default action "
            f"{spec.get('defaultAction')!r} (not supported by this kernel or library)")
    seccomp_filter = SeccompFilter(config, ctx)
    try:
        _check(lib.seccomp_attr_set(ctx, _ATTR_CTL_NNP, 0), "cannot turn off libseccomp's NNP")
        for i, flag in enumerate(config.flags):
            rc = lib.seccomp_attr_set(ctx, _FLAG_ATTRS[flag], 1)
            if rc < 0:
                raise errdefs.Unavailable(
                    f"linux.seccomp.flags[{i}]: {flag} is not supported by this kernel or "
                    f"libseccomp: {os.strerror(-rc)}")
        for i, arch in enumerate(config.architectures):
            token = lib.seccomp_arch_resolve_name(arch.removeprefix("SCMP_ARCH_").lower().encode())
            if token == 0:
                raise errdefs.InvalidArgument(
                    f"linux.seccomp.architectures[{i}]: {arch} is not supported by libseccomp "
                    f"{'.'.join(map(str, libseccomp_version()))}; remove it from the profile")
            rc = lib.seccomp_arch_add(ctx, token)
            if rc < 0 and rc != -errno.EEXIST:  # the native arch is always present
                _check(rc, f"linux.seccomp.architectures[{i}]: cannot add {arch}")
        skipped: list[str] = []
        for rule in config.rules:
            # libseccomp refuses a rule whose action equals the default one, and it
            # would change nothing anyway.
            if rule.action == config.default_action:
                continue
            for name in rule.names:
                number = lib.seccomp_syscall_resolve_name(name.encode())
                if number == _NR_SCMP_ERROR:
                    skipped.append(name)
                    continue
                _add_rule(lib, ctx, rule, name, number)
        seccomp_filter.skipped_syscalls = tuple(dict.fromkeys(skipped))
    except BaseException:
        seccomp_filter.release()
        raise
    return seccomp_filter


# --- Docker profile format ---------------------------------------------------

# machine name (uname -m) or Go arch -> (seccomp arch, Go arch used in includes.arches)
_NATIVE_ARCHES = {
    "x86_64": ("SCMP_ARCH_X86_64", "amd64"),
    "amd64": ("SCMP_ARCH_X86_64", "amd64"),
    "aarch64": ("SCMP_ARCH_AARCH64", "arm64"),
    "arm64": ("SCMP_ARCH_AARCH64", "arm64"),
    "i386": ("SCMP_ARCH_X86", "386"),
    "i686": ("SCMP_ARCH_X86", "386"),
    "386": ("SCMP_ARCH_X86", "386"),
    "arm": ("SCMP_ARCH_ARM", "arm"),
    "armv7l": ("SCMP_ARCH_ARM", "arm"),
    "mips": ("SCMP_ARCH_MIPS", "mips"),
    "mipsle": ("SCMP_ARCH_MIPSEL", "mipsle"),
    "mips64": ("SCMP_ARCH_MIPS64", "mips64"),
    "mips64le": ("SCMP_ARCH_MIPSEL64", "mips64le"),
    "ppc64": ("SCMP_ARCH_PPC64", "ppc64"),
    "ppc64le": ("SCMP_ARCH_PPC64LE", "ppc64le"),
    "s390x": ("SCMP_ARCH_S390X", "s390x"),
    "riscv64": ("SCMP_ARCH_RISCV64", "riscv64"),
    "loongarch64": ("SCMP_ARCH_LOONGARCH64", "loong64"),
    "loong64": ("SCMP_ARCH_LOONGARCH64", "loong64"),
}


def _kernel_tuple(release: str) -> tuple[int, ...]:
    parts = []
    for piece in release.split("-", 1)[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit()) if piece else ""
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def _normalize_cap(name: str) -> str:
    upper = name.upper()
    return upper if upper.startswith("CAP_") else f"CAP_{upper}"


def docker_profile_to_oci(profile: dict[str, Any], capabilities: list[str],
                          arch: str = "x86_64", kernel_release: str | None = None) -> dict:
    """Resolve a Docker-format seccomp profile into OCI ``linux.seccomp`` for one container.

    A rule group is kept when its ``includes`` all hold (caps ⊆ container caps,
    host arch listed, kernel ≥ minKernel) and none of its ``excludes`` do.
    """
    if arch not in _NATIVE_ARCHES:
        raise errdefs.InvalidArgument(
            f"unknown architecture {arch!r} for the seccomp profile; "
            f"expected one of {sorted(_NATIVE_ARCHES)}")
    seccomp_arch, go_arch = _NATIVE_ARCHES[arch]
    kernel = _kernel_tuple(kernel_release or os.uname().release)
    caps = {_normalize_cap(c) for c in capabilities}
    arches_here = {arch, go_arch}

    out: dict[str, Any] = {"defaultAction": profile.get("defaultAction")}
    if profile.get("defaultErrnoRet") is not None:
        out["defaultErrnoRet"] = profile["defaultErrnoRet"]
    for key in ("flags", "listenerPath", "listenerMetadata"):
        if profile.get(key):
            out[key] = profile[key]

    architectures: list[str] = []
    if profile.get("archMap"):
        for entry in profile["archMap"]:
            if entry.get("architecture") == seccomp_arch:
                architectures = [seccomp_arch, *(entry.get("subArchitectures") or [])]
    elif profile.get("architectures"):
        architectures = list(profile["architectures"])
    if architectures:
        out["architectures"] = architectures

    syscalls = []
    for i, group in enumerate(profile.get("syscalls") or []):
        if group.get("name") and group.get("names"):
            raise errdefs.InvalidArgument(
                f"seccomp profile syscalls[{i}]: use either 'name' or 'names', not both")
        names = [group["name"]] if group.get("name") else list(group.get("names") or [])
        excludes = group.get("excludes") or {}
        includes = group.get("includes") or {}
        if arches_here & set(excludes.get("arches") or []):
            continue
        if caps & {_normalize_cap(c) for c in excludes.get("caps") or []}:
            continue
        if excludes.get("minKernel") and kernel >= _kernel_tuple(excludes["minKernel"]):
            continue
        if includes.get("arches") and not arches_here & set(includes["arches"]):
            continue
        if not {_normalize_cap(c) for c in includes.get("caps") or []} <= caps:
            continue
        if includes.get("minKernel") and kernel < _kernel_tuple(includes["minKernel"]):
            continue
        rule: dict[str, Any] = {"names": names, "action": group.get("action")}
        if group.get("errnoRet") is not None:
            rule["errnoRet"] = group["errnoRet"]
        if group.get("args"):
            rule["args"] = [dict(a) for a in group["args"]]
        syscalls.append(rule)
    out["syscalls"] = syscalls
    return out
