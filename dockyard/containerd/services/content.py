"""containerd.services.content.v1.Content over the daemon's LocalContentStore.

Content is shared by every namespace (labels are per blob), so the namespace
only matters for events and leases. Write follows the protocol of containerd's
remote writer, which ctr uses: a STAT first (to learn the resumable offset),
WRITE messages at the current offset (offset 0 on a non-empty ingest
restarts it), and one COMMIT carrying total, expected digest and labels. The
stream holds the ingest's lock until it ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
from google.protobuf import empty_pb2, timestamp_pb2

from dockyard import errdefs
from dockyard.containerd import filters
from dockyard.containerd.api.events import content_pb2 as content_events
from dockyard.containerd.api.services.content.v1 import content_pb2 as api
from dockyard.containerd.api.services.content.v1 import content_pb2_grpc
from dockyard.containerd.grpcerrors import lease_of, namespace_of, rpc, to_status
from dockyard.image.core import ContentInfo, IngestStatus
from dockyard.image.digest import parse_digest
from dockyard.image.leases import Resource

log = logging.getLogger(__name__)

READ_CHUNK = 1 << 20
LABEL_MUTABLE = ("labels",)


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def check_digest(digest: str) -> str:
    try:
        parse_digest(digest)
    except errdefs.DockyardError as exc:
        raise errdefs.InvalidArgument(f'"{digest}" failed validation') from exc
    return digest


def info_to_proto(info: ContentInfo) -> api.Info:
    return api.Info(digest=info.digest, size=info.size, created_at=timestamp(info.created_at),
                    updated_at=timestamp(info.updated_at), labels=info.labels)


def status_to_proto(status: IngestStatus) -> api.Status:
    return api.Status(ref=status.ref, offset=status.offset, total=status.total,
                      expected=status.expected or "", started_at=timestamp(status.started_at),
                      updated_at=timestamp(status.updated_at))


def add_to_lease(context, namespace: str, lease: str | None,  # noqa: ANN001
                 resource: Resource) -> None:
    """Hold resource under the request's lease, as containerd's metadata layer does."""
    if lease:
        context.leases.add_resource(context.lease_key(namespace, lease), resource)


class ContentService:
    """The local tier: blocking calls on the store, events, leases."""

    def __init__(self, context) -> None:  # noqa: ANN001 - DaemonContext
        self.context = context
        self.store = context.content

    def info(self, digest: str) -> ContentInfo:
        return self.store.info(check_digest(digest))

    def update(self, digest: str, labels: dict[str, str], paths: list[str]) -> ContentInfo:
        current = self.store.info(check_digest(digest))
        changes: dict[str, str] = {}
        if not paths or "labels" in paths:
            # Replace the whole label set: drop every label not given.
            changes = {key: "" for key in current.labels}
            changes.update(labels)
        for path in paths:
            if path == "labels":
                continue
            if not path.startswith("labels."):
                raise errdefs.InvalidArgument(
                    f"cannot update {path!r} field on content info {digest!r}: only "
                    "labels and labels.<key> are mutable")
            key = path[len("labels."):]
            changes[key] = labels.get(key, "")
        return self.store.update_labels(digest, changes)

    def list(self, filter_texts: list[str]) -> list[api.Info]:
        fs = filters.parse_all(filter_texts)
        out = []
        for info in self.store.walk():
            message = info_to_proto(info)
            if fs.match(filters.message_adaptor(message)):
                out.append(message)
        return out

    def delete(self, namespace: str, digest: str) -> None:
        self.store.delete(check_digest(digest))
        self.context.events.publish(namespace, "/content/delete",
                                    content_events.ContentDelete(digest=digest))

    def read(self, digest: str, offset: int, size: int) -> tuple[object, int]:
        """An open blob positioned at offset, and how many bytes to send."""
        check_digest(digest)
        if offset < 0 or size < 0:
            raise errdefs.InvalidArgument(
                f"read of {digest}: offset ({offset}) and size ({size}) must not be negative")
        info = self.store.info(digest)
        if offset > info.size:
            raise errdefs.InvalidArgument(
                f"read of {digest} at offset {offset} is past its end ({info.size} bytes)")
        blob = self.store.open_blob(digest)
        blob.seek(offset)
        remaining = info.size - offset
        return blob, min(size, remaining) if size else remaining

    def statuses(self, filter_texts: list[str]) -> list[api.Status]:
        fs = filters.parse_all(filter_texts)
        out = []
        for status in self.store.list_ingests():
            message = status_to_proto(status)
            if fs.match(filters.message_adaptor(message)):
                out.append(message)
        return out


class _WriteSession:
    """One Write stream: the open writer and the totals the client announced."""

    def __init__(self, service: ContentService, namespace: str, lease: str | None) -> None:
        self.service = service
        self.namespace = namespace
        self.lease = lease
        self.writer = None
        self.ref = ""
        self.total = 0
        self.expected = ""
        self.committed = False

    def open(self, req: api.WriteContentRequest) -> None:
        if not req.ref:
            raise errdefs.InvalidArgument("first message must have a reference")
        self.ref = req.ref
        self.total = req.total
        self.expected = req.expected
        if self.expected:
            check_digest(self.expected)
        store = self.service.store
        self.writer = store.writer(req.ref, total=req.total, expected=req.expected or None)
        add_to_lease(self.service.context, self.namespace, self.lease, Resource.ingest(req.ref))

    def handle(self, req: api.WriteContentRequest) -> api.WriteContentResponse:
        if self.committed:
            raise errdefs.FailedPrecondition(f"ref {self.ref} was committed; start a new write")
        if req.ref and req.ref != self.ref:
            raise errdefs.InvalidArgument(
                f"write stream for ref {self.ref!r} cannot switch to ref {req.ref!r}")
        if req.expected:
            check_digest(req.expected)
            if req.expected != self.expected and self.service.store.exists(req.expected):
                raise errdefs.AlreadyExists(f"blob with expected digest {req.expected} exists")
            self.expected = req.expected
        if req.total > 0:
            self.total = req.total
        writer = self.writer
        assert writer is not None
        msg = api.WriteContentResponse(action=req.action)
        if req.action == api.STAT:
            msg.offset = writer.offset()
        elif req.action in (api.WRITE, api.COMMIT):
            current = writer.offset()
            if req.offset > 0 and req.offset != current:
                raise _OutOfRange(f"write @{req.offset} must occur at current offset {current}")
            if req.offset == 0 and current > 0:
                writer.truncate(0)
            if req.data:
                writer.write(req.data)
            msg.offset = writer.offset()
            if req.action == api.COMMIT:
                return self._commit(req, msg)
        else:
            raise errdefs.InvalidArgument(f"unknown write action {req.action}")
        msg.total = self.total
        msg.digest = writer.digest()
        self._stamp(msg)
        return msg

    def _commit(self, req: api.WriteContentRequest,
                msg: api.WriteContentResponse) -> api.WriteContentResponse:
        writer = self.writer
        assert writer is not None
        size, actual = writer.offset(), writer.digest()
        self._stamp(msg)
        try:
            writer.commit(self.total, self.expected or None, dict(req.labels))
        except errdefs.DataLoss as exc:
            # containerd reports a size or digest mismatch at commit as a failed
            # precondition; clients (ctr) test for exactly that class.
            raise errdefs.FailedPrecondition(
                f"unexpected commit of ref {self.ref}: {exc}") from exc
        except errdefs.AlreadyExists:
            pass  # someone committed the same bytes first: the content is there
        self.committed = True
        add_to_lease(self.service.context, self.namespace, self.lease, Resource.content(actual))
        msg.offset = size
        msg.total = self.total or size
        msg.digest = actual
        return msg

    def _stamp(self, msg: api.WriteContentResponse) -> None:
        try:
            status = self.service.store.ingest_status(self.ref)
        except errdefs.NotFound:
            return
        msg.started_at.CopyFrom(timestamp(status.started_at))
        msg.updated_at.CopyFrom(timestamp(status.updated_at))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class _OutOfRange(errdefs.InvalidArgument):
    """A write at an offset the ingest is not at (gRPC OUT_OF_RANGE)."""


class ContentServicer(content_pb2_grpc.ContentServicer):
    def __init__(self, context) -> None:  # noqa: ANN001
        self.local = ContentService(context)

    @rpc
    async def Info(self, request: api.InfoRequest, context) -> api.InfoResponse:  # noqa: ANN001
        info = await asyncio.to_thread(self.local.info, request.digest)
        return api.InfoResponse(info=info_to_proto(info))

    @rpc
    async def Update(self, request: api.UpdateRequest, context) -> api.UpdateResponse:  # noqa: ANN001
        info = await asyncio.to_thread(self.local.update, request.info.digest,
                                       dict(request.info.labels),
                                       list(request.update_mask.paths))
        return api.UpdateResponse(info=info_to_proto(info))

    @rpc
    async def List(self, request: api.ListContentRequest,  # noqa: ANN001
                   context) -> AsyncIterator[api.ListContentResponse]:
        infos = await asyncio.to_thread(self.local.list, list(request.filters))
        for start in range(0, len(infos), 100):
            yield api.ListContentResponse(info=infos[start:start + 100])

    @rpc
    async def Delete(self, request: api.DeleteContentRequest, context) -> empty_pb2.Empty:  # noqa: ANN001
        namespace = namespace_of(context)
        await asyncio.to_thread(self.local.delete, namespace, request.digest)
        return empty_pb2.Empty()

    @rpc
    async def Read(self, request: api.ReadContentRequest,  # noqa: ANN001
                   context) -> AsyncIterator[api.ReadContentResponse]:
        blob, remaining = await asyncio.to_thread(self.local.read, request.digest,
                                                  request.offset, request.size)
        offset = request.offset
        try:
            while remaining > 0:
                data = await asyncio.to_thread(blob.read, min(READ_CHUNK, remaining))
                if not data:
                    raise errdefs.DataLoss(
                        f"content {request.digest} ended early at offset {offset}")
                yield api.ReadContentResponse(offset=offset, data=data)
                offset += len(data)
                remaining -= len(data)
        finally:
            blob.close()

    @rpc
    async def Status(self, request: api.StatusRequest, context) -> api.StatusResponse:  # noqa: ANN001
        status = await asyncio.to_thread(self.local.store.ingest_status, request.ref)
        return api.StatusResponse(status=status_to_proto(status))

    @rpc
    async def ListStatuses(self, request: api.ListStatusesRequest,  # noqa: ANN001
                           context) -> api.ListStatusesResponse:
        statuses = await asyncio.to_thread(self.local.statuses, list(request.filters))
        return api.ListStatusesResponse(statuses=statuses)

    async def Write(self, request_iterator, context) -> AsyncIterator[api.WriteContentResponse]:  # noqa: ANN001
        try:
            namespace = namespace_of(context)
        except errdefs.DockyardError as exc:
            await context.abort(*to_status(exc))
        session = _WriteSession(self.local, namespace, lease_of(context))
        try:
            async for req in request_iterator:
                if session.writer is None:
                    await asyncio.to_thread(session.open, req)
                yield await asyncio.to_thread(session.handle, req)
        except _OutOfRange as exc:
            await context.abort(grpc.StatusCode.OUT_OF_RANGE, str(exc))
        except errdefs.DockyardError as exc:
            code, message = to_status(exc)
            await context.abort(code, message)
        finally:
            await asyncio.to_thread(session.close)

    @rpc
    async def Abort(self, request: api.AbortRequest, context) -> empty_pb2.Empty:  # noqa: ANN001
        await asyncio.to_thread(self.local.store.abort, request.ref)
        return empty_pb2.Empty()


def register(server, context) -> None:  # noqa: ANN001
    content_pb2_grpc.add_ContentServicer_to_server(ContentServicer(context), server)
