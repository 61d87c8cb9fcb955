"""containerd.services.namespaces.v1.Namespaces (namespaces are not namespaced)."""

from __future__ import annotations

import grpc
from google.protobuf import empty_pb2

from dockyard import errdefs
from dockyard.containerd import filters
from dockyard.containerd.api.events import namespace_pb2 as ev
from dockyard.containerd.api.services.namespaces.v1 import namespace_pb2, namespace_pb2_grpc
from dockyard.containerd.context import DaemonContext
from dockyard.containerd.grpcerrors import (
    NAMESPACE_HEADER,
    metadata_value,
    rpc,
    validate_identifier,
)
from dockyard.containerd.metadata import Namespace


def _event_ns(context, default: str) -> str:  # noqa: ANN001
    # containerd publishes create/update in the caller's namespace (the request
    # header), delete in the deleted one
    return metadata_value(context, NAMESPACE_HEADER) or default


def _to_pb(ns: Namespace) -> namespace_pb2.Namespace:
    return namespace_pb2.Namespace(name=ns.name, labels=ns.labels)


class NamespacesService(namespace_pb2_grpc.NamespacesServicer):
    def __init__(self, ctx: DaemonContext) -> None:
        self.ctx = ctx

    @rpc
    async def Get(self, request, context):  # noqa: N802
        try:
            ns = self.ctx.metadata.get_namespace(request.name)
        except errdefs.NotFound:
            # containerd 1.6 answers a Get of an unknown namespace with empty labels
            ns = Namespace(request.name)
        return namespace_pb2.GetNamespaceResponse(namespace=_to_pb(ns))

    @rpc
    async def List(self, request, context):  # noqa: N802
        fs = filters.parse_all([request.filter])
        out = []
        for ns in self.ctx.metadata.list_namespaces():
            pb = _to_pb(ns)
            if fs.match(filters.message_adaptor(pb)):
                out.append(pb)
        return namespace_pb2.ListNamespacesResponse(namespaces=out)

    @rpc
    async def Create(self, request, context):  # noqa: N802
        name = validate_identifier("namespace", request.namespace.name)
        ns = self.ctx.metadata.create_namespace(name, dict(request.namespace.labels))
        self.ctx.events.publish(_event_ns(context, name), "/namespaces/create",
                                ev.NamespaceCreate(name=name, labels=ns.labels))
        return namespace_pb2.CreateNamespaceResponse(namespace=_to_pb(ns))

    @rpc
    async def Update(self, request, context):  # noqa: N802
        name = validate_identifier("namespace", request.namespace.name)
        paths = list(request.update_mask.paths) if request.HasField("update_mask") else []
        for path in paths:
            if not path.startswith("labels."):
                raise errdefs.InvalidArgument(f'cannot update "{path}" field')
        # like containerd, setting labels creates the namespace if it does not exist
        self.ctx.touch_namespace(name)
        current = self.ctx.metadata.get_namespace(name)
        labels = dict(current.labels)
        if not paths:
            labels = {k: v for k, v in request.namespace.labels.items() if v}
        for path in paths:
            if path.startswith("labels."):
                key = path[len("labels."):]
                value = request.namespace.labels.get(key, "")
                if value:
                    labels[key] = value
                else:
                    labels.pop(key, None)
        ns = self.ctx.metadata.set_namespace_labels(name, labels)
        self.ctx.events.publish(_event_ns(context, name), "/namespaces/update",
                                ev.NamespaceUpdate(name=name, labels=ns.labels))
        return namespace_pb2.UpdateNamespaceResponse(namespace=_to_pb(ns))

    @rpc
    async def Delete(self, request, context):  # noqa: N802
        name = request.name
        self.ctx.metadata.delete_namespace(name, self.ctx.namespace_in_use(name))
        self.ctx.events.publish(name, "/namespaces/delete", ev.NamespaceDelete(name=name))
        return empty_pb2.Empty()


def register(server: grpc.aio.Server, context: DaemonContext) -> None:
    namespace_pb2_grpc.add_NamespacesServicer_to_server(NamespacesService(context), server)
