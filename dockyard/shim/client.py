"""Talking to a shim: launch one, call it (blocking or asyncio), read what
it left on disk when it is gone. Used by dockyard-containerd and tests.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass

from dockyard import errdefs

_KINDS = {name: getattr(errdefs, name) for name in (
    "NotFound", "AlreadyExists", "Conflict", "InvalidArgument", "FailedPrecondition",
    "Unavailable", "NotImplementedFeature", "DataLoss", "Unauthorized")}


@dataclass(frozen=True)
class ShimConfig:
    namespace: str
    id: str
    bundle: str
    state_dir: str
    address: str
    runtime: str = "builtin"
    runtime_root: str = ""


def shim_command(config: ShimConfig) -> tuple[list[str], dict[str, str]]:
    """The shim's command line: `python -S` keeps site-packages (and its
    .pth imports) out of the shim; the package is found through PYTHONPATH."""
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = package_parent
    env.pop("PYTHONSTARTUP", None)
    argv = [sys.executable, "-S", "-m", "dockyard.shim.main",
            "--namespace", config.namespace, "--id", config.id, "--bundle", config.bundle,
            "--state-dir", config.state_dir, "--address", config.address,
            "--runtime", config.runtime or "builtin"]
    if config.runtime_root:
        argv += ["--runtime-root", config.runtime_root]
    return argv, env


def _parse_ready(output: str, config: ShimConfig) -> int:
    line = output.strip().splitlines()[-1] if output.strip() else "error no output"
    if not line.startswith("ok "):
        raise errdefs.Unavailable(f"shim for task {config.id} failed to start: "
                                  f"{line.removeprefix('error ')}")
    return int(line.split()[1])


def launch(config: ShimConfig) -> int:
    """Start a shim and return its pid once its socket listens."""
    argv, env = shim_command(config)
    proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=30, text=True)
    return _parse_ready(proc.stdout, config)


async def launch_async(config: ShimConfig) -> int:
    argv, env = shim_command(config)
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)
    output, _ = await proc.communicate()
    return _parse_ready(output.decode(errors="replace"), config)


def _raise(error: dict, address: str) -> None:
    kind = _KINDS.get(error.get("kind", ""), errdefs.DockyardError)
    raise kind(error.get("message") or f"shim at {address}: {error}")


def read_exit(state_dir: str, exec_id: str = "") -> dict | None:
    """The exit record the shim wrote, or None when the process has not exited."""
    path = os.path.join(state_dir, "exits", f"{exec_id or 'init'}.json")
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None


def read_shim_state(state_dir: str) -> dict | None:
    try:
        with open(os.path.join(state_dir, "shim.json"), "rb") as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None


class ShimClient:
    """Blocking client: one connection, one call at a time."""

    def __init__(self, address: str, timeout: float | None = 60) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(address)
        except OSError as exc:
            self.sock.close()
            raise errdefs.Unavailable(f"shim at {address}: {exc.strerror or exc}") from exc
        self._file = self.sock.makefile("rb")
        self._ids = itertools.count(1)

    def call(self, method: str, **params) -> object:
        request_id = next(self._ids)
        self.sock.sendall(json.dumps({"id": request_id, "method": method,
                                      "params": params}).encode() + b"\n")
        while True:
            line = self._file.readline()
            if not line:
                raise errdefs.Unavailable(f"shim at {self.address}: connection closed")
            message = json.loads(line)
            if message.get("id") != request_id:
                continue
            if "error" in message:
                _raise(message["error"], self.address)
            return message.get("result")

    def events(self):
        """Subscribe, then yield events until the shim goes away."""
        self.call("subscribe")
        while line := self._file.readline():
            message = json.loads(line)
            if "event" in message:
                yield message["event"]

    def close(self) -> None:
        self._file.close()
        self.sock.close()

    def __enter__(self) -> ShimClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncShimClient:
    """asyncio client: calls multiplexed on one connection by request id."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task | None = None
        self._events: asyncio.Queue | None = None
        self._lock = asyncio.Lock()

    async def connect(self) -> AsyncShimClient:
        try:
            self._reader, self._writer = await asyncio.open_unix_connection(
                self.address, limit=1 << 24)
        except OSError as exc:
            raise errdefs.Unavailable(f"shim at {self.address}: {exc.strerror or exc}") from exc
        self._task = asyncio.create_task(self._read_loop())
        return self

    async def _read_loop(self) -> None:
        assert self._reader is not None
        try:
            while line := await self._reader.readline():
                message = json.loads(line)
                if "event" in message:
                    if self._events is not None:
                        self._events.put_nowait(message["event"])
                    continue
                future = self._pending.pop(message.get("id"), None)
                if future is not None and not future.done():
                    future.set_result(message)
        except (OSError, ValueError, asyncio.IncompleteReadError):
            pass
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(errdefs.Unavailable(
                        f"shim at {self.address}: connection closed"))
            self._pending.clear()
            if self._events is not None:
                self._events.put_nowait(None)

    @property
    def closed(self) -> bool:
        return self._task is None or self._task.done()

    async def call(self, method: str, **params) -> object:
        if self.closed:
            raise errdefs.Unavailable(f"shim at {self.address}: connection closed")
        request_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        assert self._writer is not None
        self._writer.write(json.dumps({"id": request_id, "method": method,
                                       "params": params}).encode() + b"\n")
        try:
            await self._writer.drain()
        except OSError as exc:
            self._pending.pop(request_id, None)
            raise errdefs.Unavailable(f"shim at {self.address}: {exc}") from exc
        message = await future
        if "error" in message:
            _raise(message["error"], self.address)
        return message.get("result")

    async def subscribe(self) -> asyncio.Queue:
        """A queue of events (None once the shim is gone)."""
        self._events = asyncio.Queue()
        await self.call("subscribe")
        return self._events

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
