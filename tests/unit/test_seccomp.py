"""Seccomp profile validation, Docker-profile conversion and compilation (no filter is loaded)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from dockyard import errdefs
from dockyard.runtime.linux import seccomp
from dockyard.runtime.linux.capabilities import docker_default_capabilities

PROFILE_PATH = Path("/work/shared/specs/docker-default-seccomp.json")
if not PROFILE_PATH.exists():
    PROFILE_PATH = Path(__file__).resolve().parents[3] / "shared/specs/docker-default-seccomp.json"

needs_lib = pytest.mark.skipif(seccomp._lib is None, reason="libseccomp.so.2 is not installed")


@pytest.fixture(scope="module")
def docker_profile() -> dict:
    if not PROFILE_PATH.exists():
        pytest.skip(f"Docker's default profile not found at {PROFILE_PATH}")
    return json.loads(PROFILE_PATH.read_text())


def _names(oci: dict) -> set[str]:
    return {name for rule in oci["syscalls"] for name in rule["names"]}


def _minimal(**overrides) -> dict:
    spec = {"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["getcwd"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]}
    spec.update(overrides)
    return spec


# --- Docker format -> OCI ---------------------------------------------------

def test_docker_profile_default_caps_x86_64(docker_profile):
    oci = seccomp.docker_profile_to_oci(docker_profile, docker_default_capabilities(),
                                        "x86_64", kernel_release="6.1.0")
    assert oci["defaultAction"] == "SCMP_ACT_ERRNO"
    assert oci["defaultErrnoRet"] == 1
    assert oci["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    names = _names(oci)
    assert {"read", "getpid", "arch_prctl", "chroot", "ptrace"} <= names
    # CAP_SYS_ADMIN-only calls stay out; the masked clone rule and clone3 ENOSYS come in.
    assert not {"unshare", "mount", "bpf", "reboot", "keyctl", "add_key"} & names
    assert not {"s390_runtime_instr", "riscv_flush_icache", "breakpoint"} & names
    clone_rules = [r for r in oci["syscalls"] if r["names"] == ["clone"]]
    assert clone_rules == [{"names": ["clone"], "action": "SCMP_ACT_ALLOW", "args": [
        {"index": 0, "value": 2114060288, "op": "SCMP_CMP_MASKED_EQ"}]}]
    assert {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38} in oci["syscalls"]
    assert "includes" not in json.dumps(oci) and "archMap" not in oci


def test_docker_profile_with_sys_admin(docker_profile):
    caps = docker_default_capabilities() + ["SYS_ADMIN"]
    oci = seccomp.docker_profile_to_oci(docker_profile, caps, "amd64", kernel_release="6.1.0")
    names = _names(oci)
    assert {"unshare", "mount", "setns", "clone3"} <= names
    assert all(r.get("args") is None for r in oci["syscalls"] if r["names"] == ["clone"])
    assert not any(r.get("errnoRet") == 38 for r in oci["syscalls"])


def test_docker_profile_arches_and_min_kernel(docker_profile):
    oci = seccomp.docker_profile_to_oci(docker_profile, [], "aarch64", kernel_release="4.4.0")
    assert oci["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    names = _names(oci)
    assert {"breakpoint", "arm_fadvise64_64"} <= names
    assert "arch_prctl" not in names
    assert "ptrace" not in names  # includes.minKernel 4.8
    s390 = seccomp.docker_profile_to_oci(docker_profile, [], "s390x", kernel_release="5.10")
    clone = [r for r in s390["syscalls"] if r["names"] == ["clone"]]
    assert clone[0]["args"][0]["index"] == 1


def test_docker_profile_unknown_arch(docker_profile):
    with pytest.raises(errdefs.InvalidArgument, match="sparc"):
        seccomp.docker_profile_to_oci(docker_profile, [], "sparc")


# --- validation ---------------------------------------------------------------

@pytest.mark.parametrize(("mutate", "error", "message"), [
    (lambda s: s["syscalls"].append({"names": ["read"], "action": "SCMP_ACT_FOO"}),
     errdefs.InvalidArgument,
     re.escape('linux.seccomp.syscalls[1].action: unknown action "SCMP_ACT_FOO"')),
    (lambda s: s.update(defaultAction="SCMP_ACT_NOPE"),
     errdefs.InvalidArgument, "linux.seccomp.defaultAction: unknown action"),
    (lambda s: s["syscalls"][0].update(args=[{"index": 6, "value": 0, "op": "SCMP_CMP_EQ"}]),
     errdefs.InvalidArgument, r"linux.seccomp.syscalls\[0\].args\[0\].index"),
    (lambda s: s["syscalls"][0].update(args=[{"index": 0, "value": 0, "op": "SCMP_CMP_XX"}]),
     errdefs.InvalidArgument, r'syscalls\[0\].args\[0\].op: unknown operator "SCMP_CMP_XX"'),
    (lambda s: s["syscalls"][0].update(args=[{"index": 0, "value": -1, "op": "SCMP_CMP_EQ"}]),
     errdefs.InvalidArgument, r"args\[0\].value"),
    (lambda s: s.update(architectures=["SCMP_ARCH_X86_64", "SCMP_ARCH_VAX"]),
     errdefs.InvalidArgument, r'architectures\[1\]: unknown architecture "SCMP_ARCH_VAX"'),
    (lambda s: s.update(flags=["SECCOMP_FILTER_FLAG_BOGUS"]),
     errdefs.InvalidArgument, r"flags\[0\]: unknown flag"),
    (lambda s: s.update(flags=["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]),
     errdefs.NotImplementedFeature, r"flags\[0\]"),
    (lambda s: s.update(listenerPath="/run/seccomp.sock"),
     errdefs.NotImplementedFeature, "linux.seccomp.listenerPath"),
    (lambda s: s["syscalls"][0].update(action="SCMP_ACT_NOTIFY", errnoRet=None),
     errdefs.NotImplementedFeature, r"syscalls\[0\].action: SCMP_ACT_NOTIFY"),
    (lambda s: s["syscalls"][0].update(action="SCMP_ACT_ALLOW"),
     errdefs.InvalidArgument, r"syscalls\[0\].errnoRet"),
    (lambda s: s["syscalls"][0].update(errnoRet=70000),
     errdefs.InvalidArgument, r"syscalls\[0\].errnoRet"),
    (lambda s: s["syscalls"][0].update(names=[]),
     errdefs.InvalidArgument, r"syscalls\[0\].names"),
])
def test_invalid_specs_name_the_field(mutate, error, message):
    spec = _minimal()
    mutate(spec)
    with pytest.raises(error, match=message):
        seccomp.parse_seccomp(spec)


def test_parse_encodes_actions():
    config = seccomp.parse_seccomp({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [
            {"names": ["a"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
            {"names": ["b"], "action": "SCMP_ACT_TRACE", "errnoRet": 7},
            {"names": ["c"], "action": "SCMP_ACT_KILL_PROCESS"},
            {"names": ["d"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 1, "value": 3, "valueTwo": 2, "op": "SCMP_CMP_MASKED_EQ"}]},
        ]})
    assert config.default_action == 0x00050001  # ERRNO(EPERM) when defaultErrnoRet is absent
    assert [r.action for r in config.rules] == [0x00050026, 0x7FF00007, 0x80000000, 0x7FFF0000]
    assert config.rules[3].args == (seccomp.ArgCondition(1, 7, 3, 2),)


# --- compilation (libseccomp, nothing loaded) ---------------------------------

@needs_lib
def test_compile_docker_default(docker_profile):
    oci = seccomp.docker_profile_to_oci(docker_profile, docker_default_capabilities())
    with seccomp.compile_filter(oci) as compiled:
        bpf = compiled.export_bpf()
        # Each BPF instruction is 8 bytes; the Docker profile yields hundreds.
        assert len(bpf) % 8 == 0 and len(bpf) > 8 * 100
        assert "read" not in compiled.skipped_syscalls


@needs_lib
def test_unknown_syscalls_are_skipped():
    spec = _minimal()
    spec["syscalls"].append({"names": ["no_such_syscall_xyz", "getpid"],
                             "action": "SCMP_ACT_ERRNO"})
    with seccomp.compile_filter(spec) as compiled:
        assert compiled.skipped_syscalls == ("no_such_syscall_xyz",)
        assert compiled.export_bpf()


@needs_lib
def test_args_and_flags_compile():
    spec = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
        "flags": ["SECCOMP_FILTER_FLAG_LOG"],
        "syscalls": [
            # two conditions on the same argument: alternatives (two rules)
            {"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
             "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                      {"index": 0, "value": 2, "op": "SCMP_CMP_EQ"}]},
            # conditions on distinct arguments: all must hold (one rule)
            {"names": ["socket"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 0, "value": 16, "op": "SCMP_CMP_EQ"},
                      {"index": 1, "value": 0xF, "valueTwo": 3, "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["getppid"], "action": "SCMP_ACT_LOG"},
        ],
    }
    with seccomp.compile_filter(spec) as compiled:
        assert len(compiled.export_bpf()) > 0


@needs_lib
def test_same_action_as_default_is_ignored():
    spec = {"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}
    with seccomp.compile_filter(spec) as compiled:
        assert compiled.export_bpf()


@needs_lib
def test_compile_does_not_mutate_input(docker_profile):
    oci = seccomp.docker_profile_to_oci(docker_profile, [])
    before = copy.deepcopy(oci)
    seccomp.compile_filter(oci).release()
    assert oci == before


@needs_lib
def test_released_filter_refuses_use():
    compiled = seccomp.compile_filter(_minimal())
    compiled.release()
    compiled.release()  # idempotent
    with pytest.raises(errdefs.FailedPrecondition):
        compiled.export_bpf()
