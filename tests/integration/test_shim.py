"""dockyard-shim on the real kernel, without gRPC: a busybox bundle run through
a shim (built-in runtime, and runc where installed), exit statuses, exec, logs
(file:// and json-file with rotation), a pty, FIFOs, RSS, a launcher killed
with SIGKILL. Then through dockyard-containerd with ctr: the crash test (20
tasks survive a SIGKILL of the daemon, the numbered log has no gap) and 50
tasks started at once from parallel clients with nothing leaked.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

# dockyard-containerd keeps one spare shim started ahead (see containerd/tasks.py);
# its pid changes with every task, which the per-test leak checker would report.
# Daemons started by this session run without it; test_spare_shim turns it on.
from dockyard.shim.client import ShimClient, ShimConfig, launch, read_exit

pytestmark = [pytest.mark.integration, pytest.mark.requires_root]

RUNC = "/usr/sbin/runc"


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)  # ours: pytest is the subreaper
            if done:
                return True
        except ChildProcessError:
            if not os.path.exists(f"/proc/{pid}"):
                return True
        time.sleep(0.01)
    return False


class ShimUnderTest:
    def __init__(self, bundle, runtime: str = "builtin") -> None:
        self.bundle = bundle
        self.dir = tempfile.mkdtemp(prefix="shim-", dir="/tmp")
        self.config = ShimConfig(
            namespace="test", id=f"s{os.getpid()}-{uuid.uuid4().hex[:6]}", bundle=bundle.path,
            state_dir=os.path.join(self.dir, "state"), address=os.path.join(self.dir, "s.sock"),
            runtime=runtime, runtime_root=os.path.join(self.dir, "runtime"))
        self.pid = 0

    def start(self) -> ShimClient:
        self.pid = launch(self.config)
        return self.client()

    def client(self) -> ShimClient:
        return ShimClient(self.config.address, timeout=30)

    def close(self) -> None:
        if self.pid and os.path.exists(self.config.address):
            try:
                with self.client() as c:
                    try:
                        c.call("kill", signal=9, all=True)
                    except Exception:  # noqa: BLE001 - already stopped
                        pass
                    for _ in range(200):
                        if c.call("state")["status"] == "stopped":
                            break
                        time.sleep(0.01)
                    c.call("delete")
                    c.call("shutdown", force=True)
            except Exception:  # noqa: BLE001 - fall through to the kill by pid
                pass
        if self.pid and not _gone(self.pid, 5):
            os.kill(self.pid, signal.SIGKILL)
            _gone(self.pid)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def shim(bundle):
    made: list[ShimUnderTest] = []

    def make(*args: str, runtime: str = "builtin", terminal: bool = False) -> ShimUnderTest:
        bundle.config["process"]["args"] = list(args)
        bundle.config["process"]["terminal"] = terminal
        bundle.write()
        s = ShimUnderTest(bundle, runtime)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def _runtimes() -> list:
    return ["builtin", pytest.param(RUNC, marks=pytest.mark.skipif(
        not os.access(RUNC, os.X_OK), reason="runc not installed"))]


@pytest.mark.parametrize("runtime", _runtimes())
def test_run_exit_status_and_log_file(shim, runtime):
    s = shim("sh", "-c", "echo out; echo err >&2; exit 3", runtime=runtime)
    log = os.path.join(s.dir, "out.log")
    with s.start() as c:
        pid = c.call("create", stdout=f"file://{log}", stderr=f"file://{log}")["pid"]
        assert c.call("state")["status"] == "created"
        assert c.call("start")["pid"] == pid
        result = c.call("wait")
    assert result["exit_status"] == 3
    with open(log) as f:
        assert sorted(f.read().split()) == ["err", "out"]
    record = read_exit(s.config.state_dir)
    assert record["exit_status"] == 3 and record["pid"] == pid and record["exited_at"] > 0


def test_exec_pids_and_kill(shim):
    s = shim("sleep", "1000")
    log = os.path.join(s.dir, "exec.log")
    with s.start() as c:
        init = c.call("create")["pid"]
        c.call("start")
        c.call("exec", exec_id="e1", process={"args": ["sh", "-c", "echo exec-out; exit 5"],
                                              "cwd": "/", "env": ["PATH=/bin:/usr/bin"]},
               stdout=f"file://{log}")
        exec_pid = c.call("start", exec_id="e1")["pid"]
        assert exec_pid != init
        assert c.call("wait", exec_id="e1")["exit_status"] == 5
        assert c.call("delete", exec_id="e1")["exit_status"] == 5
        assert init in [p["pid"] for p in c.call("pids")]
        c.call("kill", signal=9)
        assert c.call("wait")["exit_status"] == 137
        assert c.call("state")["status"] == "stopped"
    with open(log) as f:
        assert f.read() == "exec-out\n"


def test_fifo_stdio_and_close_io(shim):
    s = shim("sh", "-c", "read line; echo got:$line; cat; echo done")
    stdin, stdout = (os.path.join(s.dir, n) for n in ("in", "out"))
    os.mkfifo(stdin)
    os.mkfifo(stdout)
    reader = os.open(stdout, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with s.start() as c:
            c.call("create", stdin=stdin, stdout=stdout)
            c.call("start")
            writer = os.open(stdin, os.O_WRONLY)
            os.write(writer, b"hello\nrest\n")
            os.close(writer)
            c.call("close_io")
            assert c.call("wait")["exit_status"] == 0
        os.set_blocking(reader, True)
        data = b""
        while chunk := os.read(reader, 4096):  # EOF: the shim closed the FIFO
            data += chunk
    finally:
        os.close(reader)
    assert data == b"got:hello\nrest\ndone\n"


def test_output_not_blocked_without_reader(shim):
    """200 KiB into a FIFO nobody reads: the container still finishes."""
    s = shim("sh", "-c", "dd if=/dev/zero bs=1024 count=200 2>/dev/null; exit 0")
    stdout = os.path.join(s.dir, "out")
    os.mkfifo(stdout)
    with s.start() as c:
        c.call("create", stdout=stdout)
        c.call("start")
        assert c.call("wait")["exit_status"] == 0


def test_pty_and_resize(shim):
    s = shim("sh", "-c", "sleep 0.3; tty; stty size", terminal=True)
    log = os.path.join(s.dir, "tty.log")
    with s.start() as c:
        c.call("create", stdout=f"file://{log}", terminal=True)
        c.call("resize", width=100, height=30)
        c.call("start")
        assert c.call("wait")["exit_status"] == 0
    with open(log) as f:
        text = f.read()
    assert "/dev/pts/" in text
    assert "30 100" in text


def test_json_file_log_rotation(shim):
    s = shim("sh", "-c", "i=0; while [ $i -lt 300 ]; do echo line-$i; i=$((i+1)); done")
    path = os.path.join(s.dir, "logs", "c-json.log")
    with s.start() as c:
        c.call("create", stdout=f"json-file://{path}?max-size=4k&max-file=3",
               stderr=f"json-file://{path}?max-size=4k&max-file=3")
        c.call("start")
        assert c.call("wait")["exit_status"] == 0
    files = sorted(f for f in os.listdir(os.path.dirname(path)))
    assert files == ["c-json.log", "c-json.log.1", "c-json.log.2"]
    lines = []
    for name in ("c-json.log.2", "c-json.log.1", "c-json.log"):
        with open(os.path.join(os.path.dirname(path), name)) as f:
            for raw in f:
                record = json.loads(raw)
                assert record["stream"] == "stdout" and record["time"].endswith("Z")
                lines.append(record["log"])
        assert os.path.getsize(os.path.join(os.path.dirname(path), name)) <= 4096
    numbers = [int(line.strip().split("-")[1]) for line in lines]
    assert numbers == list(range(numbers[0], 300))  # newest kept, no gap


def test_shim_rss_under_budget(shim):
    s = shim("sleep", "1000")
    with s.start() as c:
        c.call("create")
        c.call("start")
        time.sleep(0.2)
        rss = _rss_kib(s.pid)
    print(f"shim VmRSS {rss} KiB")
    assert rss <= 12 * 1024


def test_survives_sigkill_of_its_launcher(shim):
    """The shim's launcher (standing in for the daemon) dies by SIGKILL while the
    container runs: the container keeps running, and its exit is recorded."""
    s = shim("sh", "-c", "sleep 0.5; exit 9")
    script = (
        "import sys, time\n"
        "from dockyard.shim.client import ShimConfig, launch, ShimClient\n"
        f"cfg = ShimConfig(**{s.config.__dict__!r})\n"
        "pid = launch(cfg)\n"
        "c = ShimClient(cfg.address)\n"
        "c.call('create'); c.call('start')\n"
        "print(pid, flush=True)\n"
        "time.sleep(60)\n")
    launcher = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                                text=True, cwd=os.path.dirname(os.path.dirname(
                                    os.path.dirname(os.path.abspath(__file__)))))
    try:
        s.pid = int(launcher.stdout.readline())
    finally:
        launcher.kill()
        launcher.wait()
    with s.client() as c:
        assert c.call("state")["status"] == "running"
        assert c.call("wait")["exit_status"] == 9
    assert read_exit(s.config.state_dir)["exit_status"] == 9


# ------------------------------------------------------- through the daemon

CTR = "/usr/bin/ctr"
IMAGE = "docker.io/library/busybox:latest"


@pytest.fixture
def own_daemon(session_env, busybox_docker_archive):
    if not os.access(CTR, os.X_OK):
        pytest.skip("ctr not installed (Debian package containerd)")
    from tests.fixtures.containerd import _stop, start_dockyard

    name = f"dyc-{uuid.uuid4().hex[:6]}"
    daemon = start_dockyard(session_env.base, name)
    try:
        r = daemon.ctr("images", "import", busybox_docker_archive)
        assert r.returncode == 0, r.stderr
        yield daemon
    finally:
        _stop(daemon)
        shutil.rmtree(os.path.join(session_env.base, name), ignore_errors=True)


def _task_status(daemon) -> dict[str, str]:
    r = daemon.ctr("tasks", "ls")
    assert r.returncode == 0, r.stderr
    return {line.split()[0]: line.split()[2] for line in r.stdout.splitlines()[1:] if line}


def _cgroup_args(session_env, name: str) -> list[str]:
    return ["--cgroup", f"{session_env.cgroup_parent}/{name}"]


def test_crash_recovery_20_tasks(own_daemon, session_env, tmp_path):
    from tests.fixtures.containerd import restart

    log = tmp_path / "numbers.log"
    counter = ("i=0; while true; do echo $i; i=$((i+1)); usleep 10000; done")
    ids = [f"crash{n}" for n in range(20)]
    r = own_daemon.ctr("run", "-d", "--log-uri", f"file://{log}",
                       *_cgroup_args(session_env, ids[0]), IMAGE, ids[0], "sh", "-c", counter)
    assert r.returncode == 0, r.stderr
    for cid in ids[1:-1]:
        r = own_daemon.ctr("run", "-d", *_cgroup_args(session_env, cid), IMAGE, cid,
                           "sleep", "1000")
        assert r.returncode == 0, r.stderr
    # The last one exits with 42 while the daemon is down.
    r = own_daemon.ctr("run", "-d", *_cgroup_args(session_env, ids[-1]), IMAGE, ids[-1],
                       "sh", "-c", "sleep 1.5; exit 42")
    assert r.returncode == 0, r.stderr
    assert set(_task_status(own_daemon)) == set(ids)
    time.sleep(0.3)
    own_daemon.proc.send_signal(signal.SIGKILL)
    own_daemon.proc.wait()
    time.sleep(2.0)
    restart(own_daemon)
    status = _task_status(own_daemon)
    assert all(status[cid] == "RUNNING" for cid in ids[:-1]), status
    assert status[ids[-1]] == "STOPPED"
    r = own_daemon.ctr("tasks", "delete", ids[-1])
    assert r.returncode == 0, r.stderr
    r = own_daemon.ctr("tasks", "kill", "-s", "SIGKILL", ids[0])
    assert r.returncode == 0, r.stderr
    time.sleep(0.3)
    numbers = [int(x) for x in log.read_text().split()]
    assert len(numbers) > 100
    assert numbers == list(range(len(numbers))), "gap or duplicate in the numbered log"
    for cid in ids:
        own_daemon.ctr("tasks", "kill", "-s", "SIGKILL", cid)
    time.sleep(0.3)
    for cid in ids:
        own_daemon.ctr("tasks", "delete", cid)
        own_daemon.ctr("containers", "rm", cid)
    assert _task_status(own_daemon) == {}


def test_crash_exit_code_while_down(own_daemon, session_env):
    """A task that exited while the daemon was down reports its real exit code."""
    from tests.fixtures.containerd import restart

    cid = "exitwhiledown"
    r = own_daemon.ctr("run", "-d", *_cgroup_args(session_env, cid), IMAGE, cid,
                       "sh", "-c", "sleep 0.5; exit 42")
    assert r.returncode == 0, r.stderr
    own_daemon.proc.send_signal(signal.SIGKILL)
    own_daemon.proc.wait()
    time.sleep(1.0)
    restart(own_daemon)
    assert _task_status(own_daemon)[cid] == "STOPPED"
    import grpc

    from dockyard.containerd.api.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc
    with grpc.insecure_channel(f"unix://{own_daemon.address}") as channel:
        stub = tasks_pb2_grpc.TasksStub(channel)
        md = (("containerd-namespace", "dyt"),)
        got = stub.Get(tasks_pb2.GetRequest(container_id=cid), metadata=md)
        assert got.process.exit_status == 42
        deleted = stub.Delete(tasks_pb2.DeleteTaskRequest(container_id=cid), metadata=md)
        assert deleted.exit_status == 42
    own_daemon.ctr("containers", "rm", cid)


def test_50_tasks_in_parallel(own_daemon, session_env):
    ids = [f"par{n}" for n in range(50)]

    def run(cid: str) -> subprocess.CompletedProcess:
        return own_daemon.ctr("run", "-d", *_cgroup_args(session_env, cid), IMAGE, cid,
                              "sleep", "1000", timeout=120)

    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(run, ids))
    failed = [(cid, r.stderr) for cid, r in zip(ids, results, strict=True) if r.returncode]
    assert not failed, failed[:3]
    status = _task_status(own_daemon)
    assert {cid: status.get(cid) for cid in ids} == {cid: "RUNNING" for cid in ids}

    def stop(cid: str) -> None:
        own_daemon.ctr("tasks", "kill", "-s", "SIGKILL", cid)
        for _ in range(100):
            if own_daemon.ctr("tasks", "delete", cid).returncode == 0:
                break
            time.sleep(0.05)
        own_daemon.ctr("containers", "rm", cid)

    with concurrent.futures.ThreadPoolExecutor(max_workers=25) as pool:
        list(pool.map(stop, ids))
    assert _task_status(own_daemon) == {}
    state = own_daemon.state
    assert os.listdir(os.path.join(state, "io.containerd.runtime.v2.task", "dyt")) == []
    # The daemon's one idle spare shim keeps its socket; no task's remains.
    assert [n for n in os.listdir(os.path.join(state, "s")) if not n.startswith("spare-")] == []
    # Mounts, cgroups and shim processes are checked by the leak checker.


def test_spare_shim(session_env, busybox_docker_archive, monkeypatch):
    """With a spare shim, tasks still run right; a dead spare is replaced; the
    daemon's orderly stop takes the spare with it."""
    if not os.access(CTR, os.X_OK):
        pytest.skip("ctr not installed (Debian package containerd)")
    from tests.fixtures.containerd import _stop, start_dockyard

    monkeypatch.setenv("DOCKYARD_SHIM_SPARE", "1")
    name = f"dyc-spare-{uuid.uuid4().hex[:6]}"
    daemon = start_dockyard(session_env.base, name)
    try:
        assert daemon.ctr("images", "import", busybox_docker_archive).returncode == 0
        spare_dir = os.path.join(daemon.state, "spare")
        for n in range(3):
            cid = f"spare{n}"
            r = daemon.ctr("run", "--rm", *_cgroup_args(session_env, cid), IMAGE, cid,
                           "sh", "-c", f"echo run{n}; exit {n + 3}")
            assert (r.returncode, r.stdout) == (n + 3, f"run{n}\n"), r.stderr
            time.sleep(0.8)  # the spare is refilled in the background
        spares = os.listdir(spare_dir)
        assert len(spares) == 1
        with open(os.path.join(spare_dir, spares[0], "shim.json")) as f:
            spare_pid = json.load(f)["pid"]
        os.kill(spare_pid, signal.SIGKILL)
        assert _gone(spare_pid)
        r = daemon.ctr("run", "--rm", *_cgroup_args(session_env, "spare9"), IMAGE, "spare9",
                       "echo", "after-dead-spare")
        assert (r.returncode, r.stdout) == (0, "after-dead-spare\n"), r.stderr
        time.sleep(0.8)
    finally:
        _stop(daemon)
    assert os.listdir(os.path.join(daemon.state, "spare")) == []
    shutil.rmtree(os.path.join(session_env.base, name), ignore_errors=True)
