"""The gRPC server of dockyard-containerd: registers the service modules, binds the socket.

Each module in SERVICE_MODULES (under dockyard.containerd.services) exposes
`register(server, context)`. A module that does not exist yet is skipped; one that
fails to import or register is reported by Introspection with its error (init_err),
and the daemon serves the rest.

Task manager protocol (helper C): DaemonContext.load_tasks() builds it; if it has an
`async start()` it is awaited BEFORE the socket is bound (so a client that sees the
socket sees restored tasks); `close()` (sync or async) runs at shutdown; shims are
never stopped by a daemon shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import logging
import os
import socket
import time
from dataclasses import dataclass, field

import grpc

from dockyard import errdefs
from dockyard.containerd.context import DaemonContext

log = logging.getLogger(__name__)

SERVICE_MODULES = (
    "version",
    "namespaces",
    "containers",
    "leases",
    "events",
    "introspection",
    "health",
    "content",
    "images",
    "snapshots",
    "diff",
    "transfer",
    "tasks",
)

MAX_MESSAGE = 16 << 20  # containerd's default gRPC message limit


@dataclass
class Registry:
    """Which service modules loaded (for Introspection)."""

    loaded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def register_services(server: grpc.aio.Server, context: DaemonContext) -> Registry:
    registry = Registry()
    context.registry = registry
    for name in SERVICE_MODULES:
        modname = f"dockyard.containerd.services.{name}"
        try:
            module = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name == modname:
                log.debug("service %s not present; skipped", name)
                continue
            registry.failed[name] = str(exc)
            log.error("service %s failed to import: %s", name, exc)
            continue
        except Exception as exc:  # noqa: BLE001 -- one broken service must not stop the rest
            registry.failed[name] = f"{type(exc).__name__}: {exc}"
            log.exception("service %s failed to import", name)
            continue
        try:
            module.register(server, context)
        except Exception as exc:  # noqa: BLE001
            registry.failed[name] = f"{type(exc).__name__}: {exc}"
            log.exception("service %s failed to register", name)
            continue
        registry.loaded.append(name)
    log.debug("services: %s", ", ".join(registry.loaded))
    return registry


def _socket_in_use(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(path)
        except OSError:
            return False
        return True


def prepare_socket(path: str) -> None:
    """Remove a stale socket; refuse to start over a live one."""
    os.makedirs(os.path.dirname(path) or ".", mode=0o711, exist_ok=True)
    if os.path.exists(path):
        if _socket_in_use(path):
            raise errdefs.FailedPrecondition(
                f"{path} is in use by another daemon: stop it or pass a different --address"
            )
        os.unlink(path)


async def _maybe_await(value: object) -> None:
    if inspect.isawaitable(value):
        await value


class Daemon:
    """One running dockyard-containerd; `await run()` until `stop()`."""

    def __init__(self, context: DaemonContext) -> None:
        self.context = context
        self.server: grpc.aio.Server | None = None
        self._stopping = asyncio.Event()
        self._bound = False

    async def start(self) -> None:
        ctx = self.context
        t0 = time.monotonic()
        ctx.events.bind(asyncio.get_running_loop())
        ctx.load_tasks()
        t1 = time.monotonic()
        if ctx.tasks is not None and hasattr(ctx.tasks, "start"):
            try:
                await _maybe_await(ctx.tasks.start())
            except Exception as exc:  # noqa: BLE001
                ctx.plugin_errors["task"] = str(exc)
                log.exception("task manager failed to restore tasks")
        t2 = time.monotonic()
        self.server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ])
        register_services(self.server, ctx)
        t3 = time.monotonic()
        log.debug("start-up: task manager load %.0f ms, restore %.0f ms, services %.0f ms",
                  (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3)
        prepare_socket(ctx.address)  # again: a stale one may have appeared meanwhile
        # bind with a restrictive umask: the socket is root's API (containerd: 0660)
        old = os.umask(0o117)
        try:
            port = self.server.add_insecure_port(f"unix://{ctx.address}")
        finally:
            os.umask(old)
        if not port:
            raise errdefs.Unavailable(f"cannot listen on {ctx.address}")
        self._bound = True
        await self.server.start()
        log.info("dockyard-containerd serving on %s", ctx.address)

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        # Refused before anything starts: nothing to shut down, and the live
        # socket is another daemon's.
        prepare_socket(self.context.address)
        try:
            await self.start()
        except BaseException:
            await self.shutdown()
            raise
        try:
            await self._stopping.wait()
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        log.info("shutting down")
        self.context.events.close()  # ends Subscribe streams so the grace period is short
        if self.server is not None:
            await self.server.stop(grace=1.0)
        tasks = self.context.tasks
        if tasks is not None and hasattr(tasks, "close"):
            try:
                await _maybe_await(tasks.close())
            except Exception:  # noqa: BLE001
                log.exception("closing task manager")
        if self._bound:  # only our own socket, never a live daemon's we refused
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.context.address)
        self.context.close()
