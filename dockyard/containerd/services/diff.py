"""containerd.services.diff.v1.Diff: apply a layer onto mounts, write a diff of two.

Apply verifies the blob against its descriptor (digest and size) before a
single byte is unpacked, so a corrupt or mislabelled layer changes nothing.
It then writes into the snapshot without mounting where the mounts allow it:
an overlay's upperdir (deletions become overlay whiteouts) or a writable bind
source (deletions are real); anything else is mounted on a temp dir first.
Unpacking goes through dockyard.image.layers.apply_layer, which refuses
entries that would leave the root (.., absolute links, symlinked parents).

Diff mounts both sides read-only (or reads bind sources in place), compares
the trees and stores the layer tar, compressed per media type, in the
content store with its diff_id as `containerd.io/uncompressed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Sequence

from dockyard import errdefs
from dockyard.containerd.api.services.diff.v1 import diff_pb2 as api
from dockyard.containerd.api.services.diff.v1 import diff_pb2_grpc
from dockyard.containerd.grpcerrors import lease_of, namespace_of, rpc
from dockyard.containerd.services.content import add_to_lease
from dockyard.containerd.services.images import descriptor_from_proto, descriptor_to_proto
from dockyard.containerd.services.snapshots import mount_from_proto
from dockyard.image import mediatypes
from dockyard.image.compression import compressing_writer
from dockyard.image.content import copy_stream
from dockyard.image.core import Descriptor, Mount
from dockyard.image.layers import apply_layer, write_diff
from dockyard.image.leases import Resource
from dockyard.image.snapshots.mount import mounted

LABEL_UNCOMPRESSED = "containerd.io/uncompressed"
_CHUNK = 1 << 20


def _direct_target(mounts: Sequence[Mount]) -> tuple[str, bool] | None:
    """A directory to unpack into without mounting, and whether deletions must
    be written as overlay whiteouts."""
    if len(mounts) != 1:
        return None
    mount = mounts[0]
    if mount.type == "bind" and "ro" not in mount.options:
        return mount.source, False
    if mount.type == "overlay":
        for option in mount.options:
            if option.startswith("upperdir="):
                return option[len("upperdir="):], True
    return None


@contextlib.contextmanager
def _writable_root(mounts: Sequence[Mount]) -> Iterator[tuple[str, bool]]:
    if not mounts:
        raise errdefs.InvalidArgument("apply needs at least one mount to unpack into")
    direct = _direct_target(mounts)
    if direct is not None:
        if not os.path.isdir(direct[0]):
            raise errdefs.NotFound(f"apply target directory {direct[0]} does not exist")
        yield direct
        return
    with mounted(list(mounts)) as root:
        yield root, False


def _readonly(mount: Mount) -> Mount:
    """The same tree, mounted without writing (containerd's read-only temp mount)."""
    if mount.type == "overlay":
        upper, lowers, rest = "", "", []
        for option in mount.options:
            key, _, value = option.partition("=")
            if key == "upperdir":
                upper = value
            elif key == "lowerdir":
                lowers = value
            elif key != "workdir" and option not in ("rw", "ro"):
                rest.append(option)
        lowerdir = ":".join(p for p in (upper, lowers) if p)
        return Mount(type="overlay", source=mount.source,
                     options=(*rest, "ro", f"lowerdir={lowerdir}"), target=mount.target)
    options = tuple(o for o in mount.options if o != "rw")
    return Mount(type=mount.type, source=mount.source, options=(*options, "ro"),
                 target=mount.target)


@contextlib.contextmanager
def _readable_root(mounts: Sequence[Mount]) -> Iterator[str | None]:
    if not mounts:
        yield None  # an empty side: the diff adds everything
        return
    if len(mounts) == 1 and mounts[0].type == "bind" and not mounts[0].target:
        yield mounts[0].source
        return
    if len(mounts) == 1 and mounts[0].type == "overlay" and not mounts[0].target:
        # A single-lower read-only overlay cannot be mounted; that lower is the tree.
        only = _readonly(mounts[0])
        lowerdir = next(o for o in only.options if o.startswith("lowerdir="))[9:]
        if ":" not in lowerdir:
            yield lowerdir
            return
    with mounted([_readonly(m) for m in mounts]) as root:
        yield root


class _Anonymous:
    """A file without a name: gzip would otherwise record the spool file's name
    in the layer's header, which no other tool does."""

    def __init__(self, inner) -> None:  # noqa: ANN001
        self._inner = inner

    def write(self, data: bytes) -> int:
        return self._inner.write(data)

    def flush(self) -> None:
        self._inner.flush()


class _HashingReader:
    def __init__(self, inner) -> None:  # noqa: ANN001
        self.inner = inner
        self.hash = hashlib.sha256()
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self.inner.read(size)
        self.hash.update(data)
        self.count += len(data)
        return data


class DiffService:
    """The local tier: apply and diff against the daemon's content store."""

    def __init__(self, context) -> None:  # noqa: ANN001 - DaemonContext
        self.context = context
        self.store = context.content

    def _verify(self, desc: Descriptor) -> None:
        with self.store.open_blob(desc.digest) as blob:
            reader = _HashingReader(blob)
            while reader.read(_CHUNK):
                pass
        algorithm = desc.digest.partition(":")[0]
        if algorithm != "sha256":
            raise errdefs.NotImplementedFeature(
                f"layer {desc.digest}: only sha256 digests can be verified")
        actual = "sha256:" + reader.hash.hexdigest()
        if actual != desc.digest:
            raise errdefs.DataLoss(
                f"layer {desc.digest}: the stored bytes hash to {actual}; the content is "
                "corrupt, delete it and fetch the layer again")
        if desc.size and desc.size != reader.count:
            raise errdefs.DataLoss(
                f"layer {desc.digest}: the descriptor says {desc.size} bytes but the content "
                f"holds {reader.count}; fix the descriptor or fetch the layer again")

    def apply(self, desc: Descriptor, mounts: list[Mount]) -> Descriptor:
        if not desc.digest:
            raise errdefs.InvalidArgument("apply needs the layer's descriptor (digest missing)")
        compression = mediatypes.layer_compression(desc.media_type)
        self._verify(desc)
        with _writable_root(mounts) as (root, overlay_whiteouts), \
                self.store.open_blob(desc.digest) as blob:
            result = apply_layer(root, blob, compression=compression,
                                 overlay_whiteouts=overlay_whiteouts)
        return Descriptor(media_type=mediatypes.OCI_LAYER, digest=result.diff_id,
                          size=result.size)

    def diff(self, namespace: str, lease: str | None, left: list[Mount], right: list[Mount],
             media_type: str, ref: str, labels: dict[str, str]) -> Descriptor:
        if not right:
            raise errdefs.InvalidArgument("diff needs the upper (right) mounts")
        media_type = media_type or mediatypes.OCI_LAYER_GZIP
        compression = mediatypes.layer_compression(media_type)
        spool_dir = tempfile.mkdtemp(prefix="diff-", dir=self.store.root)
        try:
            tar_path = os.path.join(spool_dir, "layer.tar")
            with _readable_root(left) as lower, _readable_root(right) as upper, \
                    open(tar_path, "wb") as out:
                assert upper is not None
                result = write_diff([lower] if lower else None, upper, out, overlay=False)
            blob_path = tar_path
            if compression is not None:
                blob_path = os.path.join(spool_dir, "layer.blob")
                with open(tar_path, "rb") as source, open(blob_path, "wb") as sink:
                    writer = compressing_writer(_Anonymous(sink), compression)
                    shutil.copyfileobj(source, writer, _CHUNK)
                    writer.close()
            with open(blob_path, "rb") as blob:
                hasher = _HashingReader(blob)
                while hasher.read(_CHUNK):
                    pass
            digest, size = "sha256:" + hasher.hash.hexdigest(), hasher.count
            all_labels = {**labels, LABEL_UNCOMPRESSED: result.diff_id}
            with open(blob_path, "rb") as blob:
                copy_stream(self.store, ref or f"diff-{secrets.token_hex(8)}", blob,
                            expected=digest, total=size, labels=all_labels)
            if self.store.info(digest).labels.get(LABEL_UNCOMPRESSED) != result.diff_id:
                self.store.update_labels(digest, all_labels)  # existed before: label it too
        finally:
            shutil.rmtree(spool_dir, ignore_errors=True)
        add_to_lease(self.context, namespace, lease, Resource.content(digest))
        return Descriptor(media_type=media_type, digest=digest, size=size)


class DiffServicer(diff_pb2_grpc.DiffServicer):
    def __init__(self, context) -> None:  # noqa: ANN001
        self.local = DiffService(context)

    @rpc
    async def Apply(self, request: api.ApplyRequest, context) -> api.ApplyResponse:  # noqa: ANN001
        namespace_of(context)
        applied = await asyncio.to_thread(
            self.local.apply, descriptor_from_proto(request.diff),
            [mount_from_proto(m) for m in request.mounts])
        return api.ApplyResponse(applied=descriptor_to_proto(applied))

    @rpc
    async def Diff(self, request: api.DiffRequest, context) -> api.DiffResponse:  # noqa: ANN001
        desc = await asyncio.to_thread(
            self.local.diff, namespace_of(context), lease_of(context),
            [mount_from_proto(m) for m in request.left],
            [mount_from_proto(m) for m in request.right],
            request.media_type, request.ref, dict(request.labels))
        return api.DiffResponse(diff=descriptor_to_proto(desc))


def register(server, context) -> None:  # noqa: ANN001
    diff_pb2_grpc.add_DiffServicer_to_server(DiffServicer(context), server)
