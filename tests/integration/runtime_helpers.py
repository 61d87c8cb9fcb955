"""Shared helpers for the runtime integration tests: drive `dockyard-runc`
through its command line (with `--root session_env.runc_root`), run a
container and capture what it printed, keep one running for exec/pause
tests, and check that nothing of a container is left on the host.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from tests.fixtures.busybox import Bundle, runc_binary
from tests.fixtures.leakcheck import reap_zombies

CGROUP_ROOT = "/sys/fs/cgroup"
DOCKER_CAP_MASK = "00000000a80425fb"


@dataclass(frozen=True)
class Result:
    rc: int
    out: str
    err: str


def new_id(prefix: str = "c") -> str:
    return f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def runc(session_env, *args: str, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    """One dockyard-runc command under the session's state root."""
    cmd = [*runc_binary(), "--root", session_env.runc_root, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def run(bundle: Bundle, session_env, *args: str, cid: str | None = None,
        timeout: float = 30) -> Result:
    """`dockyard-runc run` the bundle (with args, when given) in the foreground."""
    if args:
        bundle.set_args(*args)
    else:
        bundle.write()
    proc = runc(session_env, "run", "--bundle", bundle.path, cid or new_id(),
                timeout=timeout, stdin=subprocess.DEVNULL)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def sh(bundle: Bundle, session_env, script: str, **kw) -> Result:
    return run(bundle, session_env, "sh", "-c", script, **kw)


def state(session_env, cid: str) -> dict:
    proc = runc(session_env, "state", cid)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def wait_status(session_env, cid: str, wanted: str, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        current = state(session_env, cid)
        if current["status"] == wanted or time.monotonic() > deadline:
            return current
        time.sleep(0.02)


@contextlib.contextmanager
def created(bundle: Bundle, session_env, *args: str, cid: str | None = None,
            start: bool = True, log: str | None = None) -> Iterator[str]:
    """A detached container (created, and started unless start=False), deleted
    with --force on the way out. Its stdout/stderr go to `log` (a host file)."""
    if args:
        bundle.set_args(*args)
    else:
        bundle.write()
    cid = cid or new_id()
    log = log or os.path.join(bundle.path, "container.log")
    # The init inherits create's stdio: a pipe would never see EOF.
    with open(log, "ab") as out:
        proc = subprocess.run([*runc_binary(), "--root", session_env.runc_root, "create",
                               "--bundle", bundle.path, cid], stdin=subprocess.DEVNULL,
                              stdout=out, stderr=out, timeout=30)
    if proc.returncode != 0:
        with open(log) as f:
            raise AssertionError(f"create {cid} failed: {f.read()}")
    try:
        if start:
            started = runc(session_env, "start", cid)
            assert started.returncode == 0, started.stderr
        yield cid
    finally:
        delete_reaping(session_env, cid)


def delete_reaping(session_env, cid: str) -> subprocess.CompletedProcess:
    """`delete --force`, reaping our zombies meanwhile.

    Processes started by `exec` outlive the exec command and re-parent to
    us (pytest is the subreaper, as a shim would be). A pid namespace's
    init does not finish dying until every process of the namespace has
    been reaped, so delete would wait for us while we wait for it.
    """
    proc = subprocess.Popen([*runc_binary(), "--root", session_env.runc_root, "delete",
                             "--force", cid], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        reap_zombies()
        time.sleep(0.01)
    out, err = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def exec_(session_env, cid: str, *args: str, opts: tuple[str, ...] = (),
          timeout: float = 30) -> Result:
    """`dockyard-runc exec [opts] cid args...`."""
    proc = runc(session_env, "exec", *opts, cid, *args, timeout=timeout,
                stdin=subprocess.DEVNULL)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def cgroup_dirs(session_env, bundle: Bundle) -> list[str]:
    """Every hierarchy's directory for the bundle's cgroupsPath that exists."""
    rel = bundle.config["linux"]["cgroupsPath"]
    if os.path.exists(os.path.join(CGROUP_ROOT, "cgroup.controllers")):
        roots = [CGROUP_ROOT]
    else:
        roots = [os.path.join(CGROUP_ROOT, n) for n in os.listdir(CGROUP_ROOT)
                 if os.path.isdir(os.path.join(CGROUP_ROOT, n))
                 and not os.path.islink(os.path.join(CGROUP_ROOT, n))]
    return [r + rel for r in roots if os.path.isdir(r + rel)]


def assert_nothing_left(session_env, bundle: Bundle, cid: str) -> None:
    assert not os.path.exists(os.path.join(session_env.runc_root, cid)), "state dir left"
    assert cgroup_dirs(session_env, bundle) == [], "cgroup left"


def proc_status_field(text: str, name: str) -> str:
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{name} not in output:\n{text}")


def mount_options(mounts_text: str, point: str) -> set[str]:
    """The options of the last mount on `point` in a /proc/mounts dump."""
    found = None
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[1] == point:
            found = fields
    assert found is not None, f"{point} not mounted:\n{mounts_text}"
    return set(found[3].split(",")) | {f"type={found[2]}"}


def sections(out: str) -> dict[str, str]:
    """Split output of a probe script that prints `== name` before each part."""
    parts: dict[str, list[str]] = {}
    current = ""
    for line in out.splitlines():
        if line.startswith("== "):
            current = line[3:].strip()
            parts[current] = []
        else:
            parts.setdefault(current, []).append(line)
    return {k: "\n".join(v) for k, v in parts.items()}


def probe_script(probes: dict[str, str]) -> str:
    return "; ".join(f"echo '== {name}'; {cmd}" for name, cmd in probes.items())
