"""ctr's task commands against dockyard-containerd and, where installed, Debian's
containerd 1.6 (same assertions for both): run --rm (output, exit code), run -d,
tasks ls/exec/ps/pause/resume/kill/delete/metrics, and /tasks/exit in ctr events.
"""

from __future__ import annotations

import os
import time
import uuid

import pytest

# dockyard-containerd keeps one spare shim started ahead (see containerd/tasks.py);
# its pid changes with every task, which the per-test leak checker would report.
# Daemons started by this session run without it; test_spare_shim turns it on.

pytestmark = [pytest.mark.compat, pytest.mark.integration, pytest.mark.requires_root]

IMAGE = "docker.io/library/busybox:latest"


@pytest.fixture
def daemon(backend, busybox_docker_archive):
    if not backend.extra.get("busybox-imported"):
        r = backend.ctr("images", "import", busybox_docker_archive)
        assert r.returncode == 0, r.stderr
        backend.extra["busybox-imported"] = True
    made: list[str] = []
    backend.extra["made"] = made
    yield backend
    for cid in made:
        backend.ctr("tasks", "kill", "-s", "SIGKILL", cid)
        for _ in range(50):
            if backend.ctr("tasks", "delete", cid).returncode == 0 or \
                    "not found" in backend.ctr("tasks", "ls").stdout:
                break
            time.sleep(0.05)
        backend.ctr("containers", "rm", cid)


def _new_id(daemon, prefix: str = "t") -> tuple[str, list[str]]:
    cid = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    daemon.extra["made"].append(cid)
    env = os.environ.get("PYTEST_XDIST_WORKER", "")
    return cid, ["--cgroup", f"/dyt{os.getpid() % 100000}{env}/{cid}"]


def _status(daemon, cid: str) -> str:
    for line in daemon.ctr("tasks", "ls").stdout.splitlines()[1:]:
        fields = line.split()
        if fields and fields[0] == cid:
            return fields[2]
    return ""


def test_run_rm_output_and_exit_code(daemon):
    cid, cgroup = _new_id(daemon)
    r = daemon.ctr("run", "--rm", *cgroup, IMAGE, cid, "sh", "-c", "echo hello; exit 7")
    assert r.returncode == 7, r.stderr
    assert r.stdout == "hello\n"
    assert daemon.ctr("containers", "ls", "-q").stdout.split().count(cid) == 0


def test_run_rm_stdin(daemon):
    cid, cgroup = _new_id(daemon)
    r = daemon.ctr("run", "--rm", *cgroup, IMAGE, cid, "sh", "-c", "read x; echo got $x",
                   input="word\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "got word\n"


def test_detached_lifecycle(daemon):
    cid, cgroup = _new_id(daemon)
    r = daemon.ctr("run", "-d", *cgroup, IMAGE, cid, "sleep", "1000")
    assert r.returncode == 0, r.stderr
    assert _status(daemon, cid) == "RUNNING"

    r = daemon.ctr("tasks", "exec", "--exec-id", "e1", cid, "sh", "-c", "echo in-exec; exit 3")
    assert r.returncode == 3, r.stderr
    assert r.stdout == "in-exec\n"

    r = daemon.ctr("tasks", "ps", cid)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) >= 2

    assert daemon.ctr("tasks", "pause", cid).returncode == 0
    assert _status(daemon, cid) == "PAUSED"
    assert daemon.ctr("tasks", "resume", cid).returncode == 0
    assert _status(daemon, cid) == "RUNNING"

    r = daemon.ctr("tasks", "metrics", cid)
    assert r.returncode == 0, r.stderr
    assert "pids.current" in r.stdout

    r = daemon.ctr("tasks", "delete", cid)
    assert r.returncode != 0 and "running" in r.stderr

    assert daemon.ctr("tasks", "kill", "-s", "SIGKILL", cid).returncode == 0
    for _ in range(100):
        if _status(daemon, cid) == "STOPPED":
            break
        time.sleep(0.02)
    assert _status(daemon, cid) == "STOPPED"
    r = daemon.ctr("tasks", "delete", cid)
    assert r.returncode == 0, r.stderr
    assert _status(daemon, cid) == ""
    assert daemon.ctr("containers", "rm", cid).returncode == 0


def test_kill_all(daemon):
    cid, cgroup = _new_id(daemon)
    assert daemon.ctr("run", "-d", *cgroup, IMAGE, cid, "sleep", "1000").returncode == 0
    r = daemon.ctr("tasks", "kill", "-a", "-s", "SIGKILL", cid)
    assert r.returncode == 0, r.stderr
    for _ in range(100):
        if _status(daemon, cid) == "STOPPED":
            break
        time.sleep(0.02)
    assert _status(daemon, cid) == "STOPPED"


def test_unknown_task_errors(daemon):
    r = daemon.ctr("tasks", "kill", "no-such-task-x")
    assert r.returncode != 0 and "not found" in r.stderr


def test_events_show_task_exit(daemon):
    cid, cgroup = _new_id(daemon)
    events = daemon.ctr_popen("events")
    try:
        time.sleep(0.3)
        r = daemon.ctr("run", "--rm", *cgroup, IMAGE, cid, "true")
        assert r.returncode == 0, r.stderr
        time.sleep(0.3)
    finally:
        events.terminate()
        out, _ = events.communicate(timeout=10)
    lines = [line for line in out.splitlines() if cid in line]
    topics = [word for line in lines for word in line.split()[:6] if word.startswith("/")]
    for topic in ("/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"):
        assert topic in topics, out


def test_run_with_log_uri(daemon, tmp_path):
    cid, cgroup = _new_id(daemon)
    log = tmp_path / "out.log"
    r = daemon.ctr("run", "--rm", "--log-uri", f"file://{log}", *cgroup, IMAGE, cid,
                   "sh", "-c", "echo to-log; echo err-log >&2")
    assert r.returncode == 0, r.stderr
    assert sorted(log.read_text().split()) == ["err-log", "to-log"]


def test_runc_binary_option(daemon):
    if daemon.name != "dockyard" or not os.access("/usr/sbin/runc", os.X_OK):
        pytest.skip("the external-runtime selection is dockyard's; needs runc")
    cid, cgroup = _new_id(daemon)
    r = daemon.ctr("run", "--rm", "--runc-binary", "/usr/sbin/runc", *cgroup, IMAGE, cid,
                   "sh", "-c", "echo via-runc; exit 4")
    assert r.returncode == 4, r.stderr
    assert r.stdout == "via-runc\n"


def _mounts_under(path: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(path)]


def test_task_on_removed_snapshot_fails_and_changes_nothing(daemon):
    cid, _ = _new_id(daemon, "nosnap")
    r = daemon.ctr("containers", "create", IMAGE, cid, "true")
    assert r.returncode == 0, r.stderr
    r = daemon.ctr("snapshots", "rm", cid)
    assert r.returncode == 0, r.stderr
    r = daemon.ctr("tasks", "start", cid)
    assert r.returncode != 0
    assert "not found" in r.stderr and cid in r.stderr
    assert _status(daemon, cid) == ""
    assert cid in daemon.ctr("containers", "ls", "-q").stdout.split()


def test_task_with_invalid_spec_fails_cleanly(daemon):
    """A container whose spec cannot run: a clear error, no task, nothing mounted."""
    import json

    from google.protobuf import field_mask_pb2

    from dockyard.containerd.api.services.containers.v1 import containers_pb2, containers_pb2_grpc

    cid, _ = _new_id(daemon, "badspec")
    r = daemon.ctr("containers", "create", IMAGE, cid, "true")
    assert r.returncode == 0, r.stderr
    md = (("containerd-namespace", "dyt"),)
    with daemon.channel() as channel:
        stub = containers_pb2_grpc.ContainersStub(channel)
        container = stub.Get(containers_pb2.GetContainerRequest(id=cid), metadata=md).container
        spec = json.loads(container.spec.value)
        spec["process"]["args"] = []
        container.spec.value = json.dumps(spec).encode()
        stub.Update(containers_pb2.UpdateContainerRequest(
            container=container, update_mask=field_mask_pb2.FieldMask(paths=["spec"])),
            metadata=md)
    r = daemon.ctr("tasks", "start", cid)
    assert r.returncode != 0
    assert "args" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert _status(daemon, cid) == ""
    if daemon.name == "dockyard":
        assert "process.args" in r.stderr
        assert _mounts_under(daemon.state) == []
