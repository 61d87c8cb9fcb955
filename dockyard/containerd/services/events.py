"""containerd.services.events.v1.Events: publish, forward, subscribe with filters."""

from __future__ import annotations

import grpc
from google.protobuf import empty_pb2

from dockyard import errdefs
from dockyard.containerd import filters
from dockyard.containerd.api.services.events.v1 import events_pb2_grpc
from dockyard.containerd.context import DaemonContext
from dockyard.containerd.grpcerrors import namespace_of, rpc, validate_identifier


class EventsService(events_pb2_grpc.EventsServicer):
    def __init__(self, ctx: DaemonContext) -> None:
        self.ctx = ctx

    @rpc
    async def Publish(self, request, context):  # noqa: N802
        ns = namespace_of(context)
        if not request.HasField("event"):
            raise errdefs.InvalidArgument("event must not be empty")
        self.ctx.events.publish_any(ns, request.topic, request.event)
        return empty_pb2.Empty()

    @rpc
    async def Forward(self, request, context):  # noqa: N802
        env = request.envelope
        validate_identifier("namespace", env.namespace)
        if not env.HasField("event"):
            raise errdefs.InvalidArgument("event must not be empty")
        from dockyard.containerd.exchange import validate_topic

        validate_topic(env.topic)
        self.ctx.events.forward(env)
        return empty_pb2.Empty()

    @rpc
    async def Subscribe(self, request, context):  # noqa: N802
        filters.parse_all(list(request.filters))  # reject bad filters before streaming
        sub = self.ctx.events.subscribe(list(request.filters))
        try:
            async for env in sub:
                yield env
        finally:
            sub.close()


def register(server: grpc.aio.Server, context: DaemonContext) -> None:
    events_pb2_grpc.add_EventsServicer_to_server(EventsService(context), server)
