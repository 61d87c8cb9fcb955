"""containerd.services.containers.v1.Containers: container metadata records."""

from __future__ import annotations

from dataclasses import replace

import grpc
from google.protobuf import any_pb2, empty_pb2, timestamp_pb2

from dockyard import errdefs
from dockyard.containerd import filters
from dockyard.containerd.api.events import container_pb2 as ev
from dockyard.containerd.api.services.containers.v1 import containers_pb2, containers_pb2_grpc
from dockyard.containerd.context import DaemonContext
from dockyard.containerd.grpcerrors import namespace_of, rpc, validate_identifier
from dockyard.containerd.metadata import Blob, Container


def _blob(pb_any: any_pb2.Any) -> Blob:
    return Blob(pb_any.type_url, pb_any.value)


def _any(blob: Blob) -> any_pb2.Any:
    return any_pb2.Any(type_url=blob.type_url, value=blob.value)


def _ts(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def _labels(labels: dict[str, str]) -> dict[str, str]:
    # containerd never stores an empty label value: setting "" removes the label
    return {k: v for k, v in labels.items() if v != ""}


def from_pb(pb: containers_pb2.Container) -> Container:
    return Container(
        id=pb.id,
        labels=_labels(dict(pb.labels)),
        image=pb.image,
        runtime_name=pb.runtime.name,
        runtime_options=_blob(pb.runtime.options) if pb.runtime.HasField("options") else None,
        spec=_blob(pb.spec) if pb.HasField("spec") else None,
        snapshotter=pb.snapshotter,
        snapshot_key=pb.snapshot_key,
        extensions={k: _blob(v) for k, v in pb.extensions.items()},
        sandbox=pb.sandbox,
    )


def to_pb(c: Container) -> containers_pb2.Container:
    pb = containers_pb2.Container(
        id=c.id, labels=c.labels, image=c.image, snapshotter=c.snapshotter,
        snapshot_key=c.snapshot_key, created_at=_ts(c.created_at),
        updated_at=_ts(c.updated_at), sandbox=c.sandbox,
    )
    pb.runtime.name = c.runtime_name
    if c.runtime_options is not None:
        pb.runtime.options.CopyFrom(_any(c.runtime_options))
    if c.spec is not None:
        pb.spec.CopyFrom(_any(c.spec))
    for key, blob in c.extensions.items():
        pb.extensions[key].CopyFrom(_any(blob))
    return pb


def validate(c: Container) -> None:
    """containerd's checks on a new or replaced record, with its messages."""
    try:
        _validate(c)
    except errdefs.InvalidArgument as exc:
        raise errdefs.InvalidArgument(f"create container failed validation: {exc}") from exc


def _validate(c: Container) -> None:
    try:
        validate_identifier("container", c.id)
    except errdefs.InvalidArgument as exc:
        raise errdefs.InvalidArgument(f"container.ID: {exc}") from exc
    if any(k == "" for k in c.extensions):
        raise errdefs.InvalidArgument("container.Extension keys must not be zero-length")
    if not c.runtime_name:
        raise errdefs.InvalidArgument("container.Runtime.Name must be set")
    if c.spec is None:
        raise errdefs.InvalidArgument("container.Spec must be set")
    if c.snapshot_key and not c.snapshotter:
        raise errdefs.InvalidArgument(
            "container.Snapshotter must be set if container.SnapshotKey is set"
        )


def apply_mask(current: Container, new: Container, paths: list[str]) -> Container:
    """containerd's field-mask rules; an empty mask replaces the mutable fields."""
    if not paths:
        if new.runtime_name != current.runtime_name:
            raise errdefs.InvalidArgument("container.Runtime.Name field is immutable")
        if new.snapshotter != current.snapshotter:
            raise errdefs.InvalidArgument("container.Snapshotter field is immutable")
        paths = ["labels", "spec", "extensions", "image", "snapshotkey"]
    out = current
    for path in paths:
        if path.startswith("labels."):
            key = path[len("labels."):]
            labels = dict(out.labels)
            if new.labels.get(key):
                labels[key] = new.labels[key]
            else:
                labels.pop(key, None)
            out = replace(out, labels=labels)
        elif path.startswith("extensions."):
            key = path[len("extensions."):]
            ext = dict(out.extensions)
            if key in new.extensions:
                ext[key] = new.extensions[key]
            else:
                ext.pop(key, None)
            out = replace(out, extensions=ext)
        elif path == "labels":
            out = replace(out, labels=dict(new.labels))
        elif path == "spec":
            out = replace(out, spec=new.spec)
        elif path == "extensions":
            out = replace(out, extensions=dict(new.extensions))
        elif path == "image":
            out = replace(out, image=new.image)
        elif path == "snapshotkey":
            out = replace(out, snapshot_key=new.snapshot_key)
        else:
            # containerd 1.6 refuses snapshotter, runtime, snapshot_key and anything else
            raise errdefs.InvalidArgument(f'cannot update "{path}" field on "{current.id}"')
    return out


class ContainersService(containers_pb2_grpc.ContainersServicer):
    def __init__(self, ctx: DaemonContext) -> None:
        self.ctx = ctx

    def _list(self, namespace: str, filter_texts: list[str]) -> list[containers_pb2.Container]:
        fs = filters.parse_all(filter_texts)
        out = []
        for c in self.ctx.metadata.list_containers(namespace):
            pb = to_pb(c)
            if fs.match(filters.message_adaptor(pb)):
                out.append(pb)
        return out

    @rpc
    async def Get(self, request, context):  # noqa: N802
        ns = namespace_of(context)
        c = self.ctx.metadata.get_container(ns, request.id)
        return containers_pb2.GetContainerResponse(container=to_pb(c))

    @rpc
    async def List(self, request, context):  # noqa: N802
        ns = namespace_of(context)
        return containers_pb2.ListContainersResponse(
            containers=self._list(ns, list(request.filters)))

    @rpc
    async def ListStream(self, request, context):  # noqa: N802
        ns = namespace_of(context)
        for pb in self._list(ns, list(request.filters)):
            yield containers_pb2.ListContainerMessage(container=pb)

    @rpc
    async def Create(self, request, context):  # noqa: N802
        ns = namespace_of(context)
        c = from_pb(request.container)
        validate(c)
        c = self.ctx.metadata.create_container(ns, c)
        event = ev.ContainerCreate(id=c.id, image=c.image)
        event.runtime.name = c.runtime_name
        if c.runtime_options is not None:
            event.runtime.options.CopyFrom(_any(c.runtime_options))
        self.ctx.events.publish(ns, "/containers/create", event)
        return containers_pb2.CreateContainerResponse(container=to_pb(c))

    @rpc
    async def Update(self, request, context):  # noqa: N802
        ns = namespace_of(context)
        if not request.container.id:
            raise errdefs.InvalidArgument("Container.ID required")
        try:
            current = self.ctx.metadata.get_container(ns, request.container.id)
        except errdefs.NotFound as exc:
            raise errdefs.NotFound(f'container "{request.container.id}"') from exc
        new = from_pb(request.container)
        paths = list(request.update_mask.paths) if request.HasField("update_mask") else []
        updated = apply_mask(current, new, paths)
        _validate(updated)
        updated = self.ctx.metadata.replace_container(ns, updated)
        self.ctx.events.publish(ns, "/containers/update", ev.ContainerUpdate(
            id=updated.id, image=updated.image, labels=updated.labels,
            snapshot_key=updated.snapshot_key))
        return containers_pb2.UpdateContainerResponse(container=to_pb(updated))

    @rpc
    async def Delete(self, request, context):  # noqa: N802
        ns = namespace_of(context)
        try:
            self.ctx.metadata.delete_container(ns, request.id)
        except errdefs.NotFound as exc:
            raise errdefs.NotFound(
                f'cannot delete container "{request.id}" in namespace "{ns}"') from exc
        self.ctx.events.publish(ns, "/containers/delete", ev.ContainerDelete(id=request.id))
        if self.ctx.gc_hook is not None:
            self.ctx.gc_hook(False)  # its snapshot may now be unreferenced
        return empty_pb2.Empty()


def register(server: grpc.aio.Server, context: DaemonContext) -> None:
    containers_pb2_grpc.add_ContainersServicer_to_server(ContainersService(context), server)
