"""Unpack an image's layers into a snapshotter, and prepare container rootfs.

Each layer becomes one committed snapshot named by its chain id (OCI image
spec: ChainID(L0) = DiffID(L0), ChainID(Ln) = sha256("ChainID(Ln-1) DiffID(Ln)")),
so images that share a base share its snapshots and a second unpack skips
("Already exists") everything already there. A layer is extracted into an
ACTIVE snapshot under a random key and committed only after its diff_id is
proven equal to the config's; on any failure the active snapshot is removed,
so a crash or a bad layer never leaves a committed snapshot with wrong bytes.

StreamUnpacker does the same per layer as pull(unpack_stream=...) hands it
each layer's bytes, so extraction overlaps the download.

GC labels tie the content together (index → manifests → config + layers,
config → top snapshot) so a collector can keep exactly what a name reaches.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from dockyard import errdefs
from dockyard.image.core import (
    ContentStore,
    Descriptor,
    Mount,
    Provider,
    SnapshotKind,
    Snapshotter,
)
from dockyard.image.images import Image
from dockyard.image.manifest import chain_ids
from dockyard.image.mediatypes import is_index, is_manifest, layer_compression
from dockyard.image.platform import Platform, select_manifest

log = logging.getLogger(__name__)

LABEL_SNAPSHOT_REF = "containerd.io/snapshot.ref"
LABEL_UNCOMPRESSED = "containerd.io/uncompressed"
LABEL_GC_SNAPSHOT = "containerd.io/gc.ref.snapshot."
LABEL_GC_CONFIG = "containerd.io/gc.ref.content.config"
LABEL_GC_LAYER = "containerd.io/gc.ref.content.l."
LABEL_GC_MANIFEST = "containerd.io/gc.ref.content.m."


@dataclass(frozen=True)
class LayerResult:
    digest: str
    diff_id: str
    chain_id: str
    extracted: bool  # False: "Already exists"


@dataclass(frozen=True)
class UnpackResult:
    manifest: Descriptor
    config: Descriptor
    chain_id: str | None  # None for an image without layers
    layers: tuple[LayerResult, ...]


# ---------------------------------------------------------------- helpers


def read_json(content: Provider, desc: Descriptor) -> dict:
    raw = content.read_blob(desc.digest)
    if desc.size and len(raw) != desc.size:
        raise errdefs.DataLoss(f"blob {desc.digest}: size {len(raw)}, descriptor says {desc.size}")
    if "sha256:" + hashlib.sha256(raw).hexdigest() != desc.digest:
        raise errdefs.DataLoss(f"blob {desc.digest} does not match its digest; pull it again")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise errdefs.DataLoss(f"blob {desc.digest} ({desc.media_type}) is not JSON") from exc


def resolve_manifest(content: Provider, target: Descriptor,
                     platform: Platform | str | None = None) -> tuple[Descriptor, dict]:
    """Follow indexes down to the manifest for platform (default: the host)."""
    desc = target
    for _ in range(8):  # nested indexes are legal but never deep
        doc = read_json(content, desc)
        media_type = desc.media_type or doc.get("mediaType", "")
        if is_manifest(media_type) or (not media_type and "layers" in doc):
            return desc, doc
        if not is_index(media_type) and "manifests" not in doc:
            raise errdefs.InvalidArgument(
                f"{desc.digest} has media type {media_type!r}, neither an image manifest "
                "nor an index")
        children = [Descriptor.from_json(m) for m in doc.get("manifests") or []]
        try:
            desc = select_manifest(children, platform)
        except errdefs.NotFound:
            # A single-entry index without platform is what some tools write.
            plain = [c for c in children if not c.platform and
                     (is_manifest(c.media_type) or is_index(c.media_type))]
            if not plain:
                raise
            desc = plain[0]
    raise errdefs.InvalidArgument(f"image index {target.digest} is nested too deeply")


def image_layers(content: Provider, target: Descriptor,
                 platform: Platform | str | None = None) -> tuple[Descriptor, Descriptor, dict,
                                                        list[Descriptor]]:
    """(manifest desc, config desc, config dict, layer descs), checked for consistency."""
    manifest_desc, manifest = resolve_manifest(content, target, platform)
    config_desc = Descriptor.from_json(manifest["config"])
    config = read_json(content, config_desc)
    layers = [Descriptor.from_json(layer) for layer in manifest.get("layers") or []]
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    if len(diff_ids) != len(layers):
        raise errdefs.DataLoss(
            f"image {manifest_desc.digest}: manifest lists {len(layers)} layers but its config "
            f"has {len(diff_ids)} diff_ids")
    return manifest_desc, config_desc, config, layers


def top_chain_id(content: Provider, target: Descriptor,
                 platform: Platform | str | None = None) -> str | None:
    _, _, config, _ = image_layers(content, target, platform)
    ids = chain_ids(config["rootfs"].get("diff_ids") or [])
    return ids[-1] if ids else None


# ------------------------------------------------------------- gc labels


def set_content_gc_labels(content: ContentStore, target: Descriptor) -> None:
    """Label index → manifests and manifest → config + layers, recursively,
    for whatever part of the tree is present in the store."""
    try:
        doc = read_json(content, target)
    except errdefs.NotFound:
        return
    media_type = target.media_type or doc.get("mediaType", "")
    if is_index(media_type) or "manifests" in doc:
        children = [Descriptor.from_json(m) for m in doc.get("manifests") or []]
        content.update_labels(target.digest, {f"{LABEL_GC_MANIFEST}{i}": c.digest
                                              for i, c in enumerate(children)})
        for child in children:
            set_content_gc_labels(content, child)
    elif "config" in doc:
        labels = {LABEL_GC_CONFIG: doc["config"]["digest"]}
        for i, layer in enumerate(doc.get("layers") or []):
            labels[f"{LABEL_GC_LAYER}{i}"] = layer["digest"]
        content.update_labels(target.digest, labels)


# ---------------------------------------------------------------- unpack


def _writable_dir(mounts: list[Mount]) -> tuple[str, bool] | None:
    """The directory a layer can be written into without mounting, and
    whether whiteouts must be overlay-style (char 0/0, opaque xattr)."""
    if len(mounts) != 1:
        return None
    m = mounts[0]
    if m.type == "bind" and "ro" not in m.options:
        return m.source, False
    if m.type == "overlay":
        for opt in m.options:
            if opt.startswith("upperdir="):
                return opt[len("upperdir="):], True
    return None


@contextlib.contextmanager
def _apply_target(mounts: list[Mount]) -> Iterator[tuple[str, bool]]:
    direct = _writable_dir(mounts)
    if direct is not None:
        yield direct
        return
    from dockyard.image.snapshots.mount import mounted

    with mounted(mounts) as root:
        yield root, False


def _apply(content: Provider, mounts: list[Mount], layer: Descriptor) -> str:
    from dockyard.image.layers import apply_layer

    with _apply_target(mounts) as (root, overlay_whiteouts), \
            content.open_blob(layer.digest) as blob:
        result = apply_layer(root, blob, compression=layer_compression(layer.media_type),
                             overlay_whiteouts=overlay_whiteouts)
    return result.diff_id


def _snapshot_committed(snapshotter: Snapshotter, name: str) -> bool:
    try:
        info = snapshotter.stat(name)
    except errdefs.NotFound:
        return False
    if info.kind != SnapshotKind.COMMITTED:
        raise errdefs.Conflict(
            f"snapshot {name} exists but is {info.kind.value}, not committed: remove it")
    return True


def unpack(content: ContentStore, snapshotter: Snapshotter, target: Descriptor, *,
           snapshotter_name: str = "overlayfs", platform: Platform | str | None = None,
           progress: Callable[[LayerResult], None] | None = None) -> UnpackResult:
    """Make the committed snapshot chain for target's layers; returns the top."""
    manifest_desc, config_desc, config, layers = image_layers(content, target, platform)
    diff_ids = config["rootfs"]["diff_ids"]
    results: list[LayerResult] = []
    parent: str | None = None
    for layer, diff_id, chain_id in zip(layers, diff_ids, chain_ids(diff_ids), strict=True):
        extracted = False
        if not _snapshot_committed(snapshotter, chain_id):
            extracted = _unpack_layer(content, snapshotter, layer, diff_id, chain_id, parent)
        result = LayerResult(layer.digest, diff_id, chain_id, extracted)
        results.append(result)
        if progress is not None:
            progress(result)
        with contextlib.suppress(errdefs.NotFound):
            content.update_labels(layer.digest, {LABEL_UNCOMPRESSED: diff_id})
        parent = chain_id
    set_content_gc_labels(content, target)
    if parent is not None:
        content.update_labels(config_desc.digest, {LABEL_GC_SNAPSHOT + snapshotter_name: parent})
    return UnpackResult(manifest_desc, config_desc, parent, tuple(results))


def _unpack_layer(content: ContentStore, snapshotter: Snapshotter, layer: Descriptor,
                  diff_id: str, chain_id: str, parent: str | None) -> bool:
    key = f"extract-{secrets.token_hex(6)}-{chain_id}"
    mounts = snapshotter.prepare(key, parent)
    try:
        actual = _apply(content, mounts, layer)
        if actual != diff_id:
            raise errdefs.DataLoss(
                f"layer {layer.digest}: unpacked content has diff_id {actual} but the image "
                f"config says {diff_id}; the image is corrupt, pull or load it again")
        snapshotter.commit(chain_id, key, labels={LABEL_SNAPSHOT_REF: chain_id})
    except errdefs.AlreadyExists:
        # Another unpack committed the same chain first; its bytes are as good.
        _remove_quietly(snapshotter, key)
        return False
    except BaseException:
        _remove_quietly(snapshotter, key)
        raise
    return True


def _remove_quietly(snapshotter: Snapshotter, key: str) -> None:
    try:
        snapshotter.remove(key)
    except errdefs.NotFound:
        pass
    except Exception:  # noqa: BLE001 - the original error matters more
        log.warning("could not remove snapshot %s after a failed unpack", key, exc_info=True)


class StreamUnpacker:
    """The unpack_stream callback for distribution.pull: each layer goes into
    a committed snapshot while it downloads, so a pull costs about the larger
    of download and extraction rather than their sum.

    The config's diff_ids are not known to the callback, so each snapshot is
    committed under the chain id of what was actually extracted (never a
    wrong name for its bytes); finish() then checks that chain against the
    image config and sets the GC labels, and returns what unpack() would.
    A layer whose blob already carries its diff_id label from an earlier
    unpack and whose chain is committed is skipped ("Already exists").
    """

    def __init__(self, content: ContentStore, snapshotter: Snapshotter, *,
                 snapshotter_name: str = "overlayfs") -> None:
        self.content = content
        self.snapshotter = snapshotter
        self.snapshotter_name = snapshotter_name
        self.diff_ids: list[str] = []
        self.results: list[LayerResult] = []

    def __call__(self, layer: Descriptor, stream: BinaryIO) -> None:
        from dockyard.image.layers import apply_layer

        parent = self.results[-1].chain_id if self.results else None
        known = self._known_diff_id(layer.digest)
        if known is not None:
            chain_id = chain_ids([*self.diff_ids, known])[-1]
            if _snapshot_committed(self.snapshotter, chain_id):
                self._record(layer, known, chain_id, extracted=False)
                return
        key = f"extract-{secrets.token_hex(6)}-{layer.digest.split(':')[-1][:12]}"
        mounts = self.snapshotter.prepare(key, parent)
        extracted = True
        try:
            with _apply_target(mounts) as (root, overlay_whiteouts):
                diff_id = apply_layer(root, stream,
                                      compression=layer_compression(layer.media_type),
                                      overlay_whiteouts=overlay_whiteouts).diff_id
            chain_id = chain_ids([*self.diff_ids, diff_id])[-1]
            try:
                self.snapshotter.commit(chain_id, key, labels={LABEL_SNAPSHOT_REF: chain_id})
            except errdefs.AlreadyExists:
                _remove_quietly(self.snapshotter, key)
                extracted = False
        except BaseException:
            _remove_quietly(self.snapshotter, key)
            raise
        self._record(layer, diff_id, chain_id, extracted)

    def _known_diff_id(self, digest: str) -> str | None:
        try:
            return self.content.info(digest).labels.get(LABEL_UNCOMPRESSED)
        except errdefs.NotFound:
            return None

    def _record(self, layer: Descriptor, diff_id: str, chain_id: str, extracted: bool) -> None:
        self.diff_ids.append(diff_id)
        self.results.append(LayerResult(layer.digest, diff_id, chain_id, extracted))

    def finish(self, target: Descriptor,
               platform: Platform | str | None = None) -> UnpackResult:
        manifest_desc, config_desc, config, layers = image_layers(self.content, target,
                                                                  platform)
        expected = config["rootfs"]["diff_ids"]
        if [layer.digest for layer in layers] != [r.digest for r in self.results] or \
                expected != self.diff_ids:
            raise errdefs.DataLoss(
                f"image {manifest_desc.digest}: unpacked layers have diff_ids {self.diff_ids} "
                f"but its config says {expected}; the image is corrupt, pull it again")
        for result in self.results:
            with contextlib.suppress(errdefs.NotFound):
                self.content.update_labels(result.digest, {LABEL_UNCOMPRESSED: result.diff_id})
        set_content_gc_labels(self.content, target)
        top = self.results[-1].chain_id if self.results else None
        if top is not None:
            self.content.update_labels(config_desc.digest,
                                       {LABEL_GC_SNAPSHOT + self.snapshotter_name: top})
        return UnpackResult(manifest_desc, config_desc, top, tuple(self.results))


def unpack_image(content: ContentStore, snapshotter: Snapshotter, image: Image, *,
                 snapshotter_name: str = "overlayfs",
                 platform: Platform | str | None = None) -> UnpackResult:
    return unpack(content, snapshotter, image.target, snapshotter_name=snapshotter_name,
                  platform=platform)


# ----------------------------------------------------------------- rootfs


def prepare_rootfs(snapshotter: Snapshotter, image: Image | Descriptor | str | None,
                   key: str, *, content: ContentStore | None = None,
                   snapshotter_name: str = "overlayfs", platform: Platform | str | None = None,
                   readonly: bool = False, labels: dict[str, str] | None = None) -> list[Mount]:
    """Make a container's ACTIVE (or, readonly, VIEW) snapshot `key` on top of
    the image's top chain id and return its mounts.

    image is an image record or descriptor (then content is needed to read
    its config, and a missing snapshot chain is unpacked first), a chain id
    string, or None for an empty rootfs.
    """
    if isinstance(image, Image | Descriptor):
        if content is None:
            raise errdefs.InvalidArgument(
                "prepare_rootfs needs the content store to resolve an image's layers")
        target = image.target if isinstance(image, Image) else image
        parent = top_chain_id(content, target, platform)
        if parent is not None and not _snapshot_committed(snapshotter, parent):
            unpack(content, snapshotter, target, snapshotter_name=snapshotter_name,
                   platform=platform)
    else:
        parent = image
        if parent is not None and not _snapshot_committed(snapshotter, parent):
            raise errdefs.NotFound(
                f"snapshot {parent} not found: unpack the image before creating a container")
    if readonly:
        return snapshotter.view(key, parent, labels=labels)
    return snapshotter.prepare(key, parent, labels=labels)
