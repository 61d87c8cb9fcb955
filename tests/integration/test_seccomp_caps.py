"""Seccomp, capabilities and rlimits applied in a forked child on the real kernel.

Every test forks: the filter, capability drops and limits are irreversible, so
they only ever touch a child that reports back over a pipe and exits.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dockyard import errdefs
from dockyard.linux import syscalls
from dockyard.runtime.linux import capabilities as caps
from dockyard.runtime.linux import rlimits, seccomp

pytestmark = [pytest.mark.integration, pytest.mark.requires_root]

PROFILE_PATH = Path("/work/shared/specs/docker-default-seccomp.json")
if not PROFILE_PATH.exists():
    PROFILE_PATH = Path(__file__).resolve().parents[3] / "shared/specs/docker-default-seccomp.json"

needs_lib = pytest.mark.skipif(seccomp._lib is None, reason="libseccomp.so.2 is not installed")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

_SYS_ADD_KEY = 248
_SYS_KEYCTL = 250
_SYS_PERSONALITY = 135
_KEYCTL_GET_KEYRING_ID = 0
_KEY_SPEC_PROCESS_KEYRING = -2
_NOBODY = 1000


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def run_in_child(body: Callable[[], Any]) -> tuple[Any, int]:
    """Fork, run ``body`` in the child, return (its JSON result, wait status).

    The child reports {"ok": value} or {"error": text}; an empty report means it
    died (e.g. killed by a seccomp action), which the wait status shows.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            try:
                report = {"ok": body()}
            except BaseException as exc:
                report = {"error": f"{type(exc).__name__}: {exc}"}
            os.write(write_end, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        raw = _read_all(read_end)
    finally:
        _, status = os.waitpid(pid, 0)
    result = json.loads(raw) if raw else None
    if result is not None and "error" in result:
        pytest.fail(f"child failed: {result['error']}")
    return (result or {}).get("ok"), status


def _errno_of(call: Callable[[], Any]) -> int:
    try:
        call()
    except OSError as exc:
        return exc.errno
    return 0


def _raw_syscall(number: int, *args: int) -> int:
    libc = syscalls.libc()
    ctypes.set_errno(0)
    result = libc.syscall(ctypes.c_long(number), *[ctypes.c_long(a) for a in args])
    return ctypes.get_errno() if result == -1 else 0


def _status_field(name: str, path: str = "/proc/self/status") -> str:
    match = re.search(rf"^{name}:\s*(\S+)", Path(path).read_text(), re.M)
    assert match, f"{name} missing from {path}"
    return match.group(1)


@pytest.fixture(scope="module")
def docker_oci() -> dict:
    if not PROFILE_PATH.exists():
        pytest.skip(f"Docker's default profile not found at {PROFILE_PATH}")
    profile = json.loads(PROFILE_PATH.read_text())
    return seccomp.docker_profile_to_oci(profile, caps.docker_default_capabilities(),
                                         arch=os.uname().machine)


# --- seccomp ------------------------------------------------------------------

@needs_root
@needs_lib
def test_docker_default_profile_denies_namespaces_and_keys(docker_oci):
    compiled = seccomp.compile_filter(docker_oci)  # before fork, as the runtime does
    assert len(compiled.export_bpf()) > 0

    def child() -> dict:
        compiled.load()
        return {
            "pid": os.getpid(),
            "unshare": _errno_of(lambda: syscalls.unshare(syscalls.CLONE_NEWUSER)),
            "keyctl": _raw_syscall(_SYS_KEYCTL, _KEYCTL_GET_KEYRING_ID,
                                   _KEY_SPEC_PROCESS_KEYRING, 0),
            "add_key": _raw_syscall(_SYS_ADD_KEY, 0, 0, 0, 0, 0),
            "personality_query": _raw_syscall(_SYS_PERSONALITY, 0xFFFFFFFF),
            "personality_set": _raw_syscall(_SYS_PERSONALITY, 0x0400000),
            "getcwd": os.getcwd(),
        }

    try:
        result, status = run_in_child(child)
    finally:
        compiled.release()
    assert os.waitstatus_to_exitcode(status) == 0
    assert result["pid"] > 0
    assert result["unshare"] == errno.EPERM
    assert result["keyctl"] == errno.EPERM
    assert result["add_key"] == errno.EPERM
    assert result["personality_query"] == 0  # arg 0 == 0xffffffff is allowed
    assert result["personality_set"] == errno.EPERM


@needs_root
@needs_lib
def test_custom_errno_and_kill_process():
    spec = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["getcwd"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS},
            {"names": ["getppid"], "action": "SCMP_ACT_KILL_PROCESS"},
            # AND across two arguments: only setpriority(PRIO_PROCESS, 0, 19) is refused
            {"names": ["setpriority"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EACCES,
             "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},
                      {"index": 2, "value": 19, "op": "SCMP_CMP_EQ"}]},
        ],
    }
    with seccomp.compile_filter(spec) as compiled:
        def child() -> dict:
            compiled.load()
            return {
                "getcwd": _errno_of(os.getcwd),
                "nice_19": _errno_of(lambda: os.setpriority(os.PRIO_PROCESS, 0, 19)),
                "nice_18": _errno_of(lambda: os.setpriority(os.PRIO_PROCESS, 0, 18)),
            }

        result, status = run_in_child(child)
        assert result == {"getcwd": errno.ENOSYS, "nice_19": errno.EACCES, "nice_18": 0}

        def killed() -> None:
            compiled.load()
            os.getppid()

        result, status = run_in_child(killed)
    assert result is None
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS


@needs_root
@needs_lib
def test_load_without_privilege_needs_no_new_privs():
    spec = {"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["getcwd"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]}
    with seccomp.compile_filter(spec) as compiled:
        def child() -> dict:
            os.setgroups([])
            os.setgid(_NOBODY)
            os.setuid(_NOBODY)  # all capabilities gone
            try:
                compiled.load()
                refused = ""
            except errdefs.FailedPrecondition as exc:
                refused = str(exc)
            syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1)
            compiled.load()
            return {"refused": refused, "getcwd": _errno_of(os.getcwd)}

        result, _ = run_in_child(child)
    assert "CAP_SYS_ADMIN" in result["refused"]
    assert result["getcwd"] == errno.ENOSYS


# --- capabilities ---------------------------------------------------------------

@needs_root
def test_docker_default_caps_as_root():
    spec = {name: caps.docker_default_capabilities()
            for name in ("bounding", "effective", "inheritable", "permitted", "ambient")}
    parsed = caps.Capabilities.from_oci(spec)

    def child() -> dict:
        caps.apply_capabilities(parsed)
        return {name: _status_field(name)
                for name in ("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb")}

    result, status = run_in_child(child)
    assert os.waitstatus_to_exitcode(status) == 0
    assert result == dict.fromkeys(("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb"),
                                   "00000000a80425fb")


@needs_root
def test_ambient_cap_survives_execve_as_non_root():
    shell = "/bin/sh" if os.access("/bin/sh", os.X_OK) else shutil.which("busybox")
    if not shell:
        pytest.skip("no /bin/sh or busybox to execve")
    argv = [shell, "-c", "grep CapEff /proc/self/status"]
    if shell.endswith("busybox"):
        argv = [shell, "sh", "-c", "grep CapEff /proc/self/status"]
    net_bind = ["CAP_NET_BIND_SERVICE"]
    parsed = caps.Capabilities.from_oci({
        "bounding": caps.docker_default_capabilities(), "effective": net_bind,
        "permitted": net_bind, "inheritable": net_bind, "ambient": net_bind})

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            os.dup2(write_end, 1)
            os.dup2(write_end, 2)
            caps.apply_capabilities(parsed, keep_caps_for_setuid=True)
            os.setgroups([])
            os.setgid(_NOBODY)
            os.setuid(_NOBODY)
            caps.finish_after_setuid(parsed)
            os.execv(argv[0], argv)
        except BaseException as exc:
            os.write(2, f"child failed: {exc}".encode())
        finally:
            os._exit(127)
    os.close(write_end)
    try:
        output = _read_all(read_end).decode()
    finally:
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, output
    assert output.split() == ["CapEff:", "0000000000000400"]


@needs_root
def test_capset_without_keepcaps_fails_cleanly():
    parsed = caps.Capabilities.from_oci({"effective": ["CAP_KILL"], "permitted": ["CAP_KILL"],
                                         "bounding": ["CAP_KILL"]})

    def child() -> str:
        caps.drop_bounding(parsed)
        os.setuid(_NOBODY)  # no keepcaps: permitted is cleared
        try:
            caps.apply_sets(parsed)
        except errdefs.FailedPrecondition as exc:
            return str(exc)
        return ""

    result, _ = run_in_child(child)
    assert "CAP_KILL" in result


# --- rlimits ------------------------------------------------------------------

def _limits_line(text: str, label: str) -> list[str]:
    for line in text.splitlines():
        if line.startswith(label):
            return line[len(label):].split()
    raise AssertionError(f"{label} missing from /proc/self/limits")


@needs_root
def test_rlimit_nofile_applied():
    limits = rlimits.parse_rlimits([{"type": "RLIMIT_NOFILE", "hard": 2048, "soft": 1024}])

    def child() -> dict:
        rlimits.apply_rlimits(limits)
        nofile = _limits_line(Path("/proc/self/limits").read_text(), "Max open files")
        os.setuid(_NOBODY)  # drops CAP_SYS_RESOURCE if the host granted it
        try:
            rlimits.apply_rlimits(
                rlimits.parse_rlimits([{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 1024}]))
            raise_error = ""
        except errdefs.FailedPrecondition as exc:
            raise_error = str(exc)
        return {"nofile": nofile, "raise_error": raise_error}

    result, _ = run_in_child(child)
    assert result["nofile"][:2] == ["1024", "2048"]
    assert "RLIMIT_NOFILE" in result["raise_error"]


@needs_root
def test_rlimit_prlimit_on_other_process():
    limits = rlimits.parse_rlimits([{"type": "RLIMIT_CORE", "hard": 4096, "soft": 0}])
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(write_end)
        os.read(read_end, 1)  # wait until the parent has set the limit
        os._exit(0)
    os.close(read_end)
    try:
        rlimits.apply_rlimits(limits, pid=pid)
        text = Path(f"/proc/{pid}/limits").read_text()
        assert _limits_line(text, "Max core file size")[:2] == ["0", "4096"]
    finally:
        os.close(write_end)
        os.waitpid(pid, 0)
