"""SQLite metadata shared by the snapshotters: one row per snapshot.

Rows hold an integer id (the directory name on disk), the key (an active or
view snapshot's key, or a committed snapshot's name), kind, parent id, labels
and timestamps. Commit renames the row in place, so a committed layer keeps
the directory it was written in. Every change is one transaction
(BEGIN IMMEDIATE), and the snapshotters do their directory rename inside it,
so a crash leaves at worst a directory with no row, which open() removes.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from dockyard import errdefs
from dockyard.image.core import SnapshotInfo, SnapshotKind

_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    parent_id INTEGER REFERENCES snapshots(id),
    labels TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent_id);
"""


@dataclass(frozen=True)
class SnapshotRecord:
    id: int
    key: str
    kind: SnapshotKind
    parent_id: int | None
    parent: str | None
    labels: dict[str, str]
    created_at: float
    updated_at: float

    def info(self) -> SnapshotInfo:
        return SnapshotInfo(name=self.key, kind=self.kind, parent=self.parent,
                            labels=dict(self.labels), created_at=self.created_at,
                            updated_at=self.updated_at)


_SELECT = """
SELECT s.id, s.key, s.kind, s.parent_id, p.key, s.labels, s.created_at, s.updated_at
FROM snapshots s LEFT JOIN snapshots p ON p.id = s.parent_id
"""


def _record(row: tuple) -> SnapshotRecord:
    return SnapshotRecord(id=row[0], key=row[1], kind=SnapshotKind(row[2]), parent_id=row[3],
                          parent=row[4], labels=json.loads(row[5]), created_at=row[6],
                          updated_at=row[7])


class MetaStore:
    """Snapshot rows in <root>/metadata.db. Thread-safe; one writer at a time."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                   timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        with self.transaction():
            for statement in _SCHEMA.strip().split(";"):
                if statement.strip():
                    self._db.execute(statement)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; work done inside (renames) is undone by the caller on error."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            try:
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    # ------------------------------------------------------------ reading

    def get(self, key: str) -> SnapshotRecord:
        with self._lock:
            row = self._db.execute(_SELECT + " WHERE s.key = ?", (key,)).fetchone()
        if row is None:
            raise errdefs.NotFound(f"snapshot {key!r} does not exist")
        return _record(row)

    def get_by_id(self, snapshot_id: int) -> SnapshotRecord:
        with self._lock:
            row = self._db.execute(_SELECT + " WHERE s.id = ?", (snapshot_id,)).fetchone()
        if row is None:
            raise errdefs.NotFound(f"snapshot id {snapshot_id} does not exist")
        return _record(row)

    def all(self) -> list[SnapshotRecord]:
        with self._lock:
            rows = self._db.execute(_SELECT + " ORDER BY s.id").fetchall()
        return [_record(row) for row in rows]

    def ids(self) -> set[int]:
        with self._lock:
            return {row[0] for row in self._db.execute("SELECT id FROM snapshots")}

    def chain(self, record: SnapshotRecord) -> list[int]:
        """Ids of record's ancestors, nearest parent first."""
        out: list[int] = []
        parent = record.parent_id
        while parent is not None:
            out.append(parent)
            with self._lock:
                row = self._db.execute("SELECT parent_id FROM snapshots WHERE id = ?",
                                       (parent,)).fetchone()
            parent = row[0] if row else None
        return out

    # ------------------------------------------------------------ writing
    # These run inside transaction(); the caller holds it.

    def create(self, db: sqlite3.Connection, key: str, kind: SnapshotKind, parent: str | None,
               labels: dict[str, str] | None) -> SnapshotRecord:
        if not key:
            raise errdefs.InvalidArgument("snapshot key must not be empty")
        if db.execute("SELECT 1 FROM snapshots WHERE key = ?", (key,)).fetchone():
            raise errdefs.AlreadyExists(f"snapshot {key!r} already exists")
        parent_id = None
        if parent:
            row = db.execute("SELECT id, kind FROM snapshots WHERE key = ?", (parent,)).fetchone()
            if row is None:
                raise errdefs.NotFound(f"parent snapshot {parent!r} of {key!r} does not exist")
            if row[1] != SnapshotKind.COMMITTED.value:
                raise errdefs.InvalidArgument(
                    f"parent snapshot {parent!r} of {key!r} is {row[1]}, not committed; "
                    "commit it first")
            parent_id = row[0]
        now = time.time()
        cursor = db.execute(
            "INSERT INTO snapshots (key, kind, parent_id, labels, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (key, kind.value, parent_id, json.dumps(labels or {}, sort_keys=True), now, now))
        assert cursor.lastrowid is not None
        return SnapshotRecord(id=cursor.lastrowid, key=key, kind=kind, parent_id=parent_id,
                              parent=parent or None, labels=dict(labels or {}),
                              created_at=now, updated_at=now)

    def commit_active(self, db: sqlite3.Connection, name: str, key: str,
                      labels: dict[str, str] | None) -> SnapshotRecord:
        row = db.execute("SELECT id, kind, labels FROM snapshots WHERE key = ?",
                         (key,)).fetchone()
        if row is None:
            raise errdefs.NotFound(f"snapshot {key!r} does not exist; nothing to commit")
        if row[1] != SnapshotKind.ACTIVE.value:
            raise errdefs.FailedPrecondition(
                f"snapshot {key!r} is {row[1]}; only an active snapshot can be committed")
        if db.execute("SELECT 1 FROM snapshots WHERE key = ?", (name,)).fetchone():
            raise errdefs.AlreadyExists(f"committed snapshot {name!r} already exists")
        merged = labels if labels is not None else json.loads(row[2])
        db.execute("UPDATE snapshots SET key = ?, kind = ?, labels = ?, updated_at = ? "
                   "WHERE id = ?",
                   (name, SnapshotKind.COMMITTED.value, json.dumps(merged, sort_keys=True),
                    time.time(), row[0]))
        return self._get_in(db, row[0])

    def remove(self, db: sqlite3.Connection, key: str) -> SnapshotRecord:
        row = db.execute(_SELECT + " WHERE s.key = ?", (key,)).fetchone()
        if row is None:
            raise errdefs.NotFound(f"snapshot {key!r} does not exist")
        children = [r[0] for r in db.execute(
            "SELECT key FROM snapshots WHERE parent_id = ? ORDER BY key", (row[0],))]
        if children:
            raise errdefs.FailedPrecondition(
                f"snapshot {key!r} has children ({', '.join(children[:5])}); remove them first")
        db.execute("DELETE FROM snapshots WHERE id = ?", (row[0],))
        return _record(row)

    def update(self, info: SnapshotInfo, fieldpaths: list[str] | None) -> SnapshotInfo:
        with self.transaction() as db:
            row = db.execute("SELECT id, labels FROM snapshots WHERE key = ?",
                             (info.name,)).fetchone()
            if row is None:
                raise errdefs.NotFound(f"snapshot {info.name!r} does not exist")
            labels = json.loads(row[1])
            if not fieldpaths:
                labels = dict(info.labels)
            for path in fieldpaths or ():
                if path == "labels":
                    labels = dict(info.labels)
                elif path.startswith("labels."):
                    label = path[len("labels."):]
                    if label in info.labels:
                        labels[label] = info.labels[label]
                    else:
                        labels.pop(label, None)
                else:
                    raise errdefs.InvalidArgument(
                        f"cannot update field {path!r} of snapshot {info.name!r}: only "
                        "'labels' and 'labels.<key>' are mutable")
            db.execute("UPDATE snapshots SET labels = ?, updated_at = ? WHERE id = ?",
                       (json.dumps(labels, sort_keys=True), time.time(), row[0]))
            return self._get_in(db, row[0]).info()

    def _get_in(self, db: sqlite3.Connection, snapshot_id: int) -> SnapshotRecord:
        return _record(db.execute(_SELECT + " WHERE s.id = ?", (snapshot_id,)).fetchone())
