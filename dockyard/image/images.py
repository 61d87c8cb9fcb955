"""The image-name store: normalised reference name → target descriptor.

An image here is only a name pointing at content (a manifest or an index),
plus labels, as in containerd's image service. Deleting a name leaves the
content alone; the garbage collector decides when blobs go, because other
names or containers may still reach them.

Metadata lives in one SQLite table (WAL); each change is one transaction.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from dockyard import errdefs
from dockyard.image.core import Descriptor
from dockyard.image.reference import parse_reference

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    name        TEXT PRIMARY KEY,
    media_type  TEXT NOT NULL,
    digest      TEXT NOT NULL,
    size        INTEGER NOT NULL,
    annotations TEXT NOT NULL DEFAULT '{}',
    labels      TEXT NOT NULL DEFAULT '{}',
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS images_digest ON images (digest);
"""

# Fields update() may change; containerd's field paths use the same spelling.
_UPDATABLE = ("target", "labels")


@dataclass(frozen=True)
class Image:
    """A named image: the name is a normalised reference string
    ("docker.io/library/busybox:latest" or "...@sha256:...")."""

    name: str
    target: Descriptor
    labels: dict[str, str] = field(default_factory=dict)
    created_at: float = 0.0
    updated_at: float = 0.0


def normalize_name(name: str) -> str:
    """Normalise a user-typed reference ("busybox") to its full form
    ("docker.io/library/busybox:latest"), as Docker resolves it."""
    if not name or name != name.strip():
        raise errdefs.InvalidArgument(f"invalid image name {name!r}: must be non-empty, no spaces")
    try:
        return str(parse_reference(name))
    except errdefs.InvalidArgument as exc:
        raise errdefs.InvalidArgument(f"invalid image name {name!r}: {exc}") from exc


class ImageStore:
    """SQLite-backed image names. Thread-safe; one connection per store."""

    def __init__(self, db_path: str | Path, *, normalize: bool = True) -> None:
        self._path = str(db_path)
        self._normalize = normalize
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> ImageStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _name(self, name: str) -> str:
        return normalize_name(name) if self._normalize else name

    # ------------------------------------------------------------- reads

    def get(self, name: str) -> Image:
        key = self._name(name)
        with self._lock:
            row = self._db.execute("SELECT * FROM images WHERE name = ?", (key,)).fetchone()
        if row is None:
            raise errdefs.NotFound(f"image {key!r} not found: pull, load or import it first")
        return _row_to_image(row)

    def list(self, *filters: str) -> list[Image]:
        """All images matching every filter (see parse_filter), by name."""
        preds = [p for f in filters for p in parse_filter(f)]
        with self._lock:
            rows = self._db.execute("SELECT * FROM images ORDER BY name").fetchall()
        images = [_row_to_image(r) for r in rows]
        return [img for img in images if all(p(img) for p in preds)]

    def by_digest(self, digest: str) -> list[Image]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM images WHERE digest = ? ORDER BY name", (digest,)
            ).fetchall()
        return [_row_to_image(r) for r in rows]

    # ------------------------------------------------------------ writes

    def create(self, image: Image) -> Image:
        name = self._name(image.name)
        _check_target(image.target, name)
        now = time.time()
        created = replace(image, name=name, created_at=now, updated_at=now)
        try:
            with self._lock, self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    "INSERT INTO images VALUES (?, ?, ?, ?, ?, ?, ?, ?)", _image_to_row(created)
                )
        except sqlite3.IntegrityError as exc:
            raise errdefs.AlreadyExists(
                f"image {name!r} already exists: delete it first or use update"
            ) from exc
        return created

    def update(self, image: Image, fieldpaths: Iterable[str] | None = None) -> Image:
        """Change target and/or labels of an existing image.

        fieldpaths limits what changes: "target", "labels" or "labels.<key>"
        (a missing key in image.labels then removes that label).
        """
        name = self._name(image.name)
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute("SELECT * FROM images WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise errdefs.NotFound(f"image {name!r} not found: create it before updating")
            current = _row_to_image(row)
            updated = _apply_fieldpaths(current, image, fieldpaths)
            _check_target(updated.target, name)
            updated = replace(updated, updated_at=time.time())
            self._db.execute("DELETE FROM images WHERE name = ?", (name,))
            self._db.execute("INSERT INTO images VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             _image_to_row(updated))
        return updated

    def put(self, image: Image) -> Image:
        """Create, or point an existing name at a new target (like a re-tag)."""
        name = self._name(image.name)
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute("SELECT * FROM images WHERE name = ?", (name,)).fetchone()
            now = time.time()
            created_at = _row_to_image(row).created_at if row is not None else now
            _check_target(image.target, name)
            new = replace(image, name=name, created_at=created_at, updated_at=now)
            self._db.execute("INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             _image_to_row(new))
        return new

    def delete(self, name: str) -> None:
        key = self._name(name)
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            cur = self._db.execute("DELETE FROM images WHERE name = ?", (key,))
            if cur.rowcount == 0:
                raise errdefs.NotFound(f"image {key!r} not found: nothing to delete")


# ----------------------------------------------------------------- helpers


def _check_target(target: Descriptor, name: str) -> None:
    from dockyard.image.digest import validate_digest

    if not target.media_type:
        raise errdefs.InvalidArgument(f"image {name!r}: target needs a media type")
    validate_digest(target.digest)
    if target.size < 0:
        raise errdefs.InvalidArgument(f"image {name!r}: target size must not be negative")


def _apply_fieldpaths(current: Image, new: Image, fieldpaths: Iterable[str] | None) -> Image:
    if not fieldpaths:
        return replace(current, target=new.target, labels=dict(new.labels))
    target, labels = current.target, dict(current.labels)
    for path in fieldpaths:
        if path == "target":
            target = new.target
        elif path == "labels":
            labels = dict(new.labels)
        elif path.startswith("labels."):
            key = path[len("labels."):]
            if key in new.labels:
                labels[key] = new.labels[key]
            else:
                labels.pop(key, None)
        else:
            raise errdefs.InvalidArgument(
                f"cannot update field {path!r} of image {current.name!r}: "
                f"only {', '.join(_UPDATABLE)} and labels.<key> are updatable"
            )
    return replace(current, target=target, labels=labels)


def _image_to_row(img: Image) -> tuple:
    return (img.name, img.target.media_type, img.target.digest, img.target.size,
            json.dumps(img.target.annotations, sort_keys=True),
            json.dumps(img.labels, sort_keys=True), img.created_at, img.updated_at)


def _row_to_image(row: tuple) -> Image:
    name, media_type, digest, size, annotations, labels, created_at, updated_at = row
    return Image(name=name,
                 target=Descriptor(media_type=media_type, digest=digest, size=size,
                                   annotations=json.loads(annotations)),
                 labels=json.loads(labels), created_at=created_at, updated_at=updated_at)


# ------------------------------------------------------------------ filters

_FILTER_RE = re.compile(r'^\s*([A-Za-z_.]+(?:"[^"]*")?[A-Za-z_.]*)\s*(==|!=|~=)?\s*(.*?)\s*$')


def _field_value(img: Image, fieldname: str) -> str | None:
    if fieldname == "name":
        return img.name
    if fieldname in ("target.digest", "digest"):
        return img.target.digest
    if fieldname in ("target.mediatype", "target.media_type"):
        return img.target.media_type
    if fieldname.startswith("labels."):
        key = fieldname[len("labels."):]
        if len(key) >= 2 and key[0] == key[-1] == '"':
            key = key[1:-1]
        return img.labels.get(key)
    raise errdefs.InvalidArgument(
        f"unknown image filter field {fieldname!r}: use name, target.digest, "
        "target.mediatype or labels.<key>"
    )


def parse_filter(text: str) -> list[Callable[[Image], bool]]:
    """Parse containerd-style filters: comma-separated terms, all must hold.

    A term is `field==value`, `field!=value`, `field~=regex` or just `field`
    (present and non-empty). Fields: name, target.digest, target.mediatype,
    labels.<key> (quote keys with dots: labels."a.b"==c).
    """
    preds: list[Callable[[Image], bool]] = []
    for term in _split_terms(text):
        m = _FILTER_RE.match(term)
        if not m:
            raise errdefs.InvalidArgument(f"invalid image filter {term!r}")
        fieldname, op, value = m.group(1), m.group(2), m.group(3)
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        _field_value(Image("x", Descriptor("x", "sha256:" + "0" * 64, 0)), fieldname)
        preds.append(_make_pred(fieldname, op, value))
    return preds


def _split_terms(text: str) -> list[str]:
    terms, cur, quoted = [], [], False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            terms.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    terms.append("".join(cur))
    return [t for t in terms if t.strip()]


def _make_pred(fieldname: str, op: str | None, value: str) -> Callable[[Image], bool]:
    if op == "~=":
        try:
            regex = re.compile(value)
        except re.error as exc:
            raise errdefs.InvalidArgument(f"invalid regex {value!r} in image filter") from exc

        def match_regex(img: Image) -> bool:
            v = _field_value(img, fieldname)
            return v is not None and regex.search(v) is not None
        return match_regex
    if op == "==":
        return lambda img: _field_value(img, fieldname) == value
    if op == "!=":
        return lambda img: _field_value(img, fieldname) != value
    return lambda img: bool(_field_value(img, fieldname))
