"""containerd.services.images.v1.Images: names -> target descriptors, per namespace.

Each namespace has its own ImageStore (DaemonContext.images), with names kept
exactly as the client gives them. A Delete with `sync` runs the garbage
collector before it answers, so `ctr images rm --sync` returns only once the
image's blobs and snapshots no longer referenced are gone.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from google.protobuf import empty_pb2

from dockyard import errdefs
from dockyard.containerd import filters
from dockyard.containerd import gc as daemon_gc
from dockyard.containerd.api.events import image_pb2 as image_events
from dockyard.containerd.api.services.images.v1 import images_pb2 as api
from dockyard.containerd.api.services.images.v1 import images_pb2_grpc
from dockyard.containerd.api.types import descriptor_pb2
from dockyard.containerd.grpcerrors import namespace_of, rpc
from dockyard.containerd.services.content import timestamp
from dockyard.image.core import Descriptor
from dockyard.image.images import Image

_MAX_LABEL = 4096


def descriptor_to_proto(desc: Descriptor) -> descriptor_pb2.Descriptor:
    return descriptor_pb2.Descriptor(media_type=desc.media_type, digest=desc.digest,
                                     size=desc.size, annotations=desc.annotations)


def descriptor_from_proto(desc: descriptor_pb2.Descriptor) -> Descriptor:
    return Descriptor(media_type=desc.media_type, digest=desc.digest, size=desc.size,
                      annotations=dict(desc.annotations))


def image_to_proto(image: Image) -> api.Image:
    return api.Image(name=image.name, labels=image.labels,
                     target=descriptor_to_proto(image.target),
                     created_at=timestamp(image.created_at),
                     updated_at=timestamp(image.updated_at))


def image_from_proto(message: api.Image) -> Image:
    return Image(name=message.name, target=descriptor_from_proto(message.target),
                 labels=dict(message.labels))


def _validate(image: Image) -> None:
    if not image.name:
        raise errdefs.InvalidArgument("image.Name: must not be empty")
    if not image.target.media_type:
        raise errdefs.InvalidArgument(f"image {image.name!r}: Target.MediaType must not be empty")
    if not image.target.digest:
        raise errdefs.InvalidArgument(f"image {image.name!r}: Target.Digest must not be empty")
    for key, value in image.labels.items():
        if not key or len(key) + len(value) > _MAX_LABEL:
            raise errdefs.InvalidArgument(
                f"image {image.name!r}: label {key[:64]!r} is empty or longer than "
                f"{_MAX_LABEL} bytes (key and value together)")


class ImageService:
    """The local tier: one ImageStore per namespace, events, sync GC."""

    def __init__(self, context) -> None:  # noqa: ANN001 - DaemonContext
        self.context = context

    def get(self, namespace: str, name: str) -> Image:
        try:
            return self.context.images(namespace).get(name)
        except errdefs.NotFound as exc:
            raise errdefs.NotFound(f'image "{name}": not found') from exc

    def list(self, namespace: str, filter_texts: list[str]) -> list[api.Image]:
        fs = filters.parse_all(filter_texts)
        out = []
        for image in self.context.images(namespace).list():
            message = image_to_proto(image)
            if fs.match(filters.message_adaptor(message)):
                out.append(message)
        return out

    def create(self, namespace: str, image: Image) -> Image:
        _validate(image)
        self.context.touch_namespace(namespace)
        try:
            created = self.context.images(namespace).create(image)
        except errdefs.AlreadyExists as exc:
            raise errdefs.AlreadyExists(f'image "{image.name}": already exists') from exc
        self.context.events.publish(namespace, "/images/create", image_events.ImageCreate(
            name=created.name, labels=created.labels))
        return created

    def update(self, namespace: str, image: Image, paths: list[str]) -> Image:
        if not image.name:
            raise errdefs.InvalidArgument("image.Name: must not be empty")
        # "annotations" lives in the target here; containerd accepts it as a field path.
        paths = ["target" if p == "annotations" or p.startswith("annotations.") else p
                 for p in paths]
        if not paths:
            _validate(image)
        try:
            updated = self.context.images(namespace).update(image, paths or None)
        except errdefs.NotFound as exc:
            raise errdefs.NotFound(f'image "{image.name}": not found') from exc
        self.context.events.publish(namespace, "/images/update", image_events.ImageUpdate(
            name=updated.name, labels=updated.labels))
        return updated

    def delete(self, namespace: str, name: str, sync: bool) -> None:
        try:
            self.context.images(namespace).delete(name)
        except errdefs.NotFound as exc:
            raise errdefs.NotFound(f'image "{name}": not found') from exc
        self.context.events.publish(namespace, "/images/delete",
                                    image_events.ImageDelete(name=name))
        if sync:
            daemon_gc.collect(self.context, namespace)
        elif self.context.gc_hook is not None:
            self.context.gc_hook(False)

    def put(self, namespace: str, image: Image) -> Image:
        """Create or re-point a name (used by pulls), with the matching event."""
        try:
            return self.create(namespace, image)
        except errdefs.AlreadyExists:
            current = self.get(namespace, image.name)
            labels = {**current.labels, **image.labels}
            return self.update(namespace, replace(image, labels=labels), ["target", "labels"])


class ImagesServicer(images_pb2_grpc.ImagesServicer):
    def __init__(self, context) -> None:  # noqa: ANN001
        self.local = ImageService(context)

    @rpc
    async def Get(self, request: api.GetImageRequest, context) -> api.GetImageResponse:  # noqa: ANN001
        image = await asyncio.to_thread(self.local.get, namespace_of(context), request.name)
        return api.GetImageResponse(image=image_to_proto(image))

    @rpc
    async def List(self, request: api.ListImagesRequest, context) -> api.ListImagesResponse:  # noqa: ANN001
        images = await asyncio.to_thread(self.local.list, namespace_of(context),
                                         list(request.filters))
        return api.ListImagesResponse(images=images)

    @rpc
    async def Create(self, request: api.CreateImageRequest,  # noqa: ANN001
                     context) -> api.CreateImageResponse:
        image = await asyncio.to_thread(self.local.create, namespace_of(context),
                                        image_from_proto(request.image))
        return api.CreateImageResponse(image=image_to_proto(image))

    @rpc
    async def Update(self, request: api.UpdateImageRequest,  # noqa: ANN001
                     context) -> api.UpdateImageResponse:
        image = await asyncio.to_thread(self.local.update, namespace_of(context),
                                        image_from_proto(request.image),
                                        list(request.update_mask.paths))
        return api.UpdateImageResponse(image=image_to_proto(image))

    @rpc
    async def Delete(self, request: api.DeleteImageRequest, context) -> empty_pb2.Empty:  # noqa: ANN001
        await asyncio.to_thread(self.local.delete, namespace_of(context), request.name,
                                request.sync)
        return empty_pb2.Empty()


def register(server, context) -> None:  # noqa: ANN001
    daemon_gc.install_hook(context)
    images_pb2_grpc.add_ImagesServicer_to_server(ImagesServicer(context), server)
