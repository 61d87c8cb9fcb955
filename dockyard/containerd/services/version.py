"""containerd.services.version.v1.Version."""

from __future__ import annotations

import grpc

from dockyard.containerd.api.services.version.v1 import version_pb2, version_pb2_grpc
from dockyard.containerd.context import REVISION, VERSION, DaemonContext
from dockyard.containerd.grpcerrors import rpc


class VersionService(version_pb2_grpc.VersionServicer):
    @rpc
    async def Version(self, request, context):  # noqa: N802 -- gRPC method name
        return version_pb2.VersionResponse(version=VERSION, revision=REVISION)


def register(server: grpc.aio.Server, context: DaemonContext) -> None:
    version_pb2_grpc.add_VersionServicer_to_server(VersionService(), server)
