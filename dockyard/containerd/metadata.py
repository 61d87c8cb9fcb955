"""Namespaces and container records of dockyard-containerd, in SQLite (WAL).

One transaction per change. Container records are domain dataclasses; their opaque
protobuf payloads (spec, runtime options, extensions) are kept as `Blob`s (type URL +
bytes) exactly as the client sent them, so a Get returns byte-identical Anys.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from dockyard import errdefs

_SCHEMA = """
CREATE TABLE IF NOT EXISTS namespaces (
    name       TEXT PRIMARY KEY,
    labels     TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS containers (
    namespace    TEXT NOT NULL,
    id           TEXT NOT NULL,
    labels       TEXT NOT NULL DEFAULT '{}',
    image        TEXT NOT NULL DEFAULT '',
    runtime_name TEXT NOT NULL DEFAULT '',
    runtime_opts BLOB,
    spec         BLOB,
    snapshotter  TEXT NOT NULL DEFAULT '',
    snapshot_key TEXT NOT NULL DEFAULT '',
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL,
    extensions   TEXT NOT NULL DEFAULT '{}',
    sandbox      TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (namespace, id)
);
"""

MAX_LABEL_SIZE = 4096


@dataclass(frozen=True)
class Blob:
    """An opaque typed payload (a google.protobuf.Any's type URL and value)."""

    type_url: str
    value: bytes


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Container:
    id: str
    labels: dict[str, str] = field(default_factory=dict)
    image: str = ""
    runtime_name: str = ""
    runtime_options: Blob | None = None
    spec: Blob | None = None
    snapshotter: str = ""
    snapshot_key: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    extensions: dict[str, Blob] = field(default_factory=dict)
    sandbox: str = ""


def check_labels(labels: dict[str, str]) -> None:
    for key, value in labels.items():
        if not key:
            raise errdefs.InvalidArgument("label key must not be empty")
        if len(key) + len(value) > MAX_LABEL_SIZE:
            raise errdefs.InvalidArgument(
                f"label key and value length ({len(key) + len(value)} bytes) greater than "
                f"maximum size ({MAX_LABEL_SIZE} bytes), key: {key[:10]}"
            )


def _blob_to_db(blob: Blob | None) -> bytes | None:
    if blob is None:
        return None
    # type URL and value in one column: "<url>\n<value>" (URLs never contain \n)
    return blob.type_url.encode() + b"\n" + blob.value


def _blob_from_db(data: bytes | None) -> Blob | None:
    if data is None:
        return None
    url, _, value = bytes(data).partition(b"\n")
    return Blob(url.decode(), value)


def _ext_to_db(ext: dict[str, Blob]) -> str:
    return json.dumps({k: [v.type_url, v.value.hex()] for k, v in ext.items()}, sort_keys=True)


def _ext_from_db(text: str) -> dict[str, Blob]:
    return {k: Blob(u, bytes.fromhex(h)) for k, (u, h) in json.loads(text).items()}


_COLUMNS = ("id, labels, image, runtime_name, runtime_opts, spec, snapshotter, snapshot_key, "
            "created_at, updated_at, extensions, sandbox")


def _row_to_container(row: tuple) -> Container:
    return Container(
        id=row[0], labels=json.loads(row[1]), image=row[2], runtime_name=row[3],
        runtime_options=_blob_from_db(row[4]), spec=_blob_from_db(row[5]),
        snapshotter=row[6], snapshot_key=row[7], created_at=row[8], updated_at=row[9],
        extensions=_ext_from_db(row[10]), sandbox=row[11],
    )


class MetadataStore:
    """Namespaces and containers. Thread-safe (one connection behind a lock)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None,
                                   check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout = 30000")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")
        with self.transaction() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # -- namespaces -----------------------------------------------------------

    def ensure_namespace(self, name: str) -> None:
        """Create the namespace implicitly, as containerd does on any write in it."""
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO namespaces(name, labels, created_at) "
                       "VALUES (?, '{}', ?)", (name, time.time()))

    def create_namespace(self, name: str, labels: dict[str, str]) -> Namespace:
        check_labels(labels)
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM namespaces WHERE name = ?", (name,)).fetchone():
                raise errdefs.AlreadyExists(f'namespace "{name}"')
            db.execute("INSERT INTO namespaces(name, labels, created_at) VALUES (?, ?, ?)",
                       (name, json.dumps(labels, sort_keys=True), time.time()))
        return Namespace(name, dict(labels))

    def get_namespace(self, name: str) -> Namespace:
        rows = self._query("SELECT labels FROM namespaces WHERE name = ?", (name,))
        if not rows:
            raise errdefs.NotFound(f'namespace "{name}"')
        return Namespace(name, json.loads(rows[0][0]))

    def list_namespaces(self) -> list[Namespace]:
        rows = self._query("SELECT name, labels FROM namespaces ORDER BY name")
        return [Namespace(n, json.loads(lbl)) for n, lbl in rows]

    def set_namespace_labels(self, name: str, labels: dict[str, str]) -> Namespace:
        check_labels(labels)
        with self.transaction() as db:
            cur = db.execute("UPDATE namespaces SET labels = ? WHERE name = ?",
                             (json.dumps(labels, sort_keys=True), name))
            if cur.rowcount == 0:
                raise errdefs.NotFound(f'namespace "{name}"')
        return Namespace(name, dict(labels))

    def delete_namespace(self, name: str, other_users: Iterable[str] = ()) -> None:
        """Delete an empty namespace; other_users names resource kinds still in it
        that this store does not hold (images, snapshots, ...)."""
        with self.transaction() as db:
            if not db.execute("SELECT 1 FROM namespaces WHERE name = ?", (name,)).fetchone():
                raise errdefs.NotFound(f'namespace "{name}"')
            users = list(other_users)
            if db.execute("SELECT 1 FROM containers WHERE namespace = ? LIMIT 1",
                          (name,)).fetchone():
                users.append("containers")
            if users:
                raise errdefs.FailedPrecondition(
                    f'namespace "{name}" must be empty, but it still has {", ".join(users)}'
                )
            db.execute("DELETE FROM namespaces WHERE name = ?", (name,))

    # -- containers -----------------------------------------------------------

    def get_container(self, namespace: str, cid: str) -> Container:
        rows = self._query(f"SELECT {_COLUMNS} FROM containers WHERE namespace = ? AND id = ?",
                           (namespace, cid))
        if not rows:
            raise errdefs.NotFound(f'container "{cid}" in namespace "{namespace}"')
        return _row_to_container(rows[0])

    def list_containers(self, namespace: str) -> list[Container]:
        rows = self._query(f"SELECT {_COLUMNS} FROM containers WHERE namespace = ? ORDER BY id",
                           (namespace,))
        return [_row_to_container(r) for r in rows]

    def all_containers(self) -> list[tuple[str, Container]]:
        """(namespace, container) for every namespace -- GC roots and task restore."""
        rows = self._query(f"SELECT namespace, {_COLUMNS} FROM containers ORDER BY namespace, id")
        return [(r[0], _row_to_container(r[1:])) for r in rows]

    def create_container(self, namespace: str, c: Container) -> Container:
        check_labels(c.labels)
        now = time.time()
        c = replace(c, created_at=now, updated_at=now)
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO namespaces(name, labels, created_at) "
                       "VALUES (?, '{}', ?)", (namespace, now))
            if db.execute("SELECT 1 FROM containers WHERE namespace = ? AND id = ?",
                          (namespace, c.id)).fetchone():
                raise errdefs.AlreadyExists(f'container "{c.id}"')
            db.execute(
                f"INSERT INTO containers(namespace, {_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (namespace, *self._row(c)),
            )
        return c

    @staticmethod
    def _row(c: Container) -> tuple:
        return (c.id, json.dumps(c.labels, sort_keys=True), c.image, c.runtime_name,
                _blob_to_db(c.runtime_options), _blob_to_db(c.spec), c.snapshotter,
                c.snapshot_key, c.created_at, c.updated_at, _ext_to_db(c.extensions),
                c.sandbox)

    def replace_container(self, namespace: str, c: Container) -> Container:
        """Store an updated record (the caller merged fields); bumps updated_at."""
        check_labels(c.labels)
        c = replace(c, updated_at=time.time())
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE containers SET labels = ?, image = ?, runtime_name = ?, runtime_opts = ?,"
                " spec = ?, snapshotter = ?, snapshot_key = ?, updated_at = ?, extensions = ?,"
                " sandbox = ? WHERE namespace = ? AND id = ?",
                (*self._row(c)[1:8], c.updated_at, *self._row(c)[10:], namespace, c.id),
            )
            if cur.rowcount == 0:
                raise errdefs.NotFound(f'container "{c.id}"')
        return c

    def delete_container(self, namespace: str, cid: str) -> None:
        with self.transaction() as db:
            cur = db.execute("DELETE FROM containers WHERE namespace = ? AND id = ?",
                             (namespace, cid))
            if cur.rowcount == 0:
                raise errdefs.NotFound(f'container "{cid}"')
