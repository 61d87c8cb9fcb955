"""Bad input: each broken config.json gets a clear error naming the field on
stderr, exit status 1, and leaves nothing behind (no state dir, no cgroup,
no process — the leak checker sees to the last). Plus the CLI's errors for
unknown containers and duplicate ids.
"""

from __future__ import annotations

import os

import pytest

from tests.integration.runtime_helpers import (
    assert_nothing_left,
    created,
    new_id,
    runc,
)

pytestmark = [pytest.mark.integration, pytest.mark.requires_root]


def _drop_root(config: dict) -> None:
    del config["root"]


def _unknown_namespace(config: dict) -> None:
    config["linux"]["namespaces"].append({"type": "bogus"})


def _relative_destination(config: dict) -> None:
    config["mounts"].append({"destination": "relative/dir", "type": "tmpfs", "source": "tmpfs"})


def _bind_missing_source(config: dict) -> None:
    config["mounts"].append({"destination": "/data", "type": "bind",
                             "source": "/nonexistent/dockyard-test-source",
                             "options": ["rbind", "ro"]})


def _bad_seccomp_action(config: dict) -> None:
    config["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mkdir"], "action": "SCMP_ACT_EXPLODE"}]}


def _bad_seccomp_default(config: dict) -> None:
    config["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_NOPE"}


def _rootfs_missing(config: dict) -> None:
    config["root"]["path"] = "no-such-rootfs"


def _unknown_capability(config: dict) -> None:
    config["process"]["capabilities"]["effective"].append("CAP_MAKE_COFFEE")


def _bad_rlimit(config: dict) -> None:
    config["process"]["rlimits"].append({"type": "RLIMIT_BOGUS", "hard": 1, "soft": 1})


@pytest.mark.parametrize(("mutate", "words"), [
    pytest.param(_drop_root, ["root"], id="missing-root"),
    pytest.param(_unknown_namespace, ["namespaces", "bogus"], id="unknown-namespace"),
    pytest.param(_relative_destination, ["mounts", "destination", "relative/dir"],
                 id="relative-mount-destination"),
    pytest.param(_bind_missing_source, ["/nonexistent/dockyard-test-source"],
                 id="bind-missing-source"),
    pytest.param(_bad_seccomp_action, ["seccomp", "SCMP_ACT_EXPLODE"], id="seccomp-action"),
    pytest.param(_bad_seccomp_default, ["defaultAction", "SCMP_ACT_NOPE"],
                 id="seccomp-default-action"),
    pytest.param(_rootfs_missing, ["no-such-rootfs"], id="rootfs-missing"),
    pytest.param(_unknown_capability, ["CAP_MAKE_COFFEE"], id="unknown-capability"),
    pytest.param(_bad_rlimit, ["RLIMIT_BOGUS"], id="unknown-rlimit"),
])
@pytest.mark.parametrize("command", ["run", "create"])
def test_bad_config_is_refused_cleanly(bundle, session_env, mutate, words, command):
    mutate(bundle.config)
    bundle.write()
    cid = new_id("bad")
    proc = runc(session_env, command, "--bundle", bundle.path, cid)
    assert proc.returncode == 1, proc
    assert proc.stdout == ""
    for word in words:
        assert word in proc.stderr, (word, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert "level=error" in proc.stderr
    assert_nothing_left(session_env, bundle, cid)


def test_invalid_json(bundle, session_env):
    with open(os.path.join(bundle.path, "config.json"), "w") as f:
        f.write("{not json")
    cid = new_id("bad")
    proc = runc(session_env, "run", "--bundle", bundle.path, cid)
    assert proc.returncode == 1 and "config.json" in proc.stderr
    assert_nothing_left(session_env, bundle, cid)


def test_unknown_container_commands(session_env):
    for args in (["start"], ["state"], ["kill"], ["delete"], ["pause"], ["resume"], ["ps"],
                 ["events", "--stats"], ["exec"]):
        cmd = [*args, "nope-" + new_id()] + (["true"] if args == ["exec"] else [])
        proc = runc(session_env, *cmd)
        assert proc.returncode == 1, (args, proc)
        assert "does not exist" in proc.stderr, (args, proc.stderr)


def test_invalid_id_and_duplicate(bundle, session_env):
    bad = runc(session_env, "create", "--bundle", bundle.path, "../escape")
    assert bad.returncode == 1 and "invalid container id" in bad.stderr
    with created(bundle, session_env, "sleep", "30") as cid:
        dup = runc(session_env, "create", "--bundle", bundle.path, cid)
        assert dup.returncode == 1 and "exists" in dup.stderr
        # The first container is untouched.
        assert runc(session_env, "state", cid).returncode == 0


def test_log_format_json(bundle, session_env, tmp_path):
    del bundle.config["root"]
    bundle.write()
    log = tmp_path / "runc.log"
    cid = new_id("bad")
    proc = runc(session_env, "--log", str(log), "--log-format", "json", "create", "--bundle",
                bundle.path, cid)
    assert proc.returncode == 1
    import json
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert entries[-1]["level"] == "error" and "root" in entries[-1]["msg"]
    assert_nothing_left(session_env, bundle, cid)
