"""The container lifecycle through the CLI: create → start → state
(created, running, paused, stopped), list, ps, events --stats, pause and
resume freezing the processes, kill and delete leaving nothing behind,
`run` exit statuses, and `features`/`state` output against the OCI schemas.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.integration.runtime_helpers import (
    assert_nothing_left,
    cgroup_dirs,
    created,
    new_id,
    run,
    runc,
    sh,
    state,
    wait_status,
)

pytestmark = [pytest.mark.integration, pytest.mark.requires_root]

SCHEMAS = Path("/work/shared/specs/oci-runtime")
if not SCHEMAS.exists():
    SCHEMAS = Path(__file__).resolve().parents[3] / "shared/specs/oci-runtime"


def _validator(schema_name: str):
    jsonschema = pytest.importorskip("jsonschema")
    referencing = pytest.importorskip("referencing")
    if not SCHEMAS.exists():
        pytest.skip(f"{SCHEMAS} is missing")
    resources = []
    for path in SCHEMAS.glob("*.json"):
        contents = json.loads(path.read_text())
        resource = referencing.Resource.from_contents(
            contents, default_specification=referencing.jsonschema.DRAFT4)
        resources.append((path.name, resource))
        if "id" in contents:
            resources.append((contents["id"], resource))
    registry = referencing.Registry().with_resources(resources)
    schema = json.loads((SCHEMAS / schema_name).read_text())
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft4Validator)
    return cls(schema, registry=registry)


def test_create_start_state_list_ps_stats_kill_delete(bundle, session_env):
    validator = _validator("state-schema.json")
    cid = new_id("life")
    with created(bundle, session_env, "sh", "-c", "sleep 60 & sleep 61", cid=cid,
                 start=False):
        s = state(session_env, cid)
        validator.validate(s)
        assert s["status"] == "created" and s["pid"] > 0
        assert s["id"] == cid and s["bundle"] == bundle.path
        assert os.path.exists(os.path.join(session_env.runc_root, cid))
        assert cgroup_dirs(session_env, bundle)
        # The init waits: it is not running the user's process yet.
        with open(f"/proc/{s['pid']}/cmdline", "rb") as f:
            assert b"sleep" not in f.read()
        assert runc(session_env, "start", cid).returncode == 0
        s = state(session_env, cid)
        validator.validate(s)
        assert s["status"] == "running"
        again = runc(session_env, "start", cid)
        assert again.returncode == 1 and "running" in again.stderr

        listed = runc(session_env, "list", "--format", "json")
        assert listed.returncode == 0, listed.stderr
        assert cid in {c["id"] for c in json.loads(listed.stdout)}
        quiet = runc(session_env, "list", "-q")
        assert cid in quiet.stdout.split()
        table = runc(session_env, "list")
        assert table.stdout.startswith("ID") and cid in table.stdout

        deadline = time.monotonic() + 5
        while True:
            pids = json.loads(runc(session_env, "ps", "--format", "json", cid).stdout)
            if len(pids) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        # sh execs its last command: the init becomes `sleep 61`, `sleep 60` its child.
        assert s["pid"] in pids and len(pids) == 2
        ps = runc(session_env, "ps", cid)
        assert ps.returncode == 0 and "PID" in ps.stdout.splitlines()[0]
        assert ps.stdout.count("sleep 6") == 2

        stats = runc(session_env, "events", "--stats", cid)
        assert stats.returncode == 0, stats.stderr
        event = json.loads(stats.stdout)
        assert event["type"] == "stats" and event["id"] == cid
        assert event["data"]["memory"]["usage"]["usage"] > 0
        assert event["data"]["pids"]["current"] == 2

        assert runc(session_env, "kill", cid, "KILL").returncode == 0
        s = wait_status(session_env, cid, "stopped")
        validator.validate(s)
        assert s["status"] == "stopped"
        assert runc(session_env, "kill", cid, "KILL").returncode == 1
        assert runc(session_env, "delete", cid).returncode == 0
        # The other sleep died with the pid namespace's init.
        assert_nothing_left(session_env, bundle, cid)
    gone = runc(session_env, "state", cid)
    assert gone.returncode == 1 and "does not exist" in gone.stderr


def test_pause_resume_freezes_processes(bundle, session_env):
    counter = os.path.join(bundle.rootfs, "tmp", "counter")
    loop = "i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; usleep 20000; done"

    def read() -> int:
        with open(counter) as f:
            return int(f.read().strip() or 0)

    with created(bundle, session_env, "sh", "-c", loop) as cid:
        deadline = time.monotonic() + 5
        while not os.path.exists(counter) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert runc(session_env, "pause", cid).returncode == 0
        assert state(session_env, cid)["status"] == "paused"
        frozen = read()
        time.sleep(0.3)
        assert read() == frozen
        listed = json.loads(runc(session_env, "list", "--format", "json").stdout)
        assert {c["id"]: c["status"] for c in listed}[cid] == "paused"
        again = runc(session_env, "resume", cid)
        assert again.returncode == 0, again.stderr
        assert state(session_env, cid)["status"] == "running"
        time.sleep(0.3)
        assert read() > frozen
        assert runc(session_env, "resume", cid).returncode == 1
        # Pause again and delete --force straight from paused.
        assert runc(session_env, "pause", cid).returncode == 0
        forced = runc(session_env, "delete", "--force", cid)
        assert forced.returncode == 0, forced.stderr
        assert_nothing_left(session_env, bundle, cid)


def test_delete_refuses_running_then_force(bundle, session_env):
    with created(bundle, session_env, "sleep", "60") as cid:
        refused = runc(session_env, "delete", cid)
        assert refused.returncode == 1 and "not stopped" in refused.stderr
        assert state(session_env, cid)["status"] == "running"
        assert runc(session_env, "delete", "--force", cid).returncode == 0
        assert_nothing_left(session_env, bundle, cid)


def test_delete_created_container(bundle, session_env):
    with created(bundle, session_env, "true", start=False) as cid:
        assert state(session_env, cid)["status"] == "created"
        assert runc(session_env, "delete", "--force", cid).returncode == 0
        assert_nothing_left(session_env, bundle, cid)


def test_run_exit_status_and_cleanup(bundle, session_env):
    cid = new_id("run")
    r = sh(bundle, session_env, "echo out; echo err >&2; exit 7", cid=cid)
    assert (r.rc, r.out) == (7, "out\n")
    assert "err" in r.err
    assert_nothing_left(session_env, bundle, cid)
    assert run(bundle, session_env, "false").rc == 1
    missing = run(bundle, session_env, "/no/such/binary")
    assert missing.rc != 0 and "/no/such/binary" in missing.err


def test_run_detach_then_kill(bundle, session_env):
    bundle.set_args("sleep", "60")
    cid = new_id("det")
    log = os.path.join(bundle.path, "detach.log")
    with open(log, "wb") as out:
        import subprocess

        from tests.fixtures.busybox import runc_binary
        proc = subprocess.run([*runc_binary(), "--root", session_env.runc_root, "run", "-d",
                               "--bundle", bundle.path, cid], stdout=out, stderr=out,
                              stdin=subprocess.DEVNULL, timeout=30)
    try:
        assert proc.returncode == 0, open(log).read()
        assert state(session_env, cid)["status"] == "running"
        assert runc(session_env, "kill", cid, "9").returncode == 0
        assert wait_status(session_env, cid, "stopped")["status"] == "stopped"
    finally:
        runc(session_env, "delete", "--force", cid)
    assert_nothing_left(session_env, bundle, cid)


def test_features_validates_against_schema(session_env):
    validator = _validator("features-schema.json")
    proc = runc(session_env, "features")
    assert proc.returncode == 0, proc.stderr
    features = json.loads(proc.stdout)
    validator.validate(features)
    linux = features["linux"]
    assert {"pid", "network", "mount", "user", "uts", "ipc", "cgroup"} <= set(
        linux["namespaces"])
    assert "CAP_SYS_ADMIN" in linux["capabilities"]
    assert {"prestart", "createRuntime", "createContainer", "startContainer", "poststart",
            "poststop"} <= set(features["hooks"])
    assert "SCMP_ACT_ERRNO" in linux["seccomp"]["actions"]


def test_version(session_env):
    proc = runc(session_env, "--version")
    assert proc.returncode == 0 and "spec: 1." in proc.stdout
