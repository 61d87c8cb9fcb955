"""containerd.services.leases.v1.Leases over dockyard.image.leases.LeaseManager.

Leases are per namespace: stored under DaemonContext.lease_key(ns, id). Deleting a
lease schedules a garbage collection (context.gc_hook, installed by dockyard.containerd.gc);
`sync` waits for it, as `ctr leases rm --sync` expects.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import os
import time

import grpc
from google.protobuf import empty_pb2, timestamp_pb2

from dockyard import errdefs
from dockyard.containerd import filters
from dockyard.containerd.api.services.leases.v1 import leases_pb2, leases_pb2_grpc
from dockyard.containerd.context import DaemonContext
from dockyard.containerd.grpcerrors import namespace_of, rpc
from dockyard.image.digest import InvalidDigest, parse_digest
from dockyard.image.leases import (
    RESOURCE_CONTENT,
    RESOURCE_INGESTS,
    RESOURCE_SNAPSHOTS_PREFIX,
    Lease,
    Resource,
)


def random_lease_id() -> str:
    """Same shape as containerd's leases.WithRandomID."""
    return f"{time.time_ns() % 1_000_000_000}-" + base64.urlsafe_b64encode(os.urandom(8)).decode()


def _to_pb(lease: Lease, lease_id: str) -> leases_pb2.Lease:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(lease.created_at * 1e9))
    return leases_pb2.Lease(id=lease_id, created_at=ts, labels=lease.labels)


def _resource(pb: leases_pb2.Resource) -> Resource:
    """Check a resource as containerd does (its messages and codes)."""
    if pb.type == RESOURCE_CONTENT:
        try:
            parse_digest(pb.id)
        except InvalidDigest as exc:
            raise errdefs.InvalidArgument(
                f"invalid content resource id {pb.id}: invalid checksum digest format") from exc
    elif pb.type == RESOURCE_INGESTS:
        pass
    elif not (pb.type.startswith(RESOURCE_SNAPSHOTS_PREFIX)
              and len(pb.type) > len(RESOURCE_SNAPSHOTS_PREFIX)):
        raise errdefs.NotImplementedFeature(f"resource type {pb.type} not supported yet")
    return Resource(type=pb.type, id=pb.id)


class LeasesService(leases_pb2_grpc.LeasesServicer):
    def __init__(self, ctx: DaemonContext) -> None:
        self.ctx = ctx

    def _key(self, ns: str, lease_id: str) -> str:
        if not lease_id:
            raise errdefs.InvalidArgument("lease id must not be empty")
        return self.ctx.lease_key(ns, lease_id)

    def _get(self, ns: str, lease_id: str) -> Lease:
        try:
            return self.ctx.leases.get(self._key(ns, lease_id))
        except errdefs.NotFound as exc:
            raise errdefs.NotFound(f'lease "{lease_id}"') from exc

    @rpc
    async def Create(self, request, context):  # noqa: N802
        ns = namespace_of(context)
        lease_id = request.id or random_lease_id()
        self.ctx.touch_namespace(ns)
        try:
            lease = self.ctx.leases.create(self._key(ns, lease_id), dict(request.labels))
        except errdefs.AlreadyExists as exc:
            raise errdefs.AlreadyExists(f'lease "{lease_id}"') from exc
        return leases_pb2.CreateResponse(lease=_to_pb(lease, lease_id))

    @rpc
    async def Delete(self, request, context):  # noqa: N802
        ns = namespace_of(context)
        try:
            self.ctx.leases.delete(self._key(ns, request.id))
        except errdefs.NotFound as exc:
            raise errdefs.NotFound(f'lease "{request.id}"') from exc
        hook = self.ctx.gc_hook
        if hook is not None:
            if request.sync:
                result = await asyncio.to_thread(hook, True)
            else:
                result = hook(False)
            if inspect.isawaitable(result):
                await result
        return empty_pb2.Empty()

    @rpc
    async def List(self, request, context):  # noqa: N802
        ns = namespace_of(context)
        fs = filters.parse_all(list(request.filters))
        prefix = self.ctx.lease_key(ns, "")
        out = []
        for lease in self.ctx.leases.list():
            if not lease.id.startswith(prefix):
                continue
            pb = _to_pb(lease, lease.id[len(prefix):])
            if fs.match(filters.message_adaptor(pb)):
                out.append(pb)
        return leases_pb2.ListResponse(leases=out)

    @rpc
    async def AddResource(self, request, context):  # noqa: N802
        ns = namespace_of(context)
        self._get(ns, request.id)
        self.ctx.leases.add_resource(self._key(ns, request.id), _resource(request.resource))
        return empty_pb2.Empty()

    @rpc
    async def DeleteResource(self, request, context):  # noqa: N802
        ns = namespace_of(context)
        self._get(ns, request.id)
        self.ctx.leases.delete_resource(self._key(ns, request.id), _resource(request.resource))
        return empty_pb2.Empty()

    @rpc
    async def ListResources(self, request, context):  # noqa: N802
        ns = namespace_of(context)
        self._get(ns, request.id)
        resources = self.ctx.leases.list_resources(self._key(ns, request.id))
        return leases_pb2.ListResourcesResponse(
            resources=[leases_pb2.Resource(id=r.id, type=r.type) for r in resources])


def register(server: grpc.aio.Server, context: DaemonContext) -> None:
    if context.gc_hook is None:
        try:
            from dockyard.containerd import gc
        except ImportError:
            gc = None  # helper B's GC not present: deletes just drop the lease
        if gc is not None and hasattr(gc, "install_hook"):
            gc.install_hook(context)
    leases_pb2_grpc.add_LeasesServicer_to_server(LeasesService(context), server)
