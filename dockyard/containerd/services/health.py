"""grpc.health.v1.Health (containerd's io.containerd.grpc.v1.healthcheck): the daemon
answers SERVING while it runs, for every service name."""

from __future__ import annotations

import asyncio

import grpc

from dockyard.containerd.api.grpc.health.v1 import health_pb2, health_pb2_grpc
from dockyard.containerd.context import DaemonContext
from dockyard.containerd.grpcerrors import rpc

SERVING = health_pb2.HealthCheckResponse.SERVING


class HealthService(health_pb2_grpc.HealthServicer):
    @rpc
    async def Check(self, request, context):  # noqa: N802
        return health_pb2.HealthCheckResponse(status=SERVING)

    @rpc
    async def Watch(self, request, context):  # noqa: N802
        yield health_pb2.HealthCheckResponse(status=SERVING)
        # the status never changes while the server runs; hold the stream open
        await asyncio.Event().wait()


def register(server: grpc.aio.Server, context: DaemonContext) -> None:
    health_pb2_grpc.add_HealthServicer_to_server(HealthService(), server)
