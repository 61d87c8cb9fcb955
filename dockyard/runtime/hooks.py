"""OCI hooks: each runs with the container state as JSON on stdin.

prestart/createRuntime/poststart/poststop run in the runtime's namespaces;
createContainer and startContainer run in the container's (the caller
decides where it calls us). A failing hook aborts create/start; poststart
and poststop failures are warnings, as the spec says.
"""

from __future__ import annotations

from dockyard import errdefs
from dockyard.runtime import fastjson
from dockyard.runtime.spec import Hook


class HookError(errdefs.FailedPrecondition):
    """A lifecycle hook failed."""


def run_hook(kind: str, hook: Hook, state: dict) -> None:
    import subprocess  # only when a hook exists: keeps `run` start-up lean

    argv = list(hook.args) or [hook.path]
    try:
        proc = subprocess.run(argv, executable=hook.path, input=fastjson.dumps(state).encode(),
                              env=dict(e.split("=", 1) for e in hook.env if "=" in e),
                              capture_output=True, timeout=hook.timeout, close_fds=True)
    except subprocess.TimeoutExpired as exc:
        raise HookError(f"{kind} hook {hook.path} timed out after {hook.timeout}s") from exc
    except OSError as exc:
        raise HookError(f"{kind} hook {hook.path}: {exc.strerror}") from exc
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).decode(errors="replace").strip()
        raise HookError(f"{kind} hook {hook.path} exited with status {proc.returncode}"
                        + (f": {detail}" if detail else ""))


def run_hooks(kind: str, hooks: dict[str, tuple[Hook, ...]], state: dict) -> None:
    for hook in hooks.get(kind, ()):
        run_hook(kind, hook, state)
