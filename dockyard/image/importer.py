"""`docker import` and `docker export`: a filesystem tar ⇄ a one-layer image.

import_rootfs turns a tar into an image: the tar is one gzip layer (the
diff_id is the sha256 of the uncompressed tar), the config carries Docker's
image config fields set by Dockerfile-like change lines, and the name is
registered only after every blob is committed. export_rootfs writes a
container's filesystem (a directory or the mounts of a snapshot) as a tar.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shlex
import tarfile
import tempfile
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import BinaryIO

from dockyard import errdefs
from dockyard.image.content import copy_stream, write_blob
from dockyard.image.core import ContentStore, Descriptor, Mount
from dockyard.image.images import Image, ImageStore
from dockyard.image.mediatypes import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST
from dockyard.image.platform import default_platform

_CHUNK = 1 << 20

def host_architecture() -> str:
    return default_platform().architecture


def rfc3339(ts: float) -> str:
    """UTC timestamp the way Docker writes `created` (Z suffix, no offset)."""
    dt = datetime.fromtimestamp(ts, tz=UTC)
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if dt.microsecond:
        text += f".{dt.microsecond:06d}".rstrip("0")
    return text + "Z"


# ------------------------------------------------------------------ changes

_CHANGE_INSTRUCTIONS = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "USER", "VOLUME",
                        "WORKDIR", "STOPSIGNAL", "ONBUILD")


def _json_or_shell(args: str, instruction: str) -> list[str]:
    """Exec form (a JSON string array) or shell form (wrapped in /bin/sh -c)."""
    stripped = args.strip()
    if stripped.startswith("["):
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    if not stripped:
        raise errdefs.InvalidArgument(f"{instruction} needs an argument")
    return ["/bin/sh", "-c", stripped]


def _words(args: str, instruction: str) -> list[str]:
    try:
        return shlex.split(args, posix=True)
    except ValueError as exc:
        raise errdefs.InvalidArgument(f"{instruction} {args!r}: {exc}") from exc


def _key_values(args: str, instruction: str) -> list[tuple[str, str]]:
    """`K=V K2="v 2"` pairs, or the legacy single `K value with spaces` form."""
    words = _words(args, instruction)
    if not words:
        raise errdefs.InvalidArgument(f"{instruction} needs at least one argument")
    if "=" not in words[0]:
        if len(words) < 2:
            raise errdefs.InvalidArgument(
                f"{instruction} {args.strip()!r}: must have two arguments (KEY value) "
                "or KEY=value pairs")
        key, _, rest = args.strip().partition(" ")
        return [(key, rest.strip())]
    pairs = []
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise errdefs.InvalidArgument(
                f"{instruction} {args.strip()!r}: {word!r} is not of the form KEY=value")
        pairs.append((key, value))
    return pairs


def apply_changes(config: dict, changes: Iterable[str]) -> dict:
    """Apply Dockerfile-like change lines to a Docker image `config` dict.

    Supports CMD ENTRYPOINT ENV EXPOSE LABEL USER VOLUME WORKDIR STOPSIGNAL
    ONBUILD, as `docker import --change` and `docker commit --change` do.
    Returns a new dict; the input is left untouched.
    """
    cfg = json.loads(json.dumps(config or {}))
    for line in changes:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        if "\t" in instruction:
            instruction, _, extra = instruction.partition("\t")
            args = extra + " " + args
        instruction = instruction.upper()
        if instruction not in _CHANGE_INSTRUCTIONS:
            raise errdefs.InvalidArgument(
                f"{instruction} is not a valid change command: use one of "
                f"{', '.join(_CHANGE_INSTRUCTIONS)}")
        args = args.strip()
        if instruction == "CMD":
            cfg["Cmd"] = _json_or_shell(args, instruction)
        elif instruction == "ENTRYPOINT":
            cfg["Entrypoint"] = _json_or_shell(args, instruction)
        elif instruction == "ENV":
            env = list(cfg.get("Env") or [])
            for key, value in _key_values(args, instruction):
                env = [e for e in env if e.partition("=")[0] != key]
                env.append(f"{key}={value}")
            cfg["Env"] = env
        elif instruction == "LABEL":
            labels = dict(cfg.get("Labels") or {})
            for key, value in _key_values(args, instruction):
                labels[key] = value
            cfg["Labels"] = labels
        elif instruction == "EXPOSE":
            ports = dict(cfg.get("ExposedPorts") or {})
            for port in _words(args, instruction):
                ports[_normalize_port(port)] = {}
            cfg["ExposedPorts"] = ports
        elif instruction == "VOLUME":
            volumes = dict(cfg.get("Volumes") or {})
            if args.startswith("["):
                paths = _json_or_shell(args, instruction)
                if paths[:2] == ["/bin/sh", "-c"]:
                    raise errdefs.InvalidArgument(f"VOLUME {args!r}: invalid JSON array")
            else:
                paths = _words(args, instruction)
            for path in paths:
                if not path:
                    raise errdefs.InvalidArgument("VOLUME specified can not be an empty string")
                volumes[path] = {}
            cfg["Volumes"] = volumes
        elif instruction in ("USER", "WORKDIR", "STOPSIGNAL"):
            if not args:
                raise errdefs.InvalidArgument(f"{instruction} needs an argument")
            key = {"USER": "User", "WORKDIR": "WorkingDir", "STOPSIGNAL": "StopSignal"}
            value = args
            if instruction == "WORKDIR" and not value.startswith("/"):
                value = os.path.normpath(os.path.join(cfg.get("WorkingDir") or "/", value))
            cfg[key[instruction]] = value
        elif instruction == "ONBUILD":
            trigger = args.partition(" ")[0].upper()
            if trigger in ("ONBUILD", "FROM", "MAINTAINER") or not trigger:
                raise errdefs.InvalidArgument(f"{trigger or 'ONBUILD'} isn't allowed as an "
                                              "ONBUILD trigger")
            cfg["OnBuild"] = list(cfg.get("OnBuild") or []) + [args]
    return cfg


def _normalize_port(port: str) -> str:
    number, _, proto = port.partition("/")
    proto = (proto or "tcp").lower()
    lo, _, hi = number.partition("-")
    if not lo.isdigit() or (hi and not hi.isdigit()) or proto not in ("tcp", "udp", "sctp"):
        raise errdefs.InvalidArgument(
            f"invalid EXPOSE port {port!r}: use PORT[/PROTO] with PROTO tcp, udp or sctp")
    return f"{number}/{proto}"


# --------------------------------------------------------------- content io


def store_stream(store: ContentStore, stream: BinaryIO, expected: str, size: int,
                 labels: dict[str, str] | None = None) -> None:
    """Commit a stream as one blob, verified against expected and size; a blob
    already present only gets the labels merged in."""
    copy_stream(store, f"import-{expected}", stream, expected=expected, total=size,
                labels=labels)
    if labels:
        store.update_labels(expected, labels)


def write_json_blob(store: ContentStore, obj: dict, media_type: str,
                    labels: dict[str, str] | None = None) -> tuple[Descriptor, bytes]:
    raw = json.dumps(obj, separators=(",", ":")).encode()
    return write_blob(store, raw, labels=labels, media_type=media_type), raw


# ------------------------------------------------------------------- import


def compress_layer(tar_stream: BinaryIO, out: BinaryIO,
                   level: int = 6) -> tuple[str, str, int]:
    """gzip tar_stream into out; returns (diff_id, blob digest, blob size).

    The standard library's gzip with mtime=0 and no file name keeps the blob
    byte-identical for the same tar, so test images have stable digests.
    """
    uncompressed = hashlib.sha256()
    compressed = _HashingWriter(out)
    with gzip.GzipFile(filename="", fileobj=compressed, mode="wb", compresslevel=level,
                       mtime=0) as gz:
        while True:
            chunk = tar_stream.read(_CHUNK)
            if not chunk:
                break
            uncompressed.update(chunk)
            gz.write(chunk)
    return ("sha256:" + uncompressed.hexdigest(), "sha256:" + compressed.hash.hexdigest(),
            compressed.size)


class _HashingWriter:
    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        self.out.write(data)
        return len(data)

    def flush(self) -> None:
        self.out.flush()


def import_rootfs(store: ContentStore, images: ImageStore | None, tar_stream: BinaryIO,
                  reference: str | None, changes: Sequence[str] = (), *,
                  message: str = "", created: float | None = None,
                  architecture: str | None = None, os_name: str = "linux",
                  variant: str | None = None, author: str = "",
                  history_created_by: str | None = None,
                  labels: dict[str, str] | None = None,
                  tmp_dir: str | None = None) -> tuple[Image, Descriptor]:
    """Import a filesystem tar as a one-layer image (like `docker import`).

    Returns (image record, manifest descriptor). With reference None (or no
    image store) nothing is named and the record carries the config digest
    as its name, as `docker import` without a tag reports only an ID.
    """
    ts = time.time() if created is None else created
    with tempfile.TemporaryFile(dir=tmp_dir) as spool:
        diff_id, layer_digest, layer_size = compress_layer(tar_stream, spool)
        spool.seek(0)
        store_stream(store, spool, layer_digest, layer_size,
                   {"containerd.io/uncompressed": diff_id})
    stamp = rfc3339(ts)
    config = {
        "architecture": architecture or host_architecture(),
        "os": os_name,
        "created": stamp,
        "config": apply_changes({}, changes),
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": stamp,
                     "created_by": history_created_by or "dockyard import",
                     **({"comment": message} if message else {})}],
    }
    if variant:
        config["variant"] = variant
    if author:
        config["author"] = author
    config_desc, _ = write_json_blob(store, config, OCI_CONFIG)
    layer_desc = Descriptor(OCI_LAYER_GZIP, layer_digest, layer_size)
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": config_desc.to_json(), "layers": [layer_desc.to_json()]}
    manifest_desc, _ = write_json_blob(
        store, manifest, OCI_MANIFEST,
        {"containerd.io/gc.ref.content.config": config_desc.digest,
         "containerd.io/gc.ref.content.l.0": layer_digest})
    if reference and images is not None:
        image = images.put(Image(name=reference, target=manifest_desc, labels=dict(labels or {})))
    else:
        image = Image(name=config_desc.digest, target=manifest_desc, labels=dict(labels or {}),
                      created_at=ts, updated_at=ts)
    return image, manifest_desc


# ------------------------------------------------------------------- export


def tar_directory(root: str, out: BinaryIO) -> None:
    """Write root's tree as a tar stream (numeric owners, sorted, no following
    of symlinks), the layout `docker export` produces."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(root):
            rel_dir = os.path.relpath(dirpath, root)
            if rel_dir != ".":
                _add(tar, dirpath, rel_dir)
            # os.walk lists symlinks to directories as directories; they are
            # entries of this directory, never something to descend into.
            links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
            dirnames[:] = sorted(d for d in dirnames if d not in links)
            for name in sorted(filenames + links):
                arcname = name if rel_dir == "." else os.path.join(rel_dir, name)
                _add(tar, os.path.join(dirpath, name), arcname)


def _add(tar: tarfile.TarFile, path: str, arcname: str) -> None:
    info = tar.gettarinfo(path, arcname)
    if info is None:  # sockets have no tar form
        return
    info.uname = info.gname = ""
    if info.isreg():
        with open(path, "rb") as f:
            tar.addfile(info, f)
    else:
        tar.addfile(info)


def export_rootfs(source: str | Sequence[Mount], out: BinaryIO) -> None:
    """Write a container filesystem as a tar: source is a directory or the
    mounts of a snapshot (mounted read-only-in-spirit on a temporary dir)."""
    if isinstance(source, str | os.PathLike):
        if not os.path.isdir(source):
            raise errdefs.NotFound(f"cannot export {source!r}: not a directory")
        tar_directory(os.fspath(source), out)
        return
    from dockyard.image.snapshots.mount import mounted

    with mounted(list(source)) as root:
        tar_directory(root, out)
