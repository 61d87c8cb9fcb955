"""dockyard.services.transfer.v1.Transfer: pull and push with Docker-like progress.

For the engine: one call pulls a reference into the content store (under a
temporary lease, so a concurrent garbage collection cannot take half a pull),
records the image in the request's namespace, and streams per-layer
progress lines ("Downloading", "Extracting", "Pull complete") followed by
the image record. With unpack, each layer is extracted into the snapshotter
while it downloads, and the image is recorded only once the unpacked chain
matches its config. Push streams the same way and ends with the pushed
descriptor.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import BinaryIO

from dockyard import errdefs
from dockyard.containerd.api.dockyard.transfer.v1 import transfer_pb2 as api
from dockyard.containerd.api.dockyard.transfer.v1 import transfer_pb2_grpc
from dockyard.containerd.grpcerrors import namespace_of, rpc
from dockyard.containerd.services.images import (
    ImageService,
    descriptor_to_proto,
    image_to_proto,
)
from dockyard.image.core import Descriptor
from dockyard.image.distribution import Credentials, RegistryConfig, pull, push
from dockyard.image.distribution.progress import ProgressEvent
from dockyard.image.images import Image
from dockyard.image.leases import Resource
from dockyard.image.reference import parse_reference
from dockyard.image.unpack import StreamUnpacker

DEFAULT_SNAPSHOTTER = "overlayfs"
_DONE = object()


@dataclass(frozen=True)
class _StaticCredentials:
    """The credentials a request carried, for the registry of its reference only."""

    host: str
    credentials: Credentials

    def get(self, host: str) -> Credentials | None:
        return self.credentials if host == self.host else None


def _credentials(auth: api.Auth, host: str) -> _StaticCredentials | None:
    if not (auth.username or auth.password or auth.identity_token):
        return None
    return _StaticCredentials(host, Credentials(auth.username, auth.password,
                                                auth.identity_token))


class TransferService:
    """The local tier; progress goes to a sink callable from any thread."""

    def __init__(self, context) -> None:  # noqa: ANN001 - DaemonContext
        self.context = context
        self.images = ImageService(context)

    def pull(self, namespace: str, request: api.PullRequest,
             sink: Callable[[ProgressEvent], None]) -> Image:
        if not request.reference:
            raise errdefs.InvalidArgument("pull needs a reference")
        ref = parse_reference(request.reference)
        store = self.context.content
        snapshotter_name = request.snapshotter or DEFAULT_SNAPSHOTTER
        unpacker = None
        if request.unpack:
            unpacker = StreamUnpacker(
                store, self.context.snapshotters.get_or_raise(snapshotter_name),
                snapshotter_name=snapshotter_name)
        leases = self.context.leases
        lease = leases.create(self.context.lease_key(namespace, f"transfer-{secrets.token_hex(8)}"),
                              expire_in=3600)
        try:
            def hold(digest: str) -> None:
                leases.add_resource(lease.id, Resource.content(digest))

            def held(desc: Descriptor) -> None:
                hold(desc.digest)

            def unpack_layer(layer: Descriptor, stream: BinaryIO) -> None:
                unpacker(layer, stream)  # type: ignore[misc]
                # Nothing names the new snapshot until finish() labels the
                # config, so the lease keeps a collection from taking it.
                hold(layer.digest)
                leases.add_resource(lease.id, Resource.snapshot(
                    snapshotter_name, unpacker.results[-1].chain_id))  # type: ignore[union-attr]

            result = pull(ref, store, platform=request.platform or None,
                          credentials=_credentials(request.auth, ref.domain),
                          config=RegistryConfig(
                              insecure_registries=tuple(request.insecure_registries)),
                          progress=sink,
                          unpack=held if unpacker is None else None,
                          unpack_stream=unpack_layer if unpacker is not None else None)
            for desc in (result.target, result.manifest_descriptor, result.config_descriptor):
                hold(desc.digest)
            if unpacker is not None:
                # Checks the extracted chain against the config's diff_ids
                # before the image is recorded, so a name never points at an
                # image whose layers did not unpack to what it promises.
                unpacker.finish(result.target, platform=request.platform or None)
            return self.images.put(namespace, Image(name=str(ref), target=result.target,
                                                    labels=dict(request.labels)))
        finally:
            leases.delete(lease.id)

    def push(self, namespace: str, request: api.PushRequest,
             sink: Callable[[ProgressEvent], None]) -> api.PushResult:
        if not request.reference:
            raise errdefs.InvalidArgument("push needs a reference")
        ref = parse_reference(request.reference)
        image = self.images.get(namespace, request.source or request.reference)
        result = push(ref, self.context.content, image.target,
                      credentials=_credentials(request.auth, ref.domain),
                      config=RegistryConfig(
                          insecure_registries=tuple(request.insecure_registries)),
                      progress=sink)
        return api.PushResult(reference=str(result.reference),
                              target=descriptor_to_proto(image.target))


def _progress(event: ProgressEvent) -> api.Progress:
    return api.Progress(id=event.id, status=event.status, current=event.current,
                        total=event.total)


async def _stream(work: Callable[[Callable[[ProgressEvent], None]], object]
                  ) -> AsyncIterator[ProgressEvent | object]:
    """Run work(sink) in a thread; yield its progress events, then its result."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    outcome: list = []

    def sink(event: ProgressEvent) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, event)

    def run() -> None:
        try:
            outcome.append(("ok", work(sink)))
        except BaseException as exc:  # noqa: BLE001 - re-raised on the loop
            outcome.append(("error", exc))
        loop.call_soon_threadsafe(queue.put_nowait, _DONE)

    threading.Thread(target=run, name="transfer", daemon=True).start()
    while True:
        item = await queue.get()
        if item is _DONE:
            break
        yield item
    kind, value = outcome[0]
    if kind == "error":
        raise value
    yield _Result(value)


@dataclass(frozen=True)
class _Result:
    value: object


class TransferServicer(transfer_pb2_grpc.TransferServicer):
    def __init__(self, context) -> None:  # noqa: ANN001
        self.local = TransferService(context)

    @rpc
    async def Pull(self, request: api.PullRequest,  # noqa: ANN001
                   context) -> AsyncIterator[api.PullResponse]:
        namespace = namespace_of(context)
        async for item in _stream(lambda sink: self.local.pull(namespace, request, sink)):
            if isinstance(item, _Result):
                yield api.PullResponse(image=image_to_proto(item.value))  # type: ignore[arg-type]
            else:
                yield api.PullResponse(progress=_progress(item))  # type: ignore[arg-type]

    @rpc
    async def Push(self, request: api.PushRequest,  # noqa: ANN001
                   context) -> AsyncIterator[api.PushResponse]:
        namespace = namespace_of(context)
        async for item in _stream(lambda sink: self.local.push(namespace, request, sink)):
            if isinstance(item, _Result):
                yield api.PushResponse(result=item.value)  # type: ignore[arg-type]
            else:
                yield api.PushResponse(progress=_progress(item))  # type: ignore[arg-type]


def register(server, context) -> None:  # noqa: ANN001
    transfer_pb2_grpc.add_TransferServicer_to_server(TransferServicer(context), server)
