"""The runtime worker: a child of the shim that runs the OCI runtime.

The runtime library costs ~5 MiB of imports, more than the shim's whole
budget, so the shim never imports it. It forks this worker instead, which
imports the runtime (while the daemon is still preparing the bundle) and
serves requests over a SEQPACKET socketpair, with stdio descriptors passed
as SCM_RIGHTS. Operations that make processes (create, exec) run in a
grandchild that exits once they return: the container's process then
re-parents to the shim, the nearest subreaper, so the shim is its parent
and reaps it. An external runtime binary (runc, crun) is driven the same
way: it exits after `create`/`exec --detach` and its child re-parents.

The worker exits when the shim says so (a few seconds after its last use,
or at shutdown) or when the shim's end of the channel closes; the shim
forks a new one when it next needs one.
"""

from __future__ import annotations

import _socket
import os
import struct

from dockyard.shim import wire

MAX_MESSAGE = 1 << 20
MAX_FDS = 16


def spawn(runtime: str, root: str) -> tuple[int, _socket.socket]:
    """Fork a worker; returns (pid, the shim's end of the channel)."""
    ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            ours.close()
            _serve(theirs, runtime, root)
        except BaseException:  # noqa: BLE001 - a forked child must never unwind
            code = 1
        os._exit(code)
    theirs.close()
    return pid, ours


def send(channel: _socket.socket, message: dict, fds: list[int] = ()) -> None:
    ancillary = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS,
                  struct.pack(f"{len(fds)}i", *fds))] if fds else []
    channel.sendmsg([wire.dumps(message).encode()], ancillary)


def receive(channel: _socket.socket) -> tuple[dict | None, list[int]]:
    data, ancillary, _flags, _addr = channel.recvmsg(
        MAX_MESSAGE, _socket.CMSG_SPACE(MAX_FDS * 4))
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % 4
            fds.extend(struct.unpack(f"{usable // 4}i", payload[:usable]))
    return (wire.loads(data) if data else None), fds


# ------------------------------------------------------------------ worker side

def _serve(channel: _socket.socket, runtime: str, root: str) -> None:
    import signal
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    backend = _Builtin(root) if runtime in ("", "builtin") else _External(runtime, root)
    while True:
        try:
            request, fds = receive(channel)
        except OSError:
            return
        if request is None:
            return
        op = request.pop("op")
        if op == "exit":
            return
        if request.get("root"):
            backend.set_root(request["root"])
        response: dict | None = None
        try:
            if op in ("create", "exec") and backend.forks:
                _in_grandchild(channel, backend, op, request, fds)
            else:
                response = {"result": getattr(backend, op)(request, fds)}
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the shim
            response = {"error": _error(exc)}
        for fd in fds:
            _close(fd)
        if response is None:
            continue
        send(channel, response)


def _in_grandchild(channel: _socket.socket, backend, op: str, request: dict,
                   fds: list[int]) -> None:
    pid = os.fork()
    if pid == 0:
        try:
            try:
                response = {"result": getattr(backend, op)(request, fds)}
            except BaseException as exc:  # noqa: BLE001
                response = {"error": _error(exc)}
            send(channel, response)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def _error(exc: BaseException) -> dict:
    kind = type(exc).__name__
    for base in type(exc).__mro__:
        if base.__module__ == "dockyard.errdefs" and base.__name__ != "DockyardError":
            kind = base.__name__
            break
    else:
        kind = "NotFound" if isinstance(exc, FileNotFoundError) else "Unknown"
    return {"kind": kind, "message": str(exc) or kind}


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _stdio(request: dict, fds: list[int]) -> tuple[int | None, int | None, int | None]:
    """Map the passed descriptors back to stdin/stdout/stderr (names in request["stdio"])."""
    names = request.get("stdio") or []
    got = dict(zip(names, fds, strict=False))
    return got.get("stdin"), got.get("stdout"), got.get("stderr")


class _Builtin:
    """dockyard's own runtime, in this process."""

    forks = True

    def __init__(self, root: str) -> None:
        # Warm the imports, including what create and delete import lazily: else
        # every create's grandchild and this worker's one delete pay (~5 ms each).
        from dockyard.runtime import container, execute, hooks, init, spec  # noqa: F401
        from dockyard.runtime.linux import (  # noqa: F401
            capabilities,
            cgroups,
            namespaces,
            rlimits,
            rootfs,
        )
        from dockyard.runtime.linux.cgroups import devices_bpf, resources, v1, v2  # noqa: F401
        self.runtime = container.Runtime(root)

    def set_root(self, root: str) -> None:
        self.runtime.root = root

    def create(self, request: dict, fds: list[int]) -> dict:
        from dockyard.runtime.container import CreateOptions
        stdin, stdout, stderr = _stdio(request, fds)
        pid, warnings = self.runtime.create(request["id"], request["bundle"], CreateOptions(
            console_socket=request.get("console_socket"), stdin=stdin, stdout=stdout,
            stderr=stderr))
        return {"pid": pid, "warnings": warnings}

    def exec(self, request: dict, fds: list[int]) -> dict:
        from dockyard.runtime.execute import ExecOptions, exec_process
        from dockyard.runtime.spec import Process
        stdin, stdout, stderr = _stdio(request, fds)
        process = Process.from_oci(request["process"])
        pid = exec_process(self.runtime, request["id"], process, ExecOptions(
            console_socket=request.get("console_socket"), stdin=stdin, stdout=stdout,
            stderr=stderr))
        return {"pid": pid}

    def start(self, request: dict, fds: list[int]) -> dict:
        self.runtime.start(request["id"])
        return {}

    def kill(self, request: dict, fds: list[int]) -> dict:
        self.runtime.kill(request["id"], int(request["signal"]),
                          all_processes=bool(request.get("all")))
        return {}

    def delete(self, request: dict, fds: list[int]) -> dict:
        from dockyard import errdefs
        try:
            self.runtime.delete(request["id"], force=bool(request.get("force")))
        except errdefs.NotFound:
            pass
        return {}

    def pause(self, request: dict, fds: list[int]) -> dict:
        self.runtime.pause(request["id"])
        return {}

    def resume(self, request: dict, fds: list[int]) -> dict:
        self.runtime.resume(request["id"])
        return {}

    def pids(self, request: dict, fds: list[int]) -> list[int]:
        return self.runtime.pids(request["id"])

    def stats(self, request: dict, fds: list[int]) -> dict:
        return self.runtime.stats(request["id"])

    def update(self, request: dict, fds: list[int]) -> dict:
        from dockyard.runtime.linux.cgroups import resources as cgroup_resources
        cs = self.runtime.load(request["id"])
        self.runtime.cgroup(cs).set(cgroup_resources.Resources.from_oci(request["resources"]))
        return {}


class _External:
    """An OCI runtime binary (runc, crun) with runc's command line."""

    forks = False

    def __init__(self, binary: str, root: str) -> None:
        import json  # noqa: F401 - warm the imports
        import subprocess  # noqa: F401
        self.binary = binary
        self.root = root

    def set_root(self, root: str) -> None:
        self.root = root

    def _run(self, *args: str, stdio=(None, None, None), parse: bool = False):
        import json
        import subprocess
        import tempfile
        with tempfile.NamedTemporaryFile(prefix="runtime-log-", dir=self.root) as log:
            cmd = [self.binary, "--root", self.root, "--log", log.name, "--log-format", "json",
                   *args]
            null = os.open(os.devnull, os.O_RDWR)
            try:
                stdin, stdout, stderr = stdio
                proc = subprocess.run(
                    cmd, stdin=stdin if stdin is not None else null,
                    stdout=subprocess.PIPE if parse else (stdout if stdout is not None else null),
                    stderr=stderr if stderr is not None else null, timeout=60)
            finally:
                os.close(null)
            if proc.returncode != 0:
                raise _runtime_error(args[0], log.name, proc.returncode)
            return json.loads(proc.stdout or b"null") if parse else None

    def create(self, request: dict, fds: list[int]) -> dict:
        os.makedirs(self.root, mode=0o711, exist_ok=True)
        pid_file = os.path.join(request["bundle"], "init.pid")
        args = ["create", "--bundle", request["bundle"], "--pid-file", pid_file]
        if request.get("console_socket"):
            args += ["--console-socket", request["console_socket"]]
        self._run(*args, request["id"], stdio=_stdio(request, fds))
        with open(pid_file) as f:
            return {"pid": int(f.read().strip()), "warnings": []}

    def exec(self, request: dict, fds: list[int]) -> dict:
        import json
        import tempfile
        with tempfile.TemporaryDirectory(dir=self.root) as tmp:
            process_file = os.path.join(tmp, "process.json")
            with open(process_file, "w") as f:
                json.dump(request["process"], f)
            pid_file = os.path.join(tmp, "pid")
            args = ["exec", "--process", process_file, "--detach", "--pid-file", pid_file]
            if request.get("console_socket"):
                args += ["--console-socket", request["console_socket"]]
            self._run(*args, request["id"], stdio=_stdio(request, fds))
            with open(pid_file) as f:
                return {"pid": int(f.read().strip())}

    def start(self, request: dict, fds: list[int]) -> dict:
        self._run("start", request["id"])
        return {}

    def kill(self, request: dict, fds: list[int]) -> dict:
        self._run("kill", *(["--all"] if request.get("all") else []), request["id"],
                  str(int(request["signal"])))
        return {}

    def delete(self, request: dict, fds: list[int]) -> dict:
        self._run("delete", *(["--force"] if request.get("force") else []), request["id"])
        return {}

    def pause(self, request: dict, fds: list[int]) -> dict:
        self._run("pause", request["id"])
        return {}

    def resume(self, request: dict, fds: list[int]) -> dict:
        self._run("resume", request["id"])
        return {}

    def pids(self, request: dict, fds: list[int]) -> list[int]:
        return sorted(self._run("ps", "--format", "json", request["id"], parse=True) or [])

    def stats(self, request: dict, fds: list[int]) -> dict:
        return self._run("events", "--stats", request["id"], parse=True)

    def update(self, request: dict, fds: list[int]) -> dict:
        import json
        import tempfile
        with tempfile.NamedTemporaryFile("w", dir=self.root, suffix=".json") as f:
            json.dump(request["resources"], f)
            f.flush()
            self._run("update", "--resources", f.name, request["id"])
        return {}


def _runtime_error(command: str, log_path: str, code: int) -> Exception:
    import json

    from dockyard import errdefs
    message = ""
    try:
        with open(log_path) as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if entry.get("level") in ("error", "fatal"):
                    message = entry.get("msg", "")
    except OSError:
        pass
    message = message or f"exit status {code}"
    text = f"OCI runtime {command} failed: {message}"
    lowered = message.lower()
    if "does not exist" in lowered or "not found" in lowered or "no such file" in lowered:
        return errdefs.NotFound(text)
    if "already exists" in lowered:
        return errdefs.AlreadyExists(text)
    if "not running" in lowered or "not paused" in lowered or "cannot" in lowered:
        return errdefs.FailedPrecondition(text)
    return errdefs.FailedPrecondition(text)
