"""containerd.services.snapshots.v1.Snapshots over the daemon's snapshotters.

The request's `snapshotter` field picks "overlayfs" (the default when empty)
or "native". Snapshot keys are shared by all namespaces here (as content is):
the namespace only tags events and selects the lease a new snapshot joins.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from google.protobuf import empty_pb2

from dockyard import errdefs
from dockyard.containerd import filters
from dockyard.containerd.api.events import snapshot_pb2 as snapshot_events
from dockyard.containerd.api.services.snapshots.v1 import snapshots_pb2 as api
from dockyard.containerd.api.services.snapshots.v1 import snapshots_pb2_grpc
from dockyard.containerd.api.types import mount_pb2
from dockyard.containerd.grpcerrors import lease_of, namespace_of, rpc
from dockyard.containerd.services.content import add_to_lease, timestamp
from dockyard.image.core import Mount, SnapshotInfo, SnapshotKind, Usage
from dockyard.image.leases import Resource

DEFAULT_SNAPSHOTTER = "overlayfs"

_KIND_TO_PROTO = {SnapshotKind.VIEW: api.VIEW, SnapshotKind.ACTIVE: api.ACTIVE,
                  SnapshotKind.COMMITTED: api.COMMITTED}
_KIND_FROM_PROTO = {v: k for k, v in _KIND_TO_PROTO.items()}


def mount_to_proto(mount: Mount) -> mount_pb2.Mount:
    return mount_pb2.Mount(type=mount.type, source=mount.source, target=mount.target,
                           options=list(mount.options))


def mount_from_proto(mount: mount_pb2.Mount) -> Mount:
    return Mount(type=mount.type, source=mount.source, options=tuple(mount.options),
                 target=mount.target)


def info_to_proto(info: SnapshotInfo) -> api.Info:
    return api.Info(name=info.name, parent=info.parent or "", kind=_KIND_TO_PROTO[info.kind],
                    created_at=timestamp(info.created_at),
                    updated_at=timestamp(info.updated_at), labels=info.labels)


def _require_key(key: str, what: str = "key") -> str:
    if not key:
        raise errdefs.InvalidArgument(f"snapshot {what} must not be empty")
    return key


class SnapshotService:
    """The local tier: calls on the named snapshotter, events and leases."""

    def __init__(self, context) -> None:  # noqa: ANN001 - DaemonContext
        self.context = context

    def snapshotter(self, name: str):  # noqa: ANN201
        return self.context.snapshotters.get_or_raise(name or DEFAULT_SNAPSHOTTER)

    def _hold(self, namespace: str, lease: str | None, name: str, key: str) -> None:
        add_to_lease(self.context, namespace, lease,
                     Resource.snapshot(name or DEFAULT_SNAPSHOTTER, key))

    def prepare(self, namespace: str, lease: str | None, name: str, key: str, parent: str,
                labels: dict[str, str], readonly: bool = False) -> list[Mount]:
        sn = self.snapshotter(name)
        _require_key(key)
        self.context.touch_namespace(namespace)
        if readonly:
            mounts = sn.view(key, parent or None, labels=labels)
        else:
            mounts = sn.prepare(key, parent or None, labels=labels)
        self._hold(namespace, lease, name, key)
        if not readonly:
            self.context.events.publish(namespace, "/snapshot/prepare",
                                        snapshot_events.SnapshotPrepare(
                                            key=key, parent=parent,
                                            snapshotter=name or DEFAULT_SNAPSHOTTER))
        return mounts

    def mounts(self, name: str, key: str) -> list[Mount]:
        return self.snapshotter(name).mounts(_require_key(key))

    def commit(self, namespace: str, lease: str | None, name: str, committed: str, key: str,
               labels: dict[str, str]) -> None:
        sn = self.snapshotter(name)
        _require_key(committed, "name")
        sn.commit(committed, _require_key(key), labels=labels or None)
        self._hold(namespace, lease, name, committed)
        self.context.events.publish(namespace, "/snapshot/commit", snapshot_events.SnapshotCommit(
            key=key, name=committed, snapshotter=name or DEFAULT_SNAPSHOTTER))

    def remove(self, namespace: str, name: str, key: str) -> None:
        self.snapshotter(name).remove(_require_key(key))
        self.context.events.publish(namespace, "/snapshot/remove", snapshot_events.SnapshotRemove(
            key=key, snapshotter=name or DEFAULT_SNAPSHOTTER))

    def stat(self, name: str, key: str) -> SnapshotInfo:
        return self.snapshotter(name).stat(_require_key(key))

    def update(self, name: str, info: api.Info, paths: list[str]) -> SnapshotInfo:
        sn = self.snapshotter(name)
        current = sn.stat(_require_key(info.name, "name"))
        wanted = SnapshotInfo(name=info.name, kind=current.kind, parent=current.parent,
                              labels=dict(info.labels), created_at=current.created_at,
                              updated_at=current.updated_at)
        return sn.update(wanted, paths or None)

    def list(self, name: str, filter_texts: list[str]) -> list[api.Info]:
        fs = filters.parse_all(filter_texts)
        out = []
        for info in self.snapshotter(name).walk():
            message = info_to_proto(info)
            if fs.match(_info_adaptor(message)):
                out.append(message)
        return out

    def usage(self, name: str, key: str) -> Usage:
        return self.snapshotter(name).usage(_require_key(key))


def _info_adaptor(message: api.Info) -> filters.Adaptor:
    base = filters.message_adaptor(message)

    def adapt(path):  # type: ignore[no-untyped-def]
        # containerd filters snapshots by kind name ("committed"), not by number.
        if list(path) == ["kind"]:
            return api.Kind.Name(message.kind).lower(), True
        return base(path)

    return adapt


class SnapshotsServicer(snapshots_pb2_grpc.SnapshotsServicer):
    def __init__(self, context) -> None:  # noqa: ANN001
        self.local = SnapshotService(context)

    @rpc
    async def Prepare(self, request: api.PrepareSnapshotRequest,  # noqa: ANN001
                      context) -> api.PrepareSnapshotResponse:
        mounts = await asyncio.to_thread(
            self.local.prepare, namespace_of(context), lease_of(context), request.snapshotter,
            request.key, request.parent, dict(request.labels))
        return api.PrepareSnapshotResponse(mounts=[mount_to_proto(m) for m in mounts])

    @rpc
    async def View(self, request: api.ViewSnapshotRequest,  # noqa: ANN001
                   context) -> api.ViewSnapshotResponse:
        mounts = await asyncio.to_thread(
            self.local.prepare, namespace_of(context), lease_of(context), request.snapshotter,
            request.key, request.parent, dict(request.labels), True)
        return api.ViewSnapshotResponse(mounts=[mount_to_proto(m) for m in mounts])

    @rpc
    async def Mounts(self, request: api.MountsRequest, context) -> api.MountsResponse:  # noqa: ANN001
        namespace_of(context)
        mounts = await asyncio.to_thread(self.local.mounts, request.snapshotter, request.key)
        return api.MountsResponse(mounts=[mount_to_proto(m) for m in mounts])

    @rpc
    async def Commit(self, request: api.CommitSnapshotRequest,  # noqa: ANN001
                     context) -> empty_pb2.Empty:
        await asyncio.to_thread(self.local.commit, namespace_of(context), lease_of(context),
                                request.snapshotter, request.name, request.key,
                                dict(request.labels))
        return empty_pb2.Empty()

    @rpc
    async def Remove(self, request: api.RemoveSnapshotRequest,  # noqa: ANN001
                     context) -> empty_pb2.Empty:
        await asyncio.to_thread(self.local.remove, namespace_of(context), request.snapshotter,
                                request.key)
        return empty_pb2.Empty()

    @rpc
    async def Stat(self, request: api.StatSnapshotRequest,  # noqa: ANN001
                   context) -> api.StatSnapshotResponse:
        namespace_of(context)
        info = await asyncio.to_thread(self.local.stat, request.snapshotter, request.key)
        return api.StatSnapshotResponse(info=info_to_proto(info))

    @rpc
    async def Update(self, request: api.UpdateSnapshotRequest,  # noqa: ANN001
                     context) -> api.UpdateSnapshotResponse:
        namespace_of(context)
        info = await asyncio.to_thread(self.local.update, request.snapshotter, request.info,
                                       list(request.update_mask.paths))
        return api.UpdateSnapshotResponse(info=info_to_proto(info))

    @rpc
    async def List(self, request: api.ListSnapshotsRequest,  # noqa: ANN001
                   context) -> AsyncIterator[api.ListSnapshotsResponse]:
        namespace_of(context)
        infos = await asyncio.to_thread(self.local.list, request.snapshotter,
                                        list(request.filters))
        for start in range(0, len(infos), 100):
            yield api.ListSnapshotsResponse(info=infos[start:start + 100])

    @rpc
    async def Usage(self, request: api.UsageRequest, context) -> api.UsageResponse:  # noqa: ANN001
        namespace_of(context)
        usage = await asyncio.to_thread(self.local.usage, request.snapshotter, request.key)
        return api.UsageResponse(size=usage.size, inodes=usage.inodes)

    @rpc
    async def Cleanup(self, request: api.CleanupRequest, context) -> empty_pb2.Empty:  # noqa: ANN001
        # Both snapshotters remove directories as snapshots go: nothing is left to clean.
        namespace_of(context)
        self.local.snapshotter(request.snapshotter)
        return empty_pb2.Empty()


def register(server, context) -> None:  # noqa: ANN001
    snapshots_pb2_grpc.add_SnapshotsServicer_to_server(SnapshotsServicer(context), server)
