"""Differential test: the same bundles under Debian's runc and dockyard-runc
give the same observable results for a set of probes run inside the
container. Expected differences (pty numbers, pids other than 1) are
normalised away. Each runtime gets its own --root.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from tests.fixtures.busybox import runc_binary

pytestmark = [pytest.mark.compat, pytest.mark.integration, pytest.mark.requires_root]

RUNC = "/usr/sbin/runc"

PROBES = {
    "pid": "echo $$",
    "hostname": "hostname",
    "id": "id",
    "links": "ls /sys/class/net",
    "lo": "ip -o link show lo | sed 's/^[0-9]*: //; s/ qlen.*//'",
    "caps": "grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb):' /proc/self/status",
    "nnp": "grep NoNewPrivs: /proc/self/status",
    "seccomp": "grep ^Seccomp: /proc/self/status",
    "mounts": "grep -E ' /(proc|sys|dev|dev/pts|dev/shm|dev/mqueue) ' /proc/mounts",
    "sysw": "(echo 1 > /proc/sys/kernel/ns_last_pid) 2>/dev/null && echo writable || echo ro",
    "kcore": "[ -e /proc/kcore ] && wc -c < /proc/kcore || echo absent",
    "nofile": "ulimit -n",
    "umask": "umask",
    "cwd": "pwd",
    "env": "env | grep -v '^PWD=\\|^SHLVL=\\|^_=' | sort",
    "tty": "tty",
    "devs": "ls /dev | sort",
    "uts": "cat /proc/sys/kernel/hostname",
    "false": "false; echo $?",
}


def _script() -> str:
    return "; ".join(f"echo '== {name}'; {cmd}" for name, cmd in PROBES.items())


def _normalise(text: str) -> str:
    text = re.sub(r"/dev/pts/\d+", "/dev/pts/N", text)
    return text


@pytest.fixture
def runc_root(session_env):
    if not os.path.exists(RUNC):
        pytest.skip(f"{RUNC} is not installed (apt-get install runc)")
    root = os.path.join(session_env.base, f"debian-runc-{os.urandom(3).hex()}")
    os.makedirs(root)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _run_both(bundle, session_env, runc_root, args) -> tuple[subprocess.CompletedProcess, ...]:
    bundle.set_args(*args)
    results = []
    for name, cmd, root in (("dockyard", runc_binary(), session_env.runc_root),
                            ("runc", [RUNC], runc_root)):
        # Each runtime gets its own cgroup, as each names it from cgroupsPath.
        cid = f"diff-{name}-{os.getpid()}-{os.urandom(3).hex()}"
        base = bundle.config["linux"]["cgroupsPath"].rsplit("/", 1)[0]
        bundle.config["linux"]["cgroupsPath"] = f"{base}/{cid}"
        bundle.write()
        results.append(subprocess.run([*cmd, "--root", root, "run", "--bundle", bundle.path,
                                       cid], capture_output=True, text=True, timeout=60,
                                      stdin=subprocess.DEVNULL))
    return tuple(results)


def _sections(out: str) -> dict[str, str]:
    parts: dict[str, list[str]] = {}
    current = ""
    for line in out.splitlines():
        if line.startswith("== "):
            current = line[3:]
            parts[current] = []
        else:
            parts.setdefault(current, []).append(line)
    return {k: _normalise("\n".join(v)) for k, v in parts.items()}


def _assert_same(ours: subprocess.CompletedProcess, theirs: subprocess.CompletedProcess):
    assert theirs.returncode == ours.returncode, (ours, theirs)
    a, b = _sections(ours.stdout), _sections(theirs.stdout)
    assert a.keys() == b.keys()
    diffs = {k: (a[k], b[k]) for k in a if a[k] != b[k]}
    assert not diffs, "dockyard vs runc:\n" + "\n".join(
        f"[{k}]\n  dockyard: {x!r}\n  runc:     {y!r}" for k, (x, y) in diffs.items())


def test_default_docker_like_bundle(bundle, session_env, runc_root):
    ours, theirs = _run_both(bundle, session_env, runc_root, ["sh", "-c", _script()])
    assert ours.returncode == 0, ours.stderr
    _assert_same(ours, theirs)


def test_user_umask_cwd_rlimits_bundle(bundle, session_env, runc_root):
    process = bundle.config["process"]
    process["user"] = {"uid": 1000, "gid": 1000, "additionalGids": [10], "umask": 0o027}
    process["cwd"] = "/home/user"
    process["env"].append("EXTRA=1")
    process["rlimits"] = [{"type": "RLIMIT_NOFILE", "hard": 333, "soft": 222}]
    bundle.config["root"]["readonly"] = True
    bundle.config["hostname"] = "other"
    ours, theirs = _run_both(bundle, session_env, runc_root,
                             ["sh", "-c", _script() + "; echo '== rofs'; touch /x 2>&1; "
                              "echo '== hard'; ulimit -Hn"])
    assert ours.returncode == 0, ours.stderr
    _assert_same(ours, theirs)


@pytest.mark.parametrize("script", ["exit 3", "kill -9 $$; sleep 1 & wait; exit 4",
                                    "exec /no/such/binary"])
def test_exit_codes(bundle, session_env, runc_root, script):
    ours, theirs = _run_both(bundle, session_env, runc_root, ["sh", "-c", script])
    assert ours.returncode == theirs.returncode, (ours, theirs)


def test_missing_executable(bundle, session_env, runc_root):
    ours, theirs = _run_both(bundle, session_env, runc_root, ["/no/such/binary"])
    assert ours.returncode == theirs.returncode, (ours, theirs)
    assert "/no/such/binary" in ours.stderr and "/no/such/binary" in theirs.stderr
