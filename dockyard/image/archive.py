"""Image archives: `docker save`/`docker load` tars and OCI image layouts.

Written: the layout Docker 25+ writes, which is an OCI layout and a legacy
docker archive at once (blobs/sha256/..., oci-layout, index.json, plus
manifest.json [{Config, RepoTags, Layers}] and repositories), with layers
stored uncompressed as `docker load` of every version expects; and plain
OCI layouts (directory or tar) with the stored blobs as they are.

Read: both docker layouts (old `<id>/layer.tar` + `<id>.json`, and new) and
OCI layouts. Loading is all-or-nothing for names: the tar is first staged
with every member name confined to the staging dir (no absolute paths, no
`..`, links resolved only inside the archive), every blob is checked
against its digest, and names are registered only after all content is
committed (and unpacked, when a snapshotter is given).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from dockyard import errdefs
from dockyard.image import mediatypes
from dockyard.image.compression import decompressing_reader, sniff
from dockyard.image.content import copy_stream
from dockyard.image.core import ContentStore, Descriptor, Snapshotter
from dockyard.image.digest import parse_digest
from dockyard.image.images import Image, ImageStore
from dockyard.image.importer import store_stream, write_json_blob
from dockyard.image.platform import Platform
from dockyard.image.reference import parse_reference
from dockyard.image.unpack import image_layers, read_json, set_content_gc_labels, unpack

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
OCI_LAYOUT = json.dumps({"imageLayoutVersion": "1.0.0"}, separators=(",", ":")).encode()
_CHUNK = 1 << 20
_MAX_LINK_DEPTH = 16


@dataclass(frozen=True)
class LoadedImage:
    names: tuple[str, ...]  # normalised names registered (may be empty)
    target: Descriptor  # manifest or index
    config_digest: str  # the image ID Docker prints


class UnsafeArchiveError(errdefs.InvalidArgument):
    """An archive member tried to leave the archive's root."""


# ===================================================================== save


class _TarSink:
    def __init__(self, out: BinaryIO) -> None:
        self._tar = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        self._dirs: set[str] = set()
        self.written: set[str] = set()
        self.sizes: dict[str, int] = {}

    def _info(self, name: str, size: int, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.size, info.mode = kind, size, 0o755 if kind == tarfile.DIRTYPE else 0o644
        info.mtime = 0  # fixed, so the same images save to the same bytes
        return info

    def _parents(self, name: str) -> None:
        parent = posixpath.dirname(name)
        if parent and parent not in self._dirs:
            self._parents(parent)
            self._dirs.add(parent)
            self._tar.addfile(self._info(parent + "/", 0, tarfile.DIRTYPE))

    def add_bytes(self, name: str, data: bytes) -> None:
        self.add_file(name, _BytesReader(data), len(data))

    def add_file(self, name: str, reader: BinaryIO, size: int) -> None:
        if name in self.written:
            return
        self._parents(name)
        self._tar.addfile(self._info(name, size), reader)
        self.written.add(name)

    def close(self) -> None:
        self._tar.close()


class _DirSink:
    """Writes an OCI layout directory; each file lands by atomic rename."""

    def __init__(self, root: str) -> None:
        self.root = root
        os.makedirs(root, exist_ok=True)
        self.written: set[str] = set()

    def add_bytes(self, name: str, data: bytes) -> None:
        self.add_file(name, _BytesReader(data), len(data))

    def add_file(self, name: str, reader: BinaryIO, size: int) -> None:
        path = os.path.join(self.root, name)
        if name in self.written or (name.startswith("blobs/") and os.path.exists(path)):
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            shutil.copyfileobj(reader, f, _CHUNK)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self.written.add(name)

    def close(self) -> None:
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self._view, self._pos = memoryview(data), 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._view) if n is None or n < 0 else self._pos + n
        chunk = bytes(self._view[self._pos:end])
        self._pos += len(chunk)
        return chunk


def _blob_name(digest: str) -> str:
    d = parse_digest(digest)
    return f"blobs/{d.algorithm}/{d.hex}"


def _resolve_names(images: ImageStore, names: Sequence[str]) -> list[Image]:
    if not names:
        raise errdefs.InvalidArgument("nothing to save: name at least one image")
    return [images.get(n) for n in names]


def _tag_of(name: str) -> str | None:
    try:
        return parse_reference(name).tag
    except errdefs.InvalidArgument:
        return None


def _familiar(name: str) -> str | None:
    try:
        ref = parse_reference(name)
    except errdefs.InvalidArgument:
        return None
    return ref.familiar_string() if ref.tag and not ref.digest else None


def save_docker_archive(content: ContentStore, images: ImageStore, names: Sequence[str],
                        out: BinaryIO, *, platform: Platform | str | None = None,
                        tmp_dir: str | None = None) -> None:
    """Write `docker save` output (Docker 25+ layout) for the named images."""
    records = _resolve_names(images, names)
    sink = _TarSink(out)
    entries: dict[str, dict] = {}  # config digest -> manifest.json entry
    index: list[dict] = []
    repositories: dict[str, dict[str, str]] = {}
    for image in records:
        _, config_desc, config, layers = image_layers(content, image.target, platform)
        diff_ids = config["rootfs"]["diff_ids"]
        sink.add_bytes(_blob_name(config_desc.digest), content.read_blob(config_desc.digest))
        layer_descs = []
        for layer, diff_id in zip(layers, diff_ids, strict=True):
            size = _add_uncompressed_layer(content, sink, layer, diff_id, tmp_dir)
            layer_descs.append(Descriptor(mediatypes.OCI_LAYER, diff_id, size))
        # Docker's own manifest for the saved layout: same config, plain layers.
        manifest = {"schemaVersion": 2, "mediaType": mediatypes.OCI_MANIFEST,
                    "config": Descriptor(mediatypes.OCI_CONFIG, config_desc.digest,
                                         config_desc.size).to_json(),
                    "layers": [d.to_json() for d in layer_descs]}
        raw = json.dumps(manifest, separators=(",", ":")).encode()
        manifest_digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        sink.add_bytes(_blob_name(manifest_digest), raw)
        familiar = _familiar(image.name)
        annotations = {ANNOTATION_IMAGE_NAME: image.name}
        if tag := _tag_of(image.name):
            annotations[ANNOTATION_REF_NAME] = tag
        index.append(Descriptor(mediatypes.OCI_MANIFEST, manifest_digest, len(raw),
                                annotations=annotations).to_json())
        entry = entries.setdefault(config_desc.digest, {
            "Config": _blob_name(config_desc.digest), "RepoTags": [],
            "Layers": [_blob_name(d.digest) for d in layer_descs]})
        if familiar and familiar not in entry["RepoTags"]:
            entry["RepoTags"].append(familiar)
            repo, _, tag = familiar.rpartition(":")
            if layer_descs:
                repositories.setdefault(repo, {})[tag] = parse_digest(layer_descs[-1].digest).hex
    sink.add_bytes("index.json", _json_bytes(
        {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": index}))
    sink.add_bytes("manifest.json", _json_bytes(list(entries.values())))
    sink.add_bytes("oci-layout", OCI_LAYOUT)
    if repositories:
        sink.add_bytes("repositories", _json_bytes(repositories))
    sink.close()


def _add_uncompressed_layer(content: ContentStore, sink: _TarSink, layer: Descriptor,
                            diff_id: str, tmp_dir: str | None) -> int:
    """Add the layer as a plain tar named by its diff_id; returns its size."""
    name = _blob_name(diff_id)
    if name in sink.sizes:  # shared with an image saved before
        return sink.sizes[name]
    # tar headers carry the size first, so the plain layer is spooled once.
    with tempfile.TemporaryFile(dir=tmp_dir) as spool, content.open_blob(layer.digest) as blob:
        reader = decompressing_reader(blob, mediatypes.layer_compression(layer.media_type))
        digester = hashlib.sha256()
        size = 0
        while chunk := reader.read(_CHUNK):
            digester.update(chunk)
            spool.write(chunk)
            size += len(chunk)
        if "sha256:" + digester.hexdigest() != diff_id:
            raise errdefs.DataLoss(
                f"layer {layer.digest} uncompresses to sha256:{digester.hexdigest()}, "
                f"not its diff_id {diff_id}: the stored image is corrupt, pull it again")
        spool.seek(0)
        sink.add_file(name, spool, size)
    sink.sizes[name] = size
    return size


def _json_bytes(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _walk_blobs(content: ContentStore, desc: Descriptor) -> Iterator[Descriptor]:
    """desc and everything below it (index → manifests → config + layers)."""
    yield desc
    if mediatypes.is_index(desc.media_type) or mediatypes.is_manifest(desc.media_type):
        doc = read_json(content, desc)
        if "manifests" in doc:
            for child in doc["manifests"]:
                yield from _walk_blobs(content, Descriptor.from_json(child))
        else:
            yield Descriptor.from_json(doc["config"])
            for layer in doc.get("layers") or []:
                yield Descriptor.from_json(layer)


def _complete_tree(content: ContentStore, target: Descriptor,
                   platform: Platform | str | None) -> tuple[Descriptor, list[Descriptor]]:
    """The whole tree when every blob is present, else the platform's manifest."""
    try:
        blobs = list(_walk_blobs(content, target))
        for d in blobs:
            content.info(d.digest)
        return target, blobs
    except errdefs.NotFound:
        manifest_desc, _, _, _ = image_layers(content, target, platform)
        return manifest_desc, list(_walk_blobs(content, manifest_desc))


def save_oci_layout(content: ContentStore, images: ImageStore, names: Sequence[str],
                    dest: str | BinaryIO, *, platform: Platform | str | None = None) -> None:
    """Write an OCI image layout: a directory path, or a tar to a stream.

    index.json names each image by its tag in org.opencontainers.image.ref.name
    (what `skopeo oci:DIR:tag` and `umoci --image DIR:tag` look up) and by its
    full name in io.containerd.image.name. An existing directory's other
    entries are kept.
    """
    records = _resolve_names(images, names)
    sink: _TarSink | _DirSink = _DirSink(dest) if isinstance(dest, str) else _TarSink(dest)
    index: list[dict] = []
    if isinstance(dest, str) and os.path.exists(os.path.join(dest, "index.json")):
        with open(os.path.join(dest, "index.json"), "rb") as f:
            index = list(json.load(f).get("manifests") or [])
    for image in records:
        top, blobs = _complete_tree(content, image.target, platform)
        for d in blobs:
            with content.open_blob(d.digest) as blob:
                sink.add_file(_blob_name(d.digest), blob, content.info(d.digest).size)
        annotations = {ANNOTATION_IMAGE_NAME: image.name}
        if tag := _tag_of(image.name):
            annotations[ANNOTATION_REF_NAME] = tag
        index = [m for m in index if (m.get("annotations") or {}).get(ANNOTATION_REF_NAME)
                 != annotations.get(ANNOTATION_REF_NAME, object())]
        index.append(Descriptor(top.media_type, top.digest, top.size, annotations=annotations,
                                platform=top.platform).to_json())
    sink.add_bytes("oci-layout", OCI_LAYOUT)
    if isinstance(sink, _DirSink):
        sink.written.discard("index.json")
    sink.add_bytes("index.json", _json_bytes(
        {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": index}))
    sink.close()


# ===================================================================== load


class _Staging:
    """An archive unpacked to a private dir with only regular files and dirs;
    symlinks and hard links between members are kept as an alias map."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.files: set[str] = set()
        self.aliases: dict[str, str] = {}

    def resolve(self, name: str) -> str:
        path = _clean_member_name(name)
        for _ in range(_MAX_LINK_DEPTH):
            if path in self.files:
                return os.path.join(self.root, path)
            if path not in self.aliases:
                raise errdefs.NotFound(f"archive has no file {name!r}")
            path = self.aliases[path]
        raise UnsafeArchiveError(f"archive member {name!r}: too many levels of links")

    def exists(self, name: str) -> bool:
        try:
            self.resolve(name)
        except errdefs.NotFound:
            return False
        return True

    def read(self, name: str) -> bytes:
        with open(self.resolve(name), "rb") as f:
            return f.read()

    def json(self, name: str) -> object:
        try:
            return json.loads(self.read(name))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise errdefs.InvalidArgument(f"archive file {name!r} is not valid JSON") from exc


def _clean_member_name(name: str) -> str:
    """A member name as a relative path inside the archive, or an error."""
    if "\x00" in name or "\\" in name:
        raise UnsafeArchiveError(f"archive member name {name!r} is not allowed")
    if name.startswith("/"):
        raise UnsafeArchiveError(f"archive member {name!r} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafeArchiveError(f"archive member {name!r} contains '..'")
    return "/".join(parts)


def _stage(stream: BinaryIO, root: str) -> _Staging:
    staging = _Staging(root)
    try:
        tar = tarfile.open(fileobj=decompressing_reader(stream, "auto"), mode="r|")  # noqa: SIM115
    except tarfile.TarError as exc:
        raise errdefs.InvalidArgument(f"not a tar archive: {exc}") from exc
    try:
        with tar:
            for member in tar:
                name = _clean_member_name(member.name)
                if not name:
                    continue
                if member.isdir():
                    os.makedirs(os.path.join(root, name), exist_ok=True)
                elif member.isreg():
                    path = os.path.join(root, name)
                    if name in staging.aliases or os.path.isdir(path):
                        raise UnsafeArchiveError(f"archive member {name!r} appears twice")
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    src = tar.extractfile(member)
                    with open(path, "wb") as f:
                        shutil.copyfileobj(src, f, _CHUNK)
                    staging.files.add(name)
                elif member.issym() or member.islnk():
                    if member.issym():
                        target = posixpath.join(posixpath.dirname(name), member.linkname)
                        if member.linkname.startswith("/"):
                            raise UnsafeArchiveError(
                                f"archive member {name!r} links outside the archive "
                                f"({member.linkname!r})")
                        target = posixpath.normpath(target)
                        if target.startswith("../") or target == "..":
                            raise UnsafeArchiveError(
                                f"archive member {name!r} links outside the archive "
                                f"({member.linkname!r})")
                    else:
                        target = member.linkname
                    staging.aliases[name] = _clean_member_name(target)
                else:
                    raise UnsafeArchiveError(
                        f"archive member {name!r} is a device or fifo; image archives hold "
                        "only files, directories and links")
    except tarfile.TarError as exc:
        raise errdefs.DataLoss(f"image archive is truncated or corrupt: {exc}") from exc
    return staging


@dataclass
class _Pending:
    """One image ready to commit: blobs to store, then the names to register."""

    target: Descriptor
    config_digest: str
    blobs: list[tuple[str, str, int, dict[str, str]]]  # (path, digest, size, labels)
    generated: list[tuple[dict, str]]  # JSON documents we write (obj, media type)
    names: list[str]


def _verify_file(path: str, digest: str, size: int | None) -> int:
    d = parse_digest(digest)
    h = hashlib.new(d.algorithm)
    count = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            count += len(chunk)
    if h.hexdigest() != d.hex:
        raise errdefs.DataLoss(
            f"archive blob {digest} does not match its digest (actual "
            f"{d.algorithm}:{h.hexdigest()}): the archive is corrupt")
    if size is not None and size != count:
        raise errdefs.DataLoss(
            f"archive blob {digest} has {count} bytes, its descriptor says {size}")
    return count


def _normalise(name: str) -> str | None:
    try:
        return str(parse_reference(name))
    except errdefs.InvalidArgument:
        return None


def _oci_names(desc: Descriptor, base_name: str | None,
               repo_tags: dict[str, list[str]], config_digest: str) -> list[str]:
    ann = desc.annotations or {}
    names: list[str] = []
    if ANNOTATION_IMAGE_NAME in ann and (n := _normalise(ann[ANNOTATION_IMAGE_NAME])):
        names.append(n)
    elif config_digest in repo_tags:
        names.extend(n for t in repo_tags[config_digest] if (n := _normalise(t)))
    elif ANNOTATION_REF_NAME in ann:
        ref = ann[ANNOTATION_REF_NAME]
        if any(c in ref for c in ":/@"):
            if n := _normalise(ref):
                names.append(n)
        elif base_name and (n := _normalise(f"{base_name}:{ref}")):
            names.append(n)
    return names


def _plan_oci(staging: _Staging, base_name: str | None,
              platform: Platform | str | None) -> list[_Pending]:
    index = staging.json("index.json")
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise errdefs.InvalidArgument("index.json of the archive has no manifests list")
    repo_tags: dict[str, list[str]] = {}
    if staging.exists("manifest.json"):
        for entry in _docker_entries(staging):
            cfg = _clean_member_name(entry["Config"])
            if cfg.startswith("blobs/sha256/"):
                repo_tags["sha256:" + cfg.rsplit("/", 1)[1]] = list(entry.get("RepoTags") or [])
    pending = []
    for raw in index["manifests"]:
        try:
            desc = Descriptor.from_json(raw)
            parse_digest(desc.digest)
        except (KeyError, TypeError, ValueError) as exc:
            raise errdefs.InvalidArgument(f"index.json has a malformed descriptor: {raw}") from exc
        blobs: list[tuple[str, str, int, dict[str, str]]] = []
        config_digest = _collect_oci(staging, desc, blobs, platform, required=True)
        # The layout's annotations describe the archive entry, not the image.
        target = Descriptor(desc.media_type, desc.digest, desc.size, platform=desc.platform)
        pending.append(_Pending(target, config_digest or "", blobs, [],
                                _oci_names(desc, base_name, repo_tags, config_digest or "")))
    return pending


def _collect_oci(staging: _Staging, desc: Descriptor,
                 blobs: list[tuple[str, str, int, dict[str, str]]],
                 platform: Platform | str | None, required: bool) -> str | None:
    """Verify desc's blob and its children into blobs; returns the config digest
    of the manifest chosen for platform (None when a child is absent)."""
    name = _blob_name(desc.digest)
    if not staging.exists(name):
        if required:
            raise errdefs.DataLoss(f"archive lacks blob {desc.digest} ({desc.media_type})")
        return None
    path = staging.resolve(name)
    _verify_file(path, desc.digest, desc.size)
    blobs.append((path, desc.digest, desc.size, {}))
    if not (mediatypes.is_index(desc.media_type) or mediatypes.is_manifest(desc.media_type)):
        return None
    doc = json.loads(staging.read(name))
    if "manifests" in doc:
        from dockyard.image.platform import select_manifest

        children = [Descriptor.from_json(m) for m in doc["manifests"]]
        try:
            chosen = select_manifest(children, platform)
        except errdefs.NotFound:
            chosen = children[0] if len(children) == 1 else None
        config_digest = None
        for child in children:
            got = _collect_oci(staging, child, blobs, platform, required=child is chosen)
            if child is chosen:
                config_digest = got
        if chosen is None:
            raise errdefs.NotFound(f"archive index {desc.digest} has no manifest for this platform")
        return config_digest
    config = Descriptor.from_json(doc["config"])
    _collect_oci(staging, config, blobs, platform, required=True)
    for layer in doc.get("layers") or []:
        _collect_oci(staging, Descriptor.from_json(layer), blobs, platform, required=True)
    return config.digest


def _docker_entries(staging: _Staging) -> list[dict]:
    entries = staging.json("manifest.json")
    if not isinstance(entries, list) or not all(
            isinstance(e, dict) and isinstance(e.get("Config"), str)
            and isinstance(e.get("Layers"), list) for e in entries):
        raise errdefs.InvalidArgument(
            "manifest.json of the archive is not a list of {Config, RepoTags, Layers}")
    return entries


def _plan_docker(staging: _Staging) -> list[_Pending]:
    pending = []
    for entry in _docker_entries(staging):
        config_path = staging.resolve(entry["Config"])
        config_raw = staging.read(entry["Config"])
        config_digest = "sha256:" + hashlib.sha256(config_raw).hexdigest()
        stem = posixpath.basename(_clean_member_name(entry["Config"])).removesuffix(".json")
        if len(stem) == 64 and stem != config_digest[7:]:
            raise errdefs.DataLoss(
                f"archive config {entry['Config']!r} does not match its digest "
                f"({config_digest}): the archive is corrupt")
        try:
            config = json.loads(config_raw)
            diff_ids = list(config["rootfs"]["diff_ids"])
        except (ValueError, KeyError, TypeError) as exc:
            raise errdefs.InvalidArgument(
                f"archive config {entry['Config']!r} is not an image config") from exc
        if len(diff_ids) != len(entry["Layers"]):
            raise errdefs.DataLoss(
                f"archive image {config_digest}: {len(entry['Layers'])} layers but "
                f"{len(diff_ids)} diff_ids in its config")
        blobs = [(config_path, config_digest, len(config_raw), {})]
        layer_descs = []
        for layer_name, diff_id in zip(entry["Layers"], diff_ids, strict=True):
            path = staging.resolve(layer_name)
            digest, size, compression, actual_diff = _hash_layer(path)
            clean = _clean_member_name(layer_name)
            if clean.startswith("blobs/sha256/") and digest != "sha256:" + clean.rsplit("/")[-1]:
                raise errdefs.DataLoss(f"archive blob {layer_name!r} does not match its digest")
            if actual_diff != diff_id:
                raise errdefs.DataLoss(
                    f"archive layer {layer_name!r} has diff_id {actual_diff} but the image "
                    f"config says {diff_id}: the archive is corrupt")
            media_type = {"gzip": mediatypes.OCI_LAYER_GZIP,
                          "zstd": mediatypes.OCI_LAYER_ZSTD}.get(compression or "",
                                                                mediatypes.OCI_LAYER)
            blobs.append((path, digest, size, {"containerd.io/uncompressed": diff_id}))
            layer_descs.append(Descriptor(media_type, digest, size))
        manifest = {"schemaVersion": 2, "mediaType": mediatypes.OCI_MANIFEST,
                    "config": Descriptor(mediatypes.OCI_CONFIG, config_digest,
                                         len(config_raw)).to_json(),
                    "layers": [d.to_json() for d in layer_descs]}
        raw = _json_bytes(manifest)
        target = Descriptor(mediatypes.OCI_MANIFEST, "sha256:" + hashlib.sha256(raw).hexdigest(),
                            len(raw))
        names = [n for t in entry.get("RepoTags") or [] if (n := _normalise(t))]
        pending.append(_Pending(target, config_digest, blobs,
                                [(manifest, mediatypes.OCI_MANIFEST)], names))
    return pending


def _hash_layer(path: str) -> tuple[str, int, str | None, str]:
    """(blob digest, blob size, compression, diff_id) of a layer file."""
    blob_hash = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            blob_hash.update(chunk)
            size += len(chunk)
        f.seek(0)
        compression, sniffed = sniff(f)
        if compression is None:
            return "sha256:" + blob_hash.hexdigest(), size, None, "sha256:" + blob_hash.hexdigest()
        diff_hash = hashlib.sha256()
        reader = decompressing_reader(sniffed, compression)
        while chunk := reader.read(_CHUNK):
            diff_hash.update(chunk)
    return ("sha256:" + blob_hash.hexdigest(), size, compression,
            "sha256:" + diff_hash.hexdigest())


def load_archive(content: ContentStore, images: ImageStore | None, stream: BinaryIO, *,
                 snapshotter: Snapshotter | None = None, snapshotter_name: str = "overlayfs",
                 platform: Platform | str | None = None, base_name: str | None = None,
                 tmp_dir: str | None = None) -> list[LoadedImage]:
    """Load a `docker save` tar (either layout) or an OCI layout tar.

    The stream may be gzip/zstd compressed. base_name names OCI entries whose
    ref.name is only a tag (`base_name:tag`). Raises UnsafeArchiveError for
    members that escape the archive, DataLoss for a blob that does not match
    its digest; in both cases no name is registered.
    """
    with _staging_dir(tmp_dir) as root:
        staging = _stage(stream, root)
        return _load_staged(content, images, staging, snapshotter, snapshotter_name, platform,
                            base_name)


def load_oci_layout(content: ContentStore, images: ImageStore | None, directory: str, *,
                    snapshotter: Snapshotter | None = None, snapshotter_name: str = "overlayfs",
                    platform: Platform | str | None = None,
                    base_name: str | None = None) -> list[LoadedImage]:
    """Load an OCI image layout directory (e.g. one written by skopeo)."""
    if not os.path.isfile(os.path.join(directory, "index.json")):
        raise errdefs.NotFound(f"{directory} is not an OCI image layout: no index.json")
    staging = _Staging(directory)
    for dirpath, _, filenames in os.walk(directory):
        for name in filenames:
            full = os.path.join(dirpath, name)
            if os.path.isfile(full) and not os.path.islink(full):
                staging.files.add(os.path.relpath(full, directory))
    return _load_staged(content, images, staging, snapshotter, snapshotter_name, platform,
                        base_name)


@contextlib.contextmanager
def _staging_dir(tmp_dir: str | None) -> Iterator[str]:
    root = tempfile.mkdtemp(prefix="dockyard-load-", dir=tmp_dir)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _load_staged(content: ContentStore, images: ImageStore | None, staging: _Staging,
                 snapshotter: Snapshotter | None, snapshotter_name: str,
                 platform: Platform | str | None, base_name: str | None) -> list[LoadedImage]:
    if staging.exists("index.json"):
        pending = _plan_oci(staging, base_name, platform)
    elif staging.exists("manifest.json"):
        pending = _plan_docker(staging)
    else:
        raise errdefs.InvalidArgument(
            "not an image archive: it has neither manifest.json (docker save) nor "
            "index.json (OCI layout)")
    # Everything is verified; now commit content, then unpack, then name.
    for item in pending:
        for path, digest, size, labels in item.blobs:
            with open(path, "rb") as f:
                if labels:
                    store_stream(content, f, digest, size, labels)
                else:
                    copy_stream(content, f"load-{digest}", f, expected=digest, total=size)
        for obj, media_type in item.generated:
            write_json_blob(content, obj, media_type)
        set_content_gc_labels(content, item.target)
    for item in pending:
        if snapshotter is not None:
            unpack(content, snapshotter, item.target, snapshotter_name=snapshotter_name,
                   platform=platform)
    loaded = []
    for item in pending:
        registered = []
        if images is not None:
            for name in item.names:
                registered.append(images.put(Image(name=name, target=item.target)).name)
        loaded.append(LoadedImage(tuple(registered), item.target, item.config_digest))
    return loaded
