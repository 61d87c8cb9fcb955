"""The cgroup managers on the real kernel: limits a process actually feels.

Every test runs against cgroup v1 and cgroup v2 where the host has them. On a
hybrid host the v2 manager uses the cgroup2 mount at /sys/fs/cgroup/unified,
which usually offers no memory/pids/cpu controllers: those cases skip with the
reason, while freeze, kill, devices (eBPF) and remove still run for real.
All cgroups live under a unique /dockyard-test-<pid>-<uuid> parent that the
fixture removes, whatever the test did.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from dockyard.errdefs import FailedPrecondition, InvalidArgument, Unavailable
from dockyard.runtime.linux.cgroups import Resources, V1Manager, V2Manager, new_manager, paths
from dockyard.runtime.linux.cgroups import fs as cgfs

pytestmark = [pytest.mark.integration, pytest.mark.requires_root]

MiB = 1024 * 1024


def _v2_root() -> str | None:
    mounts = paths.read_cgroup_mounts()
    for mount in mounts:
        if mount.fs_type == "cgroup2" and mount.mountpoint in (paths.CGROUP_ROOT,
                                                                 "/sys/fs/cgroup/unified"):
            return mount.mountpoint
    return None


def _has_v1() -> bool:
    return any(m.fs_type == "cgroup" and "memory" in m.controllers
               for m in paths.read_cgroup_mounts())


@pytest.fixture(autouse=True)
def _root_only():
    if os.geteuid() != 0:
        pytest.skip("cgroup integration tests need root")


@pytest.fixture(params=["v1", "v2"])
def manager(request):
    parent = f"/dockyard-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    procs: list[subprocess.Popen] = []
    restore_subtree: tuple[str, str] | None = None
    if request.param == "v1":
        if not _has_v1():
            pytest.skip("no cgroup v1 memory hierarchy on this host")
        mgr = V1Manager.for_host(parent + "/ctr", "unused")
        cleanup = V1Manager.for_host(parent, "unused")
    else:
        root = _v2_root()
        if root is None:
            pytest.skip("no cgroup2 mount at /sys/fs/cgroup or /sys/fs/cgroup/unified")
        # Remember the root's subtree_control: creating our cgroup enables controllers there.
        restore_subtree = (root, cgfs.read_text(root, "cgroup.subtree_control", ""))
        mgr = V2Manager(parent + "/ctr", root=root)
        cleanup = V2Manager(parent, root=root)
    mgr.test_procs = procs  # type: ignore[attr-defined]
    try:
        yield mgr
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        if mgr.exists():
            try:
                mgr.thaw()
            except Exception:  # noqa: BLE001 — teardown must go on
                pass
        for proc in procs:
            proc.wait(timeout=10)
        cleanup.remove()
        if restore_subtree and restore_subtree[0] != paths.CGROUP_ROOT:
            root, before = restore_subtree
            for controller in cgfs.read_text(root, "cgroup.subtree_control", "").split():
                if controller not in before.split():
                    try:
                        cgfs.write(root, "cgroup.subtree_control", f"-{controller}", field="x")
                    except Exception:  # noqa: BLE001 — another cgroup may use it now
                        pass


def _available(mgr, controller: str) -> bool:
    if isinstance(mgr, V1Manager):
        return controller in mgr.dirs
    return controller in cgfs.read_text(mgr.root, "cgroup.controllers", "").split()


def _require(mgr, controller: str) -> None:
    if not _available(mgr, controller):
        kind = "v1" if isinstance(mgr, V1Manager) else f"v2 ({mgr.root})"
        pytest.skip(f"cgroup {kind} hierarchy has no {controller} controller on this host")


def _spawn(mgr, code: str) -> subprocess.Popen:
    """A python child that waits on stdin until it is in the cgroup, then runs code."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys\nsys.stdin.readline()\n" + code],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mgr.test_procs.append(proc)
    mgr.apply(proc.pid)
    return proc


def _go(proc: subprocess.Popen, timeout: float = 30) -> tuple[int, str, str]:
    out, err = proc.communicate("go\n", timeout=timeout)
    return proc.returncode, out, err


def _sleep(mgr) -> subprocess.Popen:
    proc = subprocess.Popen(["sleep", "60"])
    mgr.test_procs.append(proc)
    mgr.apply(proc.pid)
    return proc


def test_apply_moves_process_and_memory_limit_lands(manager):
    _require(manager, "memory")
    proc = _sleep(manager)
    manager.set(Resources.from_oci({"memory": {"limit": 64 * MiB}}))
    assert proc.pid in manager.pids()
    with open(f"/proc/{proc.pid}/cgroup") as f:
        assert manager.path in f.read()
    if isinstance(manager, V1Manager):
        assert cgfs.read_int(manager.dirs["memory"], "memory.limit_in_bytes") == 64 * MiB
    else:
        assert cgfs.read_int(manager.dir, "memory.max") == 64 * MiB
    assert manager.stats()["memory"]["usage"]["limit"] == 64 * MiB


def test_allocating_past_the_memory_limit_is_oom_killed(manager):
    _require(manager, "memory")
    manager.set(Resources.from_oci({"memory": {"limit": 32 * MiB, "swap": 32 * MiB}}))
    proc = _spawn(manager, "blocks = [bytearray(16 * 1024 * 1024) for _ in range(32)]\n"
                           "print('survived')")
    code, out, _ = _go(proc)
    assert code == -signal.SIGKILL
    assert "survived" not in out
    assert manager.oom_kill_count() >= 1


def test_pids_limit_makes_fork_fail_with_eagain(manager):
    _require(manager, "pids")
    manager.set(Resources.from_oci({"pids": {"limit": 1}}))
    proc = _spawn(manager, "import os\ntry:\n    pid = os.fork()\nexcept OSError as e:\n"
                           "    print('errno', e.errno)\nelse:\n    if pid == 0:\n"
                           "        os._exit(0)\n    os.waitpid(pid, 0)\n    print('forked')")
    code, out, err = _go(proc)
    assert code == 0, err
    assert out.strip() == "errno 11"  # EAGAIN
    assert manager.stats()["pids"]["limit"] == 1


def test_freeze_stops_a_counter_and_thaw_resumes_it(manager):
    with tempfile.TemporaryDirectory() as tmp:
        counter = os.path.join(tmp, "n")
        proc = _spawn(manager, "import os, time\nn = 0\nwhile True:\n    n += 1\n"
                               f"    with open({counter!r} + '.t', 'w') as f: f.write(str(n))\n"
                               f"    os.replace({counter!r} + '.t', {counter!r})\n"
                               "    time.sleep(0.002)")
        proc.stdin.write("go\n")
        proc.stdin.flush()
        cgfs.wait_for(lambda: os.path.exists(counter), 10, "counter file")

        def read() -> int:
            with open(counter) as f:
                return int(f.read() or 0)

        manager.freeze()
        assert manager.state() == "frozen"
        with open(f"/proc/{proc.pid}/stat") as f:
            assert f.read().rsplit(")", 1)[1].split()[0] in ("D", "S", "T")
        frozen_at = read()
        time.sleep(0.3)
        assert read() == frozen_at
        manager.thaw()
        assert manager.state() == "thawed"
        cgfs.wait_for(lambda: read() > frozen_at, 5, "counter to advance after thaw")
        # The writer must be gone before its directory is removed.
        proc.kill()
        proc.wait()


def test_stats_report_cpu_memory_and_pids(manager):
    proc = _spawn(manager, "import time\nend = time.time() + 0.3\nx = bytearray(8 << 20)\n"
                           "while time.time() < end:\n    pass\nprint('done')")
    assert _go(proc)[0] == 0
    stats = manager.stats()
    assert set(stats) >= {"cpu", "memory", "pids", "blkio"}
    if _available(manager, "cpu") or isinstance(manager, V2Manager):
        assert stats["cpu"]["usage"]["total"] > 100_000_000  # ns: the child spun 0.3 s
        assert stats["cpu"]["usage"]["user"] > 0
    if _available(manager, "memory"):
        assert stats["memory"]["usage"]["max"] > 8 << 20 or stats["memory"]["raw"]
    if _available(manager, "pids"):
        _sleep(manager)
        assert manager.stats()["pids"]["current"] == 1


def _open_dev_null_code() -> str:
    return ("try:\n    open('/dev/null', 'w').close()\n    print('open')\n"
            "except PermissionError:\n    print('denied')")


def test_device_rules_deny_then_allow_dev_null(manager):
    if isinstance(manager, V1Manager):
        _require(manager, "devices")
    deny_all = {"allow": False, "access": "rwm"}
    try:
        manager.set(Resources.from_oci({"devices": [deny_all]}))
    except (Unavailable, FailedPrecondition) as exc:
        if isinstance(manager, V1Manager):
            raise
        pytest.skip(f"kernel refused the cgroup v2 device filter (BPF attach): {exc}")
    code, out, err = _go(_spawn(manager, _open_dev_null_code()))
    assert (code, out.strip()) == (0, "denied"), err
    manager.set(Resources.from_oci({"devices": [
        deny_all, {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"}]}))
    code, out, err = _go(_spawn(manager, _open_dev_null_code()))
    assert (code, out.strip()) == (0, "open"), err


def test_kill_all_signals_every_process(manager):
    first, second = _sleep(manager), _sleep(manager)
    manager.kill_all(signal.SIGKILL)
    assert first.wait(timeout=10) == -signal.SIGKILL
    assert second.wait(timeout=10) == -signal.SIGKILL
    cgfs.wait_for(lambda: manager.pids() == [], 5, "cgroup to empty")


def test_remove_leaves_no_directory_and_is_idempotent(manager):
    proc = _sleep(manager)
    assert manager.exists()
    proc.kill()
    proc.wait()
    manager.remove()
    manager.remove()
    assert not manager.exists()
    dirs = manager.dirs.values() if isinstance(manager, V1Manager) else [manager.dir]
    assert [d for d in dirs if os.path.exists(d)] == []


def test_new_cpuset_inherits_parent_cpus_and_mems(manager):
    _require(manager, "cpuset")
    _sleep(manager)
    if isinstance(manager, V1Manager):
        directory = manager.dirs["cpuset"]
        parent = os.path.dirname(directory)
        assert cgfs.read_text(directory, "cpuset.cpus") == cgfs.read_text(parent, "cpuset.cpus")
        assert cgfs.read_text(directory, "cpuset.mems") != ""
    manager.set(Resources.from_oci({"cpu": {"cpus": "0"}}))
    target = manager.dirs["cpuset"] if isinstance(manager, V1Manager) else manager.dir
    assert cgfs.read_text(target, "cpuset.cpus") == "0"


def test_missing_controller_is_unavailable_naming_it(manager):
    missing = next((c for c in ("hugetlb", "memory", "pids") if not _available(manager, c)),
                   None)
    if missing is None:
        pytest.skip("every controller this test could miss is present")
    request = {"hugetlb": {"hugepageLimits": [{"pageSize": "2MB", "limit": 2 * MiB}]},
               "memory": {"memory": {"limit": 64 * MiB}},
               "pids": {"pids": {"limit": 10}}}[missing]
    with pytest.raises(Unavailable, match=missing):
        manager.set(Resources.from_oci(request))


def test_unified_keys_need_v2_and_are_written_verbatim(manager):
    if isinstance(manager, V1Manager):
        with pytest.raises(InvalidArgument, match="unified"):
            manager.set(Resources.from_oci({"unified": {"pids.max": "10"}}))
        return
    manager.set(Resources.from_oci({"unified": {"cgroup.max.descendants": "3"}}))
    assert cgfs.read_text(manager.dir, "cgroup.max.descendants") == "3"
    with pytest.raises(InvalidArgument, match="unified"):
        manager.set(Resources.from_oci({"unified": {"../cgroup.procs": "1"}}))


def test_hugetlb_limit_where_the_controller_exists(manager):
    _require(manager, "hugetlb")
    if not os.path.isdir("/sys/kernel/mm/hugepages/hugepages-2048kB"):
        pytest.skip("no 2MB huge pages in this kernel")
    manager.set(Resources.from_oci({"hugepageLimits": [{"pageSize": "2MB",
                                                         "limit": 4 * MiB}]}))
    if isinstance(manager, V1Manager):
        value = cgfs.read_int(manager.dirs["hugetlb"], "hugetlb.2MB.limit_in_bytes")
    else:
        value = cgfs.read_int(manager.dir, "hugetlb.2MB.max")
    assert value == 4 * MiB


def test_new_manager_picks_this_hosts_hierarchy_and_cleans_up():
    path = f"/dockyard-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    mgr = new_manager(path, "unused")
    expected = V2Manager if paths.host_is_unified() else V1Manager
    assert isinstance(mgr, expected) and mgr.path == path
    proc = subprocess.Popen(["sleep", "60"])
    try:
        mgr.apply(proc.pid)
        assert mgr.pids() == [proc.pid]
        mgr.kill_all(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        mgr.remove()
    assert not mgr.exists()
