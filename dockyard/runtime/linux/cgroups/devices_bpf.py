"""Device rules on cgroup v2: a hand-assembled BPF_PROG_TYPE_CGROUP_DEVICE program.

cgroup v2 has no devices.allow file; the kernel instead runs every eBPF program
attached to the cgroup (and its ancestors) at open/mknod of a device node. The
program sees struct bpf_cgroup_dev_ctx {u32 access_type; u32 major; u32 minor}
with access_type = (access << 16) | type, and returns 1 to allow, 0 to deny.

Rules keep the v1 meaning: deny everything, then the rules in order with the
last matching rule winning. The program therefore tests the rules from last to
first and returns on the first match; falling off the end denies.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

from dockyard.errdefs import FailedPrecondition, Unavailable
from dockyard.linux import syscalls

from .resources import DeviceRule

# collections.abc costs ~1 ms of start-up on `dockyard-runc run`; annotations only
# need it for type checkers.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

# <linux/bpf.h>
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_GET_FD_BY_ID = 13
BPF_PROG_QUERY = 16
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 2

BPF_DEVCG_DEV_BLOCK = 1
BPF_DEVCG_DEV_CHAR = 2
BPF_DEVCG_ACC_MKNOD = 1
BPF_DEVCG_ACC_READ = 2
BPF_DEVCG_ACC_WRITE = 4

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}

# Opcodes (class | op | source) for the few instructions the filter needs.
_LDX_MEM_W = 0x61  # dst = *(u32 *)(src + off)
_ALU32_AND_K = 0x54  # dst &= imm
_ALU32_RSH_K = 0x74  # dst >>= imm
_ALU32_MOV_X = 0xBC  # dst = src
_ALU64_MOV_K = 0xB7  # dst = imm
_JMP_JNE_K = 0x55  # if dst != imm goto pc + off
_JMP_JNE_X = 0x5D  # if dst != src goto pc + off
_JMP_EXIT = 0x95

# Registers: r1 ctx on entry (then scratch), r2 type, r3 access, r4 major, r5 minor.
R0, R1, R2, R3, R4, R5 = range(6)

_TYPES = {"c": BPF_DEVCG_DEV_CHAR, "b": BPF_DEVCG_DEV_BLOCK}
_ACCESS = {"r": BPF_DEVCG_ACC_READ, "w": BPF_DEVCG_ACC_WRITE, "m": BPF_DEVCG_ACC_MKNOD}
_ALL_ACCESS = BPF_DEVCG_ACC_READ | BPF_DEVCG_ACC_WRITE | BPF_DEVCG_ACC_MKNOD


def insn(opcode: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """One 8-byte struct bpf_insn: code, dst:4|src:4 (dst in the low nibble), off, imm."""
    return struct.pack("<BBhi", opcode, (src << 4) | dst, off, imm)


def _prologue() -> list[bytes]:
    return [
        insn(_LDX_MEM_W, R2, R1, 0),
        insn(_ALU32_AND_K, R2, imm=0xFFFF),
        insn(_LDX_MEM_W, R3, R1, 0),
        insn(_ALU32_RSH_K, R3, imm=16),
        insn(_LDX_MEM_W, R4, R1, 4),
        insn(_LDX_MEM_W, R5, R1, 8),
    ]


def _rule_block(rule: DeviceRule) -> list[bytes]:
    """Instructions for one rule; every failed test jumps to the next rule's block."""
    skip = 0x7FFF  # placeholder patched by assemble()
    block: list[bytes] = []
    if rule.type != "a":
        block.append(insn(_JMP_JNE_K, R2, off=skip, imm=_TYPES[rule.type]))
    access = 0
    for letter in rule.access:
        access |= _ACCESS[letter]
    if rule.type != "a" and access != _ALL_ACCESS:
        # Match only when every requested access bit is one the rule names.
        block += [
            insn(_ALU32_MOV_X, R1, R3),
            insn(_ALU32_AND_K, R1, imm=access),
            insn(_JMP_JNE_X, R1, R3, off=skip),
        ]
    if rule.type != "a" and rule.major is not None:
        block.append(insn(_JMP_JNE_K, R4, off=skip, imm=rule.major))
    if rule.type != "a" and rule.minor is not None:
        block.append(insn(_JMP_JNE_K, R5, off=skip, imm=rule.minor))
    block += [insn(_ALU64_MOV_K, R0, imm=1 if rule.allow else 0), insn(_JMP_EXIT)]
    # Every placeholder jumps past the rest of this block.
    patched = []
    for index, raw in enumerate(block):
        opcode, regs, off, imm = struct.unpack("<BBhi", raw)
        if off == skip:
            off = len(block) - index - 1
        patched.append(struct.pack("<BBhi", opcode, regs, off, imm))
    return patched


def assemble(rules: Sequence[DeviceRule]) -> bytes:
    """The whole program for rules, as the bytes BPF_PROG_LOAD takes."""
    program = _prologue()
    for rule in reversed(rules):
        program += _rule_block(rule)
        if rule.type == "a":
            # It matches every device, so nothing before it could ever run, and the
            # verifier rejects a program with unreachable instructions.
            return b"".join(program)
    program += [insn(_ALU64_MOV_K, R0, imm=0), insn(_JMP_EXIT)]
    return b"".join(program)


# --- bpf(2) ------------------------------------------------------------------------------

_ATTR_SIZE = 128


def _bpf(cmd: int, attr: ctypes.Array, what: str) -> int:
    number = _SYS_BPF.get(os.uname().machine)
    if number is None:
        raise Unavailable(f"bpf(2) syscall number unknown for {os.uname().machine}")
    libc = syscalls.libc()
    result = libc.syscall(ctypes.c_long(number), ctypes.c_int(cmd), ctypes.byref(attr),
                          ctypes.c_uint(_ATTR_SIZE))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _attr(*fields: tuple[int, str, int]) -> ctypes.Array:
    buf = ctypes.create_string_buffer(_ATTR_SIZE)
    for offset, fmt, value in fields:
        struct.pack_into(fmt, buf, offset, value)
    return buf


def load_program(program: bytes) -> int:
    """BPF_PROG_LOAD; returns the program fd. The verifier log is in the error on failure."""
    insns = ctypes.create_string_buffer(program, len(program))
    license_text = ctypes.create_string_buffer(b"Apache-2.0")
    log = ctypes.create_string_buffer(65536)
    attr = _attr(
        (0, "<I", BPF_PROG_TYPE_CGROUP_DEVICE),
        (4, "<I", len(program) // 8),
        (8, "<Q", ctypes.addressof(insns)),
        (16, "<Q", ctypes.addressof(license_text)),
        (24, "<I", 1),  # log_level
        (28, "<I", len(log)),
        (32, "<Q", ctypes.addressof(log)),
        (68, "<I", BPF_CGROUP_DEVICE),  # expected_attach_type
    )
    struct.pack_into("16s", attr, 48, b"dockyard_dev")
    try:
        return _bpf(BPF_PROG_LOAD, attr, "BPF_PROG_LOAD device filter")
    except OSError as exc:
        detail = log.value.decode(errors="replace").strip()
        raise OSError(exc.errno, f"{exc.strerror}; verifier: {detail[-500:]}") from exc


def attach(cgroup_fd: int, prog_fd: int) -> None:
    _bpf(BPF_PROG_ATTACH, _attr((0, "<I", cgroup_fd), (4, "<I", prog_fd),
                                (8, "<I", BPF_CGROUP_DEVICE), (12, "<I", BPF_F_ALLOW_MULTI)),
         "BPF_PROG_ATTACH")


def detach(cgroup_fd: int, prog_fd: int) -> None:
    _bpf(BPF_PROG_DETACH, _attr((0, "<I", cgroup_fd), (4, "<I", prog_fd),
                                (8, "<I", BPF_CGROUP_DEVICE)), "BPF_PROG_DETACH")


def attached_ids(cgroup_fd: int) -> list[int]:
    """Ids of the device programs attached directly to this cgroup."""
    ids = (ctypes.c_uint32 * 64)()
    attr = _attr((0, "<I", cgroup_fd), (4, "<I", BPF_CGROUP_DEVICE),
                 (16, "<Q", ctypes.addressof(ids)), (24, "<I", len(ids)))
    _bpf(BPF_PROG_QUERY, attr, "BPF_PROG_QUERY")
    count = struct.unpack_from("<I", attr, 24)[0]
    return list(ids[:count])


def _prog_fd_by_id(prog_id: int) -> int:
    return _bpf(BPF_PROG_GET_FD_BY_ID, _attr((0, "<I", prog_id)), "BPF_PROG_GET_FD_BY_ID")


def apply_rules(cgroup_dir: str, rules: Iterable[DeviceRule]) -> None:
    """Replace the device filter of cgroup_dir by one built from rules.

    The new program is attached before the old ones are detached, so the
    container never runs a moment without a filter.
    """
    program = assemble(list(rules))
    try:
        cgroup_fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise Unavailable(f"cannot open cgroup {cgroup_dir} for device rules: {exc}") from exc
    prog_fd = -1
    try:
        try:
            old_ids = attached_ids(cgroup_fd)
            prog_fd = load_program(program)
            attach(cgroup_fd, prog_fd)
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.EACCES):
                raise FailedPrecondition(
                    f"linux.resources.devices: loading the cgroup v2 device filter for "
                    f"{cgroup_dir} was refused ({exc}); it needs CAP_BPF/CAP_SYS_ADMIN") from exc
            raise Unavailable(
                f"linux.resources.devices: cannot install the cgroup v2 device filter on "
                f"{cgroup_dir}: {exc}") from exc
        for prog_id in old_ids:
            try:
                old_fd = _prog_fd_by_id(prog_id)
            except OSError:
                continue  # already gone
            try:
                detach(cgroup_fd, old_fd)
            except OSError:
                pass  # detached concurrently; the new filter is in place either way
            finally:
                os.close(old_fd)
    finally:
        if prog_fd >= 0:
            os.close(prog_fd)
        os.close(cgroup_fd)
