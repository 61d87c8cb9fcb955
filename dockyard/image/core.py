"""Domain types and role-split interfaces of the image layer (no I/O here).

The shapes follow containerd's: the content store is split into Provider
(read), Ingester (write), IngestManager (in-flight writes) and Manager
(info/update/list/delete); a Snapshotter has the ten methods of containerd's.
A function asks for the narrowest role it needs.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor: what a manifest says about a blob."""

    media_type: str
    digest: str  # "sha256:<hex>"
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    platform: dict | None = None
    urls: tuple[str, ...] = ()

    def to_json(self) -> dict:
        out: dict = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform:
            out["platform"] = dict(self.platform)
        if self.urls:
            out["urls"] = list(self.urls)
        return out

    @classmethod
    def from_json(cls, raw: dict) -> Descriptor:
        return cls(
            media_type=raw.get("mediaType", ""),
            digest=raw["digest"],
            size=int(raw["size"]),
            annotations=dict(raw.get("annotations") or {}),
            platform=raw.get("platform"),
            urls=tuple(raw.get("urls") or ()),
        )


# ---------------------------------------------------------------- content


@dataclass(frozen=True)
class ContentInfo:
    digest: str
    size: int
    created_at: float
    updated_at: float
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class IngestStatus:
    ref: str
    offset: int
    total: int
    expected: str | None
    started_at: float
    updated_at: float


class ContentWriter(Protocol):
    """An in-flight write. Bytes become a visible blob only at commit, after
    the size and digest are verified; a mismatch raises errdefs.DataLoss and
    the blob stays invisible."""

    ref: str

    def write(self, data: bytes) -> int: ...
    def offset(self) -> int: ...
    def digest(self) -> str: ...
    def commit(self, size: int = 0, expected: str | None = None,
               labels: dict[str, str] | None = None) -> str: ...
    def truncate(self, size: int) -> None: ...
    def close(self) -> None: ...


class Provider(Protocol):
    def open_blob(self, digest: str) -> BinaryIO: ...
    def read_blob(self, digest: str) -> bytes: ...


class Ingester(Protocol):
    def writer(self, ref: str, total: int = 0, expected: str | None = None) -> ContentWriter: ...


class IngestManager(Protocol):
    def ingest_status(self, ref: str) -> IngestStatus: ...
    def list_ingests(self) -> list[IngestStatus]: ...
    def abort(self, ref: str) -> None: ...


class ContentManager(Protocol):
    def info(self, digest: str) -> ContentInfo: ...
    def update_labels(self, digest: str, labels: dict[str, str]) -> ContentInfo: ...
    def walk(self) -> Iterator[ContentInfo]: ...
    def delete(self, digest: str) -> None: ...


class ContentStore(Provider, Ingester, IngestManager, ContentManager, Protocol):
    """All four roles together."""


# -------------------------------------------------------------- snapshots


class SnapshotKind(enum.Enum):
    VIEW = "view"
    ACTIVE = "active"
    COMMITTED = "committed"


@dataclass(frozen=True)
class SnapshotInfo:
    name: str
    kind: SnapshotKind
    parent: str | None
    labels: dict[str, str]
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class Mount:
    """One mount(2) to perform: the result of Snapshotter.mounts()."""

    type: str  # "overlay" or "bind"
    source: str
    options: tuple[str, ...] = ()
    target: str = ""  # empty: the caller's mount point


@dataclass(frozen=True)
class Usage:
    size: int  # bytes used by this snapshot alone (not its parents)
    inodes: int


class Snapshotter(Protocol):
    """A named tree of filesystem snapshots.

    Lifecycle: prepare(key, parent) makes an ACTIVE snapshot (writable) on top
    of a COMMITTED parent; view(key, parent) a read-only VIEW; commit(name,
    key) turns an ACTIVE snapshot into a COMMITTED one named name (the key is
    gone afterwards); remove(key) deletes a snapshot that has no children.
    mounts(key) tells how to mount an ACTIVE or VIEW snapshot.
    """

    def stat(self, key: str) -> SnapshotInfo: ...
    def update(self, info: SnapshotInfo, fieldpaths: list[str] | None = None) -> SnapshotInfo: ...
    def usage(self, key: str) -> Usage: ...
    def mounts(self, key: str) -> list[Mount]: ...
    def prepare(self, key: str, parent: str | None = None,
                labels: dict[str, str] | None = None) -> list[Mount]: ...
    def view(self, key: str, parent: str | None = None,
             labels: dict[str, str] | None = None) -> list[Mount]: ...
    def commit(self, name: str, key: str, labels: dict[str, str] | None = None) -> None: ...
    def remove(self, key: str) -> None: ...
    def walk(self) -> Iterator[SnapshotInfo]: ...
    def close(self) -> None: ...
