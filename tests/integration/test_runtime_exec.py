"""`exec` into a running container: args and exit codes, --env, --cwd,
--user, --process process.json, the container's namespaces and cgroup,
and refusal on a stopped container. One container serves the module.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from tests.fixtures.busybox import make_bundle, runc_binary
from tests.integration.runtime_helpers import (
    DOCKER_CAP_MASK,
    created,
    delete_reaping,
    exec_,
    new_id,
    proc_status_field,
    runc,
    state,
    wait_status,
)

pytestmark = [pytest.mark.integration, pytest.mark.requires_root]


@pytest.fixture(scope="module")
def box(busybox_rootfs, session_env):
    """(bundle, id) of a container running `sleep` for every test here."""
    import shutil

    bundle = make_bundle(busybox_rootfs, session_env, "exec")
    bundle.config["process"]["env"].append("FROM_CONFIG=yes")
    with created(bundle, session_env, "sleep", "300") as cid:
        yield bundle, cid
    shutil.rmtree(bundle.path, ignore_errors=True)


def test_exec_args_and_exit_code(box, session_env):
    _, cid = box
    r = exec_(session_env, cid, "sh", "-c", "echo $$ hello; exit 42")
    assert r.rc == 42
    pid, word = r.out.split()
    assert word == "hello" and int(pid) > 1
    assert exec_(session_env, cid, "true").rc == 0
    assert exec_(session_env, cid, "false").rc == 1


def test_exec_joins_the_container(box, session_env):
    _, cid = box
    r = exec_(session_env, cid, "sh", "-c", "hostname; ls /sys/class/net; cat /proc/1/cmdline; "
              "echo; cat /proc/self/status; env")
    assert r.rc == 0, r.err
    lines = r.out.splitlines()
    assert lines[0] == "dockyard"
    assert lines[1] == "lo"
    assert lines[2].replace("\0", " ").strip() == "sleep 300"
    assert proc_status_field(r.out, "CapEff") == DOCKER_CAP_MASK
    assert proc_status_field(r.out, "NoNewPrivs") == "1"
    assert "FROM_CONFIG=yes" in lines
    host_pid = state(session_env, cid)["pid"]
    pids = json.loads(runc(session_env, "ps", "--format", "json", cid).stdout)
    assert host_pid in pids


def test_exec_env_cwd_user(box, session_env):
    _, cid = box
    r = exec_(session_env, cid, "sh", "-c", 'echo "$FOO|$FROM_CONFIG"; pwd; id -u; id -g; '
              "grep CapEff /proc/self/status",
              opts=("--env", "FOO=bar baz", "--env", "FROM_CONFIG=overridden",
                    "--cwd", "/tmp", "--user", "1000:1000"))
    assert r.rc == 0, r.err
    lines = r.out.splitlines()
    assert lines[0] == "bar baz|overridden"
    assert lines[1] == "/tmp"
    assert lines[2:4] == ["1000", "1000"]
    assert lines[4].split()[1] == "0000000000000000"


def test_exec_process_json(box, session_env, tmp_path):
    _, cid = box
    process = {"terminal": False, "user": {"uid": 1000, "gid": 1000, "additionalGids": [10]},
               "args": ["sh", "-c", "id; pwd; echo $ONLY; umask; exit 5"],
               "env": ["PATH=/bin:/usr/bin", "ONLY=process-json"], "cwd": "/home/user",
               "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"],
                                "permitted": ["CAP_KILL"]},
               "noNewPrivileges": True, "user_umask_placeholder": None}
    process.pop("user_umask_placeholder")
    process["user"]["umask"] = 0o077
    path = tmp_path / "process.json"
    path.write_text(json.dumps(process))
    r = exec_(session_env, cid, opts=("--process", str(path)))
    assert r.rc == 5, r.err
    lines = r.out.splitlines()
    assert lines[0].startswith("uid=1000(user) gid=1000(user) groups=")
    assert "10" in lines[0].split("groups=")[1]
    assert lines[1:] == ["/home/user", "process-json", "0077"]


def test_exec_errors(box, session_env):
    _, cid = box
    missing = exec_(session_env, cid, "/no/such/thing")
    assert missing.rc != 0 and "/no/such/thing" in missing.err
    unknown = exec_(session_env, "no-such-container-" + cid, "true")
    assert unknown.rc == 1 and "does not exist" in unknown.err
    bad_user = exec_(session_env, cid, "true", opts=("--user", "alice"))
    assert bad_user.rc == 1 and "--user" in bad_user.err


def test_exec_detached_pid_file(box, session_env, tmp_path):
    _, cid = box
    pid_file = tmp_path / "exec.pid"
    # Detached: its stdio must not be a pipe we wait on.
    proc = subprocess.run([*runc_binary(), "--root", session_env.runc_root, "exec", "-d",
                           "--pid-file", str(pid_file), cid, "sleep", "30"],
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, timeout=30)
    assert proc.returncode == 0
    pid = int(pid_file.read_text())
    try:
        assert pid in json.loads(runc(session_env, "ps", "--format", "json", cid).stdout)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            assert f.read() == b"sleep\x0030\x00"
    finally:
        # It re-parented to us (the subreaper) when exec returned.
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_exec_in_stopped_container_fails(bundle, session_env):
    cid = new_id("stopped")
    with created(bundle, session_env, "true", cid=cid):
        assert wait_status(session_env, cid, "stopped")["status"] == "stopped"
        r = exec_(session_env, cid, "true")
        assert r.rc == 1
        assert "stopped" in r.err
        delete_reaping(session_env, cid)
