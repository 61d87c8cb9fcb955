"""Image manifests, indexes (manifest lists) and image configs.

Each parsed object keeps the exact bytes it came from: the digest of those
bytes is the object's identity, and re-serialising JSON would change it.
Builders (build_manifest, build_index, build_config) serialise once and
parse the result, so built and fetched objects are the same kind of thing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from dockyard import errdefs
from dockyard.image import mediatypes as mt
from dockyard.image.core import Descriptor
from dockyard.image.digest import InvalidDigest, digest_bytes, parse_digest
from dockyard.image.platform import Platform


class InvalidManifest(errdefs.InvalidArgument):
    """A manifest, index or config that does not follow the image spec."""


def _descriptor(raw: object, where: str) -> Descriptor:
    if not isinstance(raw, dict):
        raise InvalidManifest(f"{where}: a descriptor must be a JSON object")
    try:
        desc = Descriptor.from_json(raw)
        parse_digest(desc.digest)
    except InvalidDigest as exc:
        raise InvalidManifest(f"{where}: {exc}") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidManifest(f"{where}: descriptor needs digest and size ({exc})") from exc
    if desc.size < 0:
        raise InvalidManifest(f"{where}: descriptor size must not be negative")
    return desc


def _serialise(doc: dict) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


# ---------------------------------------------------------------- manifests


@dataclass(frozen=True)
class Manifest:
    """A single-platform image manifest (Docker schema 2 or OCI)."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    raw: bytes = field(repr=False)
    annotations: dict[str, str] = field(default_factory=dict)
    subject: Descriptor | None = None
    artifact_type: str = ""
    schema_version: int = 2

    @property
    def digest(self) -> str:
        return digest_bytes(self.raw)

    @property
    def size(self) -> int:
        return len(self.raw)

    def descriptor(self, platform: Platform | None = None,
                   annotations: dict[str, str] | None = None) -> Descriptor:
        return Descriptor(
            self.media_type, self.digest, self.size, dict(annotations or {}),
            platform.to_json() if platform else None,
        )


@dataclass(frozen=True)
class Index:
    """A multi-platform index: OCI image index or Docker manifest list."""

    media_type: str
    manifests: tuple[Descriptor, ...]
    raw: bytes = field(repr=False)
    annotations: dict[str, str] = field(default_factory=dict)
    subject: Descriptor | None = None
    artifact_type: str = ""
    schema_version: int = 2

    @property
    def digest(self) -> str:
        return digest_bytes(self.raw)

    @property
    def size(self) -> int:
        return len(self.raw)

    def descriptor(self, annotations: dict[str, str] | None = None) -> Descriptor:
        return Descriptor(self.media_type, self.digest, self.size, dict(annotations or {}))


def _load_json(raw: bytes, what: str) -> dict:
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidManifest(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidManifest(f"{what} must be a JSON object")
    return doc


def detect_media_type(raw: bytes, media_type: str | None = None) -> str:
    """Work out what a manifest document is from its mediaType field, the
    Content-Type it came with, or (last resort) its shape."""
    doc = _load_json(raw, "manifest")
    return _detect(doc, media_type)


def _detect(doc: dict, header: str | None) -> str:
    header = (header or "").split(";", 1)[0].strip()
    field_type = doc.get("mediaType") or ""
    if not isinstance(field_type, str):
        raise InvalidManifest("manifest mediaType must be a string")
    if mt.is_schema1(field_type) or mt.is_schema1(header) or doc.get("schemaVersion") == 1:
        raise mt.Schema1Unsupported(mt.SCHEMA1_ERROR)
    # The field in the document is authoritative; a generic Content-Type
    # (application/json, octet-stream) from a plain web server says nothing.
    for candidate in (field_type, header):
        if mt.is_manifest(candidate) or mt.is_index(candidate):
            return candidate
    if field_type:
        raise errdefs.NotImplementedFeature(
            f"unsupported manifest media type {field_type!r}: expected a Docker schema 2 "
            f"or OCI manifest or index"
        )
    if "manifests" in doc:
        return mt.OCI_INDEX
    if "config" in doc or "layers" in doc:
        return mt.OCI_MANIFEST
    raise InvalidManifest("document is neither a manifest nor an index (no config, layers or manifests)")


def _common(doc: dict, kind: str) -> tuple[dict, Descriptor | None, str]:
    if doc.get("schemaVersion") != 2:
        raise InvalidManifest(f"{kind} schemaVersion must be 2, got {doc.get('schemaVersion')!r}")
    annotations = doc.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
    ):
        raise InvalidManifest(f"{kind} annotations must map strings to strings")
    subject = _descriptor(doc["subject"], f"{kind} subject") if doc.get("subject") else None
    artifact_type = doc.get("artifactType") or ""
    return dict(annotations), subject, artifact_type


def parse_manifest_or_index(raw: bytes, media_type: str | None = None) -> Manifest | Index:
    """Parse a fetched manifest document, keeping its bytes.

    media_type is the Content-Type it was served with, if any. Schema 1
    raises mediatypes.Schema1Unsupported.
    """
    doc = _load_json(raw, "manifest")
    kind = _detect(doc, media_type)
    if mt.is_index(kind):
        # Refuse a document that is both, so one digest cannot be read as
        # two different things by two different clients.
        if "config" in doc or "layers" in doc:
            raise InvalidManifest(f"media type {kind} must not have config or layers")
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise InvalidManifest("index needs a manifests list")
        annotations, subject, artifact_type = _common(doc, "index")
        manifests = tuple(_descriptor(d, f"index manifests[{i}]") for i, d in enumerate(entries))
        return Index(kind, manifests, bytes(raw), annotations, subject, artifact_type)
    if "manifests" in doc:
        raise InvalidManifest(f"media type {kind} must not have manifests")
    if "config" not in doc:
        raise InvalidManifest("manifest needs a config descriptor")
    layers_raw = doc.get("layers")
    if not isinstance(layers_raw, list):
        raise InvalidManifest("manifest needs a layers list")
    annotations, subject, artifact_type = _common(doc, "manifest")
    config = _descriptor(doc["config"], "manifest config")
    layers = tuple(_descriptor(d, f"manifest layers[{i}]") for i, d in enumerate(layers_raw))
    return Manifest(kind, config, layers, bytes(raw), annotations, subject, artifact_type)


def parse_manifest(raw: bytes, media_type: str | None = None) -> Manifest:
    obj = parse_manifest_or_index(raw, media_type)
    if not isinstance(obj, Manifest):
        raise InvalidManifest(f"expected an image manifest, got {obj.media_type}")
    return obj


def parse_index(raw: bytes, media_type: str | None = None) -> Index:
    obj = parse_manifest_or_index(raw, media_type)
    if not isinstance(obj, Index):
        raise InvalidManifest(f"expected an image index or manifest list, got {obj.media_type}")
    return obj


def build_manifest(config: Descriptor, layers: Sequence[Descriptor],
                   media_type: str = mt.OCI_MANIFEST,
                   annotations: dict[str, str] | None = None,
                   subject: Descriptor | None = None, artifact_type: str = "") -> Manifest:
    doc: dict = {"schemaVersion": 2, "mediaType": media_type}
    if artifact_type:
        doc["artifactType"] = artifact_type
    doc["config"] = config.to_json()
    doc["layers"] = [layer.to_json() for layer in layers]
    if subject is not None:
        doc["subject"] = subject.to_json()
    if annotations:
        doc["annotations"] = dict(annotations)
    return parse_manifest(_serialise(doc))


def build_index(manifests: Sequence[Descriptor], media_type: str = mt.OCI_INDEX,
                annotations: dict[str, str] | None = None) -> Index:
    doc: dict = {"schemaVersion": 2, "mediaType": media_type,
                 "manifests": [m.to_json() for m in manifests]}
    if annotations:
        doc["annotations"] = dict(annotations)
    return parse_index(_serialise(doc))


# ------------------------------------------------------------------ configs


@dataclass(frozen=True)
class History:
    created: str = ""
    created_by: str = ""
    author: str = ""
    comment: str = ""
    empty_layer: bool = False

    def to_json(self) -> dict:
        out: dict = {}
        for key, value in (("created", self.created), ("created_by", self.created_by),
                           ("author", self.author), ("comment", self.comment)):
            if value:
                out[key] = value
        if self.empty_layer:
            out["empty_layer"] = True
        return out


@dataclass(frozen=True)
class ImageConfig:
    """An image config (OCI or Docker v1 JSON); `doc` is the whole document."""

    architecture: str
    os: str
    diff_ids: tuple[str, ...]
    raw: bytes = field(repr=False)
    doc: dict = field(repr=False, compare=False, default_factory=dict)
    variant: str = ""
    os_version: str = ""
    os_features: tuple[str, ...] = ()
    created: str = ""
    author: str = ""
    config: dict = field(default_factory=dict)  # Env, Cmd, Entrypoint, WorkingDir, ...
    rootfs_type: str = "layers"
    history: tuple[History, ...] = ()

    @property
    def digest(self) -> str:
        return digest_bytes(self.raw)

    @property
    def id(self) -> str:
        """Docker's image ID: the config digest."""
        return self.digest

    @property
    def size(self) -> int:
        return len(self.raw)

    @property
    def platform(self) -> Platform:
        return Platform(self.os, self.architecture, self.variant, self.os_version,
                        self.os_features)

    def chain_ids(self) -> list[str]:
        return chain_ids(self.diff_ids)

    def descriptor(self, media_type: str = mt.OCI_CONFIG) -> Descriptor:
        return Descriptor(media_type, self.digest, self.size)


def parse_config(raw: bytes) -> ImageConfig:
    doc = _load_json(raw, "image config")
    rootfs = doc.get("rootfs")
    if not isinstance(rootfs, dict):
        raise InvalidManifest("image config needs a rootfs object")
    diff_ids = rootfs.get("diff_ids")
    if not isinstance(diff_ids, list):
        raise InvalidManifest("image config rootfs needs a diff_ids list")
    for i, d in enumerate(diff_ids):
        try:
            parse_digest(d)
        except (InvalidDigest, TypeError) as exc:
            raise InvalidManifest(f"image config rootfs.diff_ids[{i}]: {exc}") from exc
    if rootfs.get("type") != "layers":
        raise InvalidManifest(f"image config rootfs.type must be 'layers', got {rootfs.get('type')!r}")
    if not doc.get("architecture") or not doc.get("os"):
        raise InvalidManifest("image config needs architecture and os")
    history = []
    for h in doc.get("history") or []:
        if isinstance(h, dict):
            history.append(History(
                created=h.get("created") or "", created_by=h.get("created_by") or "",
                author=h.get("author") or "", comment=h.get("comment") or "",
                empty_layer=bool(h.get("empty_layer")),
            ))
    container_config = doc.get("config") or {}
    if not isinstance(container_config, dict):
        raise InvalidManifest("image config 'config' must be an object")
    return ImageConfig(
        architecture=doc["architecture"], os=doc["os"], diff_ids=tuple(diff_ids),
        raw=bytes(raw), doc=doc, variant=doc.get("variant") or "",
        os_version=doc.get("os.version") or "",
        os_features=tuple(doc.get("os.features") or ()),
        created=doc.get("created") or "", author=doc.get("author") or "",
        config=container_config, rootfs_type="layers", history=tuple(history),
    )


def build_config(platform: Platform, diff_ids: Sequence[str], config: dict | None = None,
                 history: Iterable[History] = (), created: str = "",
                 author: str = "", extra: dict | None = None) -> ImageConfig:
    """Serialise a new image config. `extra` adds top-level fields verbatim."""
    doc: dict = {}
    if created:
        doc["created"] = created
    if author:
        doc["author"] = author
    doc["architecture"] = platform.architecture
    if platform.variant:
        doc["variant"] = platform.variant
    doc["os"] = platform.os
    if platform.os_version:
        doc["os.version"] = platform.os_version
    if platform.os_features:
        doc["os.features"] = list(platform.os_features)
    if config:
        doc["config"] = dict(config)
    doc["rootfs"] = {"type": "layers", "diff_ids": list(diff_ids)}
    hist = [h.to_json() for h in history]
    if hist:
        doc["history"] = hist
    if extra:
        doc.update(extra)
    return parse_config(_serialise(doc))


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """Layer chain IDs: chain[0] = diff[0]; chain[n] = sha256(chain[n-1] + " " + diff[n]).

    A chain ID names a layer together with everything below it, which is
    what a snapshot of an unpacked layer is keyed by.
    """
    out: list[str] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            h = hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest()
            out.append(f"sha256:{h}")
    return out


def image_id(config: ImageConfig | bytes) -> str:
    """The image ID Docker shows: the digest of the config bytes."""
    if isinstance(config, ImageConfig):
        return config.digest
    return digest_bytes(config)
