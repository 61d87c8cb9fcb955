"""The shim's server: process table, reaping, exit records and the RPC.

Wire: JSON lines over a unix socket. A request is
  {"id": 1, "method": "start", "params": {"exec_id": ""}}
and its answer {"id": 1, "result": ...} or
  {"id": 1, "error": {"kind": "NotFound", "message": "..."}}
(kind names a dockyard.errdefs class). Answers may come out of order:
`wait` answers when the process has exited; `subscribe` turns the
connection into a stream of {"event": {...}} lines (exit events).

An exit is written to <state>/exits/<init|exec-id>.json (tmp, fsync,
rename) before anyone hears of it, so a daemon that was down reads the real
status later, even when the shim is gone.
"""

from __future__ import annotations

import _socket
import errno
import os
import signal
import struct
import time

from dockyard.shim import stdio, wire, worker
from dockyard.shim.loop import Loop

INIT = ""
DRAIN_SECONDS = 2.0
WORKER_IDLE_SECONDS = 3.0


class ShimError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


_DEFER = object()


def write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    dir_fd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def exit_file(state_dir: str, exec_id: str) -> str:
    return os.path.join(state_dir, "exits", f"{exec_id or 'init'}.json")


class Proc:
    def __init__(self, exec_id: str, stdin: str, stdout: str, stderr: str, terminal: bool,
                 process: dict | None = None) -> None:
        self.exec_id = exec_id
        self.stdin, self.stdout, self.stderr, self.terminal = stdin, stdout, stderr, terminal
        self.process = process
        self.pid = 0
        self.started = False
        self.exit_status: int | None = None
        self.exited_at = 0
        self.reported = False
        self.open_outputs = 0
        self.master = -1
        self.stdin_copier: stdio.StdinCopier | None = None
        self.outputs: list[stdio.OutputCopier] = []
        self.waiters: list[tuple[Conn, object]] = []

    def status(self, paused: bool) -> str:
        if self.exit_status is not None:
            return "stopped"
        if not self.started:
            return "created"
        return "paused" if paused else "running"


class Conn:
    def __init__(self, shim: Shim, sock: _socket.socket) -> None:
        self.shim = shim
        self.sock = sock
        self.fd = sock.fileno()
        self.inbuf = b""
        self.outbuf = bytearray()
        self.closed = False
        self.subscribed = False
        sock.setblocking(False)
        shim.loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        self.inbuf += data
        while not self.closed and b"\n" in self.inbuf:
            line, self.inbuf = self.inbuf.split(b"\n", 1)
            if line.strip():
                self.shim.dispatch(self, line)

    def send(self, message: dict) -> None:
        if self.closed:
            return
        self.outbuf += wire.dumps(message).encode() + b"\n"
        self._flush()

    def _flush(self) -> None:
        try:
            sent = self.sock.send(self.outbuf)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.close()
            return
        del self.outbuf[:sent]
        if self.outbuf:
            self.shim.loop.add_writer(self.fd, self._flush)
        else:
            self.shim.loop.remove_writer(self.fd)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.shim.loop.remove_reader(self.fd)
        self.shim.loop.remove_writer(self.fd)
        self.shim.subscribers.discard(self)
        self.sock.close()


class Shim:
    def __init__(self, *, namespace: str, container_id: str, bundle: str, state_dir: str,
                 runtime: str, runtime_root: str, address: str) -> None:
        self.namespace, self.id, self.bundle = namespace, container_id, bundle
        self.state_dir, self.runtime, self.runtime_root = state_dir, runtime, runtime_root
        self.address = address
        self.loop = Loop()
        self.procs: dict[str, Proc] = {}
        self.by_pid: dict[int, Proc] = {}
        self.unclaimed: dict[int, int] = {}  # exits of pids not yet registered
        self.subscribers: set[Conn] = set()
        self.paused = False
        self.worker_pids: set[int] = set()
        self.worker_channel: _socket.socket | None = None
        self.worker_used = 0.0
        self.console_seq = 0
        os.makedirs(os.path.join(state_dir, "exits"), exist_ok=True)

    # ------------------------------------------------------------ plumbing

    def listen(self) -> None:
        try:
            os.unlink(self.address)
        except FileNotFoundError:
            pass
        self.listener = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        self.listener.bind(self.address)
        os.chmod(self.address, 0o600)
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.loop.add_reader(self.listener.fileno(), self._accept)
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wake_r = wake_r
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # only `shutdown` ends a shim
        self.loop.add_reader(wake_r, self._on_signal)

    def start_worker(self) -> None:
        """Fork the runtime worker now so its imports overlap the daemon's work."""
        if self.worker_channel is None:
            pid, self.worker_channel = worker.spawn(self.runtime, self.runtime_root)
            self.worker_pids.add(pid)
        self.worker_used = time.monotonic()
        self.loop.call_later(WORKER_IDLE_SECONDS, self._maybe_stop_worker)

    def _maybe_stop_worker(self) -> None:
        if self.worker_channel is None:
            return
        idle = time.monotonic() - self.worker_used
        if idle < WORKER_IDLE_SECONDS:
            self.loop.call_later(WORKER_IDLE_SECONDS - idle, self._maybe_stop_worker)
            return
        self._stop_worker()

    def _stop_worker(self) -> None:
        if self.worker_channel is not None:
            try:
                worker.send(self.worker_channel, {"op": "exit"})
            except OSError:
                pass
            self.worker_channel.close()
            self.worker_channel = None

    def _accept(self) -> None:
        try:
            fd, _ = self.listener._accept()
        except OSError:
            return
        Conn(self, _socket.socket(fileno=fd))

    def _on_signal(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass
        self.reap()

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            if code < 0:
                code = 128 - code  # killed by a signal: 128+n as a shell reports it
            if pid in self.worker_pids:
                self.worker_pids.discard(pid)
                continue
            proc = self.by_pid.get(pid)
            if proc is None:
                self.unclaimed[pid] = code
                continue
            self._exited(proc, code)

    def _register_pid(self, proc: Proc, pid: int) -> None:
        proc.pid = pid
        self.by_pid[pid] = proc
        if pid in self.unclaimed:
            self._exited(proc, self.unclaimed.pop(pid))

    def _exited(self, proc: Proc, code: int) -> None:
        if proc.exit_status is not None:
            return
        proc.exit_status = code
        proc.exited_at = time.time_ns()
        self.by_pid.pop(proc.pid, None)
        write_atomic(exit_file(self.state_dir, proc.exec_id), wire.dumps({
            "exec_id": proc.exec_id, "pid": proc.pid, "exit_status": code,
            "exited_at": proc.exited_at}).encode())
        if proc.exec_id == INIT:
            self.paused = False
        if proc.open_outputs == 0:
            self._report(proc)
        else:
            # Let the output reach its sink before anyone hears of the exit.
            self.loop.call_later(DRAIN_SECONDS, lambda: self._report(proc))

    def _output_done(self, proc: Proc) -> None:
        proc.open_outputs -= 1
        if proc.open_outputs <= 0 and proc.exit_status is not None:
            self._report(proc)

    def _report(self, proc: Proc) -> None:
        if proc.reported:
            return
        proc.reported = True
        for copier in proc.outputs:
            copier.drain_now()
            copier.finish()
        if proc.master >= 0:
            os.close(proc.master)
            proc.master = -1
        result = {"exit_status": proc.exit_status, "exited_at": proc.exited_at, "pid": proc.pid}
        for conn, request_id in proc.waiters:
            conn.send({"id": request_id, "result": result})
        proc.waiters.clear()
        self.publish({"type": "exit", "id": self.id, "exec_id": proc.exec_id, **result})

    def publish(self, event: dict) -> None:
        for conn in list(self.subscribers):
            conn.send({"event": event})

    # ---------------------------------------------------------------- rpc

    def dispatch(self, conn: Conn, line: bytes) -> None:
        request_id = None
        try:
            request = wire.loads(line)
            request_id = request.get("id")
            handler = getattr(self, "rpc_" + str(request.get("method")), None)
            if handler is None:
                raise ShimError("NotImplementedFeature",
                                f"shim: unknown method {request.get('method')!r}")
            result = handler(conn, request_id, request.get("params") or {})
        except ShimError as exc:
            conn.send({"id": request_id, "error": {"kind": exc.kind, "message": str(exc)}})
            return
        except stdio.StdioError as exc:
            conn.send({"id": request_id, "error": {"kind": exc.kind, "message": str(exc)}})
            return
        except Exception as exc:  # noqa: BLE001 - a bad request must not end the shim
            conn.send({"id": request_id, "error": {"kind": "Unknown",
                                                   "message": f"shim: {type(exc).__name__}: {exc}"}})
            return
        if result is not _DEFER:
            conn.send({"id": request_id, "result": result})

    def _proc(self, params: dict) -> Proc:
        exec_id = params.get("exec_id") or INIT
        proc = self.procs.get(exec_id)
        if proc is None:
            what = f"process {exec_id!r}" if exec_id else f"task {self.id}"
            raise ShimError("NotFound", f"{what}: not found")
        return proc

    def _worker(self, request: dict, fds: list[int] = (), console=None) -> tuple[object, int]:
        """One runtime operation, synchronously; returns (result, pty master or -1)."""
        import select
        request = {"id": self.id, "bundle": self.bundle, "root": self.runtime_root, **request}
        for attempt in (0, 1):
            self.start_worker()
            try:
                worker.send(self.worker_channel, request, fds)
                break
            except OSError:
                self._stop_worker()
                if attempt:
                    raise ShimError("Unavailable", "shim: runtime worker is gone") from None
        channel = self.worker_channel
        master = -1
        response = None
        while response is None:
            watch = [channel] + ([console] if console is not None and master < 0 else [])
            try:
                ready, _, _ = select.select(watch, [], [], 120)
            except InterruptedError:
                continue
            if not ready:
                self._stop_worker()
                raise ShimError("Unavailable", f"shim: runtime {request['op']} timed out")
            if console is not None and console in ready:
                master = _receive_master(console)
            if channel in ready:
                response, _ = worker.receive(channel)
                if response is None:
                    self._stop_worker()
                    response = {"error": {"kind": "Unavailable",
                                          "message": "shim: runtime worker exited"}}
        self.worker_used = time.monotonic()
        if "error" in response:
            if master >= 0:
                os.close(master)
            raise ShimError(response["error"]["kind"], response["error"]["message"])
        return response["result"], master

    # ---------------------------------------------------------- lifecycle

    def rpc_info(self, conn, request_id, params) -> dict:
        init = self.procs.get(INIT)
        return {"shim_pid": os.getpid(), "id": self.id, "namespace": self.namespace,
                "bundle": self.bundle, "pid": init.pid if init else 0, "version": 1}

    def rpc_adopt(self, conn, request_id, params) -> dict:
        """A spare shim (started ahead, its worker already warm) becomes this task's."""
        if self.procs:
            raise ShimError("FailedPrecondition", f"shim already serves task {self.id}")
        self.namespace, self.id = params["namespace"], params["id"]
        self.bundle = params["bundle"]
        self.runtime_root = params.get("runtime_root") or self.runtime_root
        self.state_dir = params["state_dir"]
        os.makedirs(os.path.join(self.state_dir, "exits"), exist_ok=True)
        log = os.open(os.path.join(self.state_dir, "shim.log"),
                      os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        os.dup2(log, 1, inheritable=False)
        os.dup2(log, 2, inheritable=False)
        os.close(log)
        self.write_state()
        return self.rpc_info(conn, request_id, params)

    def write_state(self) -> None:
        write_atomic(os.path.join(self.state_dir, "shim.json"), wire.dumps({
            "pid": os.getpid(), "address": self.address, "namespace": self.namespace,
            "id": self.id, "bundle": self.bundle, "runtime": self.runtime,
            "runtime_root": self.runtime_root}).encode())

    def rpc_create(self, conn, request_id, params) -> dict:
        if INIT in self.procs:
            raise ShimError("AlreadyExists", f"task {self.id}: already exists")
        proc = Proc(INIT, params.get("stdin", ""), params.get("stdout", ""),
                    params.get("stderr", ""), bool(params.get("terminal")))
        self._spawn(proc, {"op": "create"})
        self.procs[INIT] = proc
        return {"pid": proc.pid}

    def rpc_exec(self, conn, request_id, params) -> dict:
        init = self._proc({})
        exec_id = params.get("exec_id") or ""
        if not exec_id:
            raise ShimError("InvalidArgument", "exec: an exec id is required")
        if exec_id in self.procs:
            raise ShimError("AlreadyExists", f"exec {exec_id!r} in task {self.id}: already exists")
        if init.exit_status is not None:
            raise ShimError("FailedPrecondition", f"task {self.id}: cannot exec in a stopped task")
        process = params.get("process")
        if not isinstance(process, dict):
            raise ShimError("InvalidArgument", "exec: process spec is required")
        terminal = bool(params.get("terminal", process.get("terminal")))
        process["terminal"] = terminal
        self.procs[exec_id] = Proc(exec_id, params.get("stdin", ""), params.get("stdout", ""),
                                   params.get("stderr", ""), terminal, process)
        return {}

    def _spawn(self, proc: Proc, request: dict) -> None:
        """Make the process through the runtime with its stdio wired to us.

        Sinks and copiers exist before the process does, so a bad stdio URI
        fails the request before anything runs, and not a byte is missed.
        """
        shared: dict = {}
        theirs: list[int] = []  # the container's ends, closed here once it has them
        fds: list[int] = []
        names: list[str] = []
        console = None
        console_path = ""
        ok = False
        try:
            if proc.terminal:
                self.console_seq += 1
                console_path = f"/tmp/.dockyard-console-{os.getpid()}-{self.console_seq}.sock"
                console = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
                console.bind(console_path)
                console.listen(1)
                request["console_socket"] = console_path
                terminal_sink = stdio.open_sink(self.loop, proc.stdout, shared)
            else:
                self._wire_pipes(proc, shared, theirs, fds, names)
                request["stdio"] = names
            if proc.process is not None:
                request["process"] = proc.process
            result, master = self._worker(request, fds, console)
            if proc.terminal:
                if master < 0:
                    raise ShimError("FailedPrecondition",
                                    f"task {self.id}: the runtime sent no terminal")
                self._attach_terminal(proc, master, terminal_sink)
            self._register_pid(proc, int(result["pid"]))
            ok = True
        finally:
            for fd in theirs:
                os.close(fd)
            if console is not None:
                console.close()
                try:
                    os.unlink(console_path)
                except OSError:
                    pass
            if not ok:
                self._teardown_io(proc)

    def _wire_pipes(self, proc: Proc, shared: dict, theirs: list[int], fds: list[int],
                    names: list[str]) -> None:
        null = -1
        for name in ("stdin", "stdout", "stderr"):
            uri = getattr(proc, name)
            names.append(name)
            if not uri:
                if null < 0:
                    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                    theirs.append(null)
                fds.append(null)
                continue
            read_end, write_end = os.pipe2(os.O_CLOEXEC)
            if name == "stdin":
                theirs.append(read_end)
                fds.append(read_end)
                try:
                    proc.stdin_copier = stdio.StdinCopier(self.loop, uri, write_end,
                                                          owns_target=True)
                except stdio.StdioError:
                    os.close(write_end)
                    raise
                continue
            theirs.append(write_end)
            fds.append(write_end)
            try:
                sink = stdio.open_sink(self.loop, uri, shared)
            except stdio.StdioError:
                os.close(read_end)
                raise
            proc.open_outputs += 1
            proc.outputs.append(stdio.OutputCopier(
                self.loop, read_end, name, sink, lambda: self._output_done(proc)))

    def _attach_terminal(self, proc: Proc, master: int, sink) -> None:
        proc.master = master
        proc.open_outputs = 1
        proc.outputs.append(stdio.OutputCopier(
            self.loop, master, "stdout", sink, lambda: self._output_done(proc), owns_fd=False))
        if proc.stdin:
            proc.stdin_copier = stdio.StdinCopier(self.loop, proc.stdin, master,
                                                  owns_target=False)

    def _teardown_io(self, proc: Proc) -> None:
        proc.reported = True  # nothing to report for a process that never ran
        for copier in proc.outputs:
            copier.on_eof = lambda: None
            copier.finish()
        proc.outputs.clear()
        proc.open_outputs = 0
        if proc.stdin_copier is not None:
            proc.stdin_copier.close()
            proc.stdin_copier = None
        if proc.master >= 0:
            os.close(proc.master)
            proc.master = -1
        proc.reported = False

    def rpc_start(self, conn, request_id, params) -> dict:
        proc = self._proc(params)
        if proc.started:
            raise ShimError("FailedPrecondition",
                            f"process {proc.exec_id or self.id}: already started")
        if proc.exec_id == INIT:
            if proc.exit_status is not None:
                raise ShimError("FailedPrecondition", f"task {self.id}: exited before start")
            self._worker({"op": "start"})
            proc.started = True
        else:
            init = self._proc({})
            if init.exit_status is not None:
                raise ShimError("FailedPrecondition", f"task {self.id}: is stopped")
            self._spawn(proc, {"op": "exec"})
            proc.started = True
        return {"pid": proc.pid}

    def _state(self, proc: Proc) -> dict:
        return {"id": self.id, "exec_id": proc.exec_id, "pid": proc.pid,
                "status": proc.status(self.paused and proc.exec_id == INIT),
                "exit_status": proc.exit_status if proc.exit_status is not None else 0,
                "exited_at": proc.exited_at, "stdin": proc.stdin, "stdout": proc.stdout,
                "stderr": proc.stderr, "terminal": proc.terminal, "bundle": self.bundle}

    def rpc_state(self, conn, request_id, params) -> dict:
        return self._state(self._proc(params))

    def rpc_list(self, conn, request_id, params) -> list:
        return [self._state(p) for p in self.procs.values()]

    def rpc_kill(self, conn, request_id, params) -> dict:
        proc = self._proc(params)
        sig = int(params.get("signal") or signal.SIGTERM)
        if params.get("all") and proc.exec_id == INIT:
            self._worker({"op": "kill", "signal": sig, "all": True})
            return {}
        if proc.exit_status is not None or not proc.pid:
            raise ShimError("NotFound", f"process {proc.exec_id or self.id}: "
                                        "process already finished")
        try:
            os.kill(proc.pid, sig)  # still our unreaped child: the pid cannot be reused
        except ProcessLookupError:
            raise ShimError("NotFound", "process already finished") from None
        if self.paused and proc.exec_id == INIT and sig == signal.SIGKILL:
            pass  # SIGKILL is delivered even to frozen tasks on cgroup v2
        return {}

    def rpc_wait(self, conn, request_id, params):
        proc = self._proc(params)
        if proc.reported:
            return {"exit_status": proc.exit_status, "exited_at": proc.exited_at,
                    "pid": proc.pid}
        proc.waiters.append((conn, request_id))
        return _DEFER

    def rpc_subscribe(self, conn, request_id, params):
        conn.subscribed = True
        self.subscribers.add(conn)
        return {}

    def rpc_pids(self, conn, request_id, params) -> list:
        init = self._proc({})
        if init.exit_status is not None:
            return []
        pids, _ = self._worker({"op": "pids"})
        owner = {p.pid: p.exec_id for p in self.procs.values() if p.exit_status is None}
        return [{"pid": pid, "exec_id": owner.get(pid, "")} for pid in pids]

    def rpc_pause(self, conn, request_id, params) -> dict:
        self._worker({"op": "pause"})
        self.paused = True
        self.publish({"type": "paused", "id": self.id})
        return {}

    def rpc_resume(self, conn, request_id, params) -> dict:
        self._worker({"op": "resume"})
        self.paused = False
        self.publish({"type": "resumed", "id": self.id})
        return {}

    def rpc_stats(self, conn, request_id, params) -> dict:
        result, _ = self._worker({"op": "stats"})
        return result

    def rpc_update(self, conn, request_id, params) -> dict:
        self._worker({"op": "update", "resources": params.get("resources") or {}})
        return {}

    def rpc_resize(self, conn, request_id, params) -> dict:
        proc = self._proc(params)
        if proc.master < 0:
            raise ShimError("FailedPrecondition",
                            f"process {proc.exec_id or self.id}: has no terminal")
        import fcntl
        import termios
        fcntl.ioctl(proc.master, termios.TIOCSWINSZ, struct.pack(
            "HHHH", int(params.get("height") or 0), int(params.get("width") or 0), 0, 0))
        return {}

    def rpc_close_io(self, conn, request_id, params) -> dict:
        proc = self._proc(params)
        if proc.stdin_copier is not None:
            proc.stdin_copier.close()
        return {}

    def rpc_delete(self, conn, request_id, params) -> dict:
        proc = self._proc(params)
        if proc.exit_status is None and proc.started:
            raise ShimError("FailedPrecondition",
                            f"process {proc.exec_id or self.id}: must be stopped before "
                            f"deletion: {proc.status(self.paused)}")
        if proc.exec_id == INIT:
            if proc.exit_status is None and proc.pid:
                # Created but never started: it waits on the exec fifo; end it.
                os.kill(proc.pid, signal.SIGKILL)
                _wait_child(proc.pid)
                self.by_pid.pop(proc.pid, None)
                self._exited(proc, 128 + signal.SIGKILL)
            self._worker({"op": "delete", "force": True})
            self._stop_worker()
        if proc.stdin_copier is not None:
            proc.stdin_copier.close()
        if not proc.reported:
            self._report(proc)
        del self.procs[proc.exec_id]
        return {"pid": proc.pid, "exit_status": proc.exit_status or 0,
                "exited_at": proc.exited_at}

    def rpc_shutdown(self, conn, request_id, params) -> dict:
        init = self.procs.get(INIT)
        if init is not None and init.exit_status is None and not params.get("force"):
            raise ShimError("FailedPrecondition",
                            f"task {self.id}: still running; delete it before shutdown")
        self.loop.call_later(0, self._exit)
        return {}

    def _exit(self) -> None:
        self._stop_worker()
        try:
            os.unlink(self.address)
        except OSError:
            pass
        self.loop.running = False


def _wait_child(pid: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done:
            return
        time.sleep(0.005)


def _receive_master(listener: _socket.socket) -> int:
    fd, _ = listener._accept()
    sock = _socket.socket(fileno=fd)
    try:
        _data, ancillary, _flags, _addr = sock.recvmsg(4096, _socket.CMSG_SPACE(16))
    except OSError as exc:
        if exc.errno == errno.EINTR:
            _data, ancillary, _flags, _addr = sock.recvmsg(4096, _socket.CMSG_SPACE(16))
        else:
            raise
    finally:
        sock.close()
    for level, kind, payload in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS and len(payload) >= 4:
            fd = struct.unpack("i", payload[:4])[0]
            os.set_inheritable(fd, False)
            return fd
    raise ShimError("FailedPrecondition", "console socket: no terminal descriptor received")
