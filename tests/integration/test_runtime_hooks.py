"""All six OCI hooks run, in order, each with the state JSON on stdin; a
failing prestart hook aborts create and leaves nothing behind.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.integration.runtime_helpers import assert_nothing_left, new_id, run

pytestmark = [pytest.mark.integration, pytest.mark.requires_root]

ORDER = ["prestart", "createRuntime", "createContainer", "startContainer", "poststart",
         "poststop"]


def _hook(name: str, log: str) -> dict:
    # One line per hook, in one write: its name, a tab, the state from stdin.
    script = f's=$(cat); printf "%s\\t%s\\n" {name} "$s" >> {log}'
    return {"path": "/bin/sh", "args": ["sh", "-c", script],
            "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "timeout": 10}


def test_all_hooks_run_in_order_with_state(bundle, session_env):
    host_log = os.path.join(bundle.rootfs, "hooks.log")
    hooks = {}
    for name in ORDER:
        # startContainer runs in the container, after pivot_root: it resolves
        # its path and writes its log inside the container's root.
        log = "/hooks.log" if name == "startContainer" else host_log
        hooks[name] = [_hook(name, log)]
    bundle.config["hooks"] = hooks
    cid = new_id("hooks")
    r = run(bundle, session_env, "sh", "-c", "echo main >> /hooks.log", cid=cid)
    assert r.rc == 0, r.err
    with open(host_log) as f:
        lines = [line for line in f.read().splitlines() if line]
    names = [line.split("\t", 1)[0] for line in lines]
    # The container's own process runs between startContainer and poststart
    # (poststart may race with it, so only its relative order is checked).
    assert [n for n in names if n != "main"] == ORDER, names
    assert names.index("main") > names.index("startContainer")
    states = {line.split("\t", 1)[0]: json.loads(line.split("\t", 1)[1])
              for line in lines if "\t" in line}
    for name, st in states.items():
        assert st["id"] == cid, (name, st)
        assert "pid" in st and "status" in st and st["ociVersion"], (name, st)
        assert st["bundle"] == bundle.path, (name, st)
    assert states["prestart"]["pid"] > 1 and states["createRuntime"]["pid"] > 1
    assert states["poststart"]["status"] == "running"
    assert states["poststart"]["pid"] == states["prestart"]["pid"]
    assert states["poststop"]["status"] == "stopped"
    assert_nothing_left(session_env, bundle, cid)


def test_failing_prestart_hook_aborts_create(bundle, session_env):
    bundle.config["hooks"] = {"prestart": [
        {"path": "/bin/sh", "args": ["sh", "-c", "echo hook-said-no >&2; exit 3"]}]}
    cid = new_id("hookfail")
    r = run(bundle, session_env, "true", cid=cid)
    assert r.rc == 1
    assert "prestart" in r.err and "hook-said-no" in r.err
    assert_nothing_left(session_env, bundle, cid)
