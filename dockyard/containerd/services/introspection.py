"""containerd.services.introspection.v1.Introspection: plugins and server identity."""

from __future__ import annotations

import os
import platform

import grpc

from dockyard.containerd import filters
from dockyard.containerd.api.google.rpc import status_pb2
from dockyard.containerd.api.services.introspection.v1 import (
    introspection_pb2,
    introspection_pb2_grpc,
)
from dockyard.containerd.api.types import platform_pb2
from dockyard.containerd.context import (
    CONTENT_PLUGIN_DIR,
    SNAPSHOTTER_PLUGIN_DIR,
    DaemonContext,
)
from dockyard.containerd.grpcerrors import rpc

_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386",
         "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}
_UNKNOWN = grpc.StatusCode.UNKNOWN.value[0]

# grpc service module -> containerd plugin id (io.containerd.grpc.v1.<id>)
_GRPC_IDS = {"health": "healthcheck"}


def host_platform() -> platform_pb2.Platform:
    machine = platform.machine()
    return platform_pb2.Platform(os="linux", architecture=_ARCH.get(machine, machine))


def _plugin(ptype: str, pid: str, *, requires: tuple[str, ...] = (),
            exports: dict[str, str] | None = None, platforms: bool = False,
            error: str | None = None) -> introspection_pb2.Plugin:
    pb = introspection_pb2.Plugin(type=ptype, id=pid, requires=list(requires),
                                  exports=exports or {})
    if platforms:
        pb.platforms.append(host_platform())
    if error:
        pb.init_err.CopyFrom(status_pb2.Status(code=_UNKNOWN, message=error))
    return pb


def plugins(ctx: DaemonContext) -> list[introspection_pb2.Plugin]:
    """What this daemon provides, described the way containerd describes its plugins."""
    registry = ctx.registry
    loaded = list(registry.loaded) if registry else []
    failed = dict(registry.failed) if registry else {}
    out = [
        _plugin("io.containerd.content.v1", "content",
                exports={"root": str(ctx.root / CONTENT_PLUGIN_DIR)}),
    ]
    for name in ctx.snapshotters.names():
        ctx.snapshotters.get(name)  # open it, so a failure shows as init_err
        out.append(_plugin(
            "io.containerd.snapshotter.v1", name, platforms=True,
            exports={"root": str(ctx.root / SNAPSHOTTER_PLUGIN_DIR.format(name=name))},
            error=ctx.snapshotters.errors.get(name)))
    out.append(_plugin("io.containerd.metadata.v1", "sqlite",
                       requires=("io.containerd.content.v1", "io.containerd.snapshotter.v1")))
    if ctx.gc_hook is not None:
        out.append(_plugin("io.containerd.gc.v1", "scheduler",
                           requires=("io.containerd.metadata.v1",)))
    if "diff" in loaded:
        out.append(_plugin("io.containerd.differ.v1", "walking", platforms=True,
                           requires=("io.containerd.metadata.v1",)))
    if ctx.tasks is not None or "task" in ctx.plugin_errors:
        out.append(_plugin("io.containerd.runtime.v2", "task", platforms=True,
                           requires=("io.containerd.event.v1", "io.containerd.metadata.v1"),
                           exports={"root": str(ctx.root / "io.containerd.runtime.v2.task"),
                                    "state": str(ctx.state / "io.containerd.runtime.v2.task")},
                           error=ctx.plugin_errors.get("task")))
    for name in sorted(loaded):
        out.append(_plugin("io.containerd.grpc.v1", _GRPC_IDS.get(name, name),
                           requires=("io.containerd.service.v1",)))
    for name, error in sorted(failed.items()):
        out.append(_plugin("io.containerd.grpc.v1", _GRPC_IDS.get(name, name), error=error))
    return out


def _pidns() -> int:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


class IntrospectionService(introspection_pb2_grpc.IntrospectionServicer):
    def __init__(self, ctx: DaemonContext) -> None:
        self.ctx = ctx
        self._uuid = ctx.server_uuid()

    @rpc
    async def Plugins(self, request, context):  # noqa: N802
        fs = filters.parse_all(list(request.filters))
        return introspection_pb2.PluginsResponse(
            plugins=[p for p in plugins(self.ctx) if fs.match(filters.message_adaptor(p))])

    @rpc
    async def Server(self, request, context):  # noqa: N802
        return introspection_pb2.ServerResponse(uuid=self._uuid, pid=os.getpid(),
                                                pidns=_pidns())


def register(server: grpc.aio.Server, context: DaemonContext) -> None:
    introspection_pb2_grpc.add_IntrospectionServicer_to_server(
        IntrospectionService(context), server)
