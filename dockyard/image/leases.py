"""Leases: named holds that keep content, snapshots and ingests from GC.

Same model as containerd's: a pull or build creates a lease, adds what it
writes to it, and deletes the lease once an image record points at the
result. A lease whose "containerd.io/gc.expire" label (RFC3339) is in the
past is removed by the next collection. Stored in the content store's
SQLite database, one transaction per change.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from dockyard import errdefs
from dockyard.image.content import MetadataDB
from dockyard.image.digest import InvalidDigest, parse_digest

LABEL_EXPIRE = "containerd.io/gc.expire"

RESOURCE_CONTENT = "content"
RESOURCE_INGESTS = "ingests"
RESOURCE_SNAPSHOTS_PREFIX = "snapshots/"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    id         TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    labels     TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS lease_resources (
    lease_id TEXT NOT NULL REFERENCES leases(id) ON DELETE CASCADE,
    type     TEXT NOT NULL,
    id       TEXT NOT NULL,
    PRIMARY KEY (lease_id, type, id)
);
"""


@dataclass(frozen=True)
class Lease:
    id: str
    created_at: float
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def expires_at(self) -> float | None:
        value = self.labels.get(LABEL_EXPIRE)
        return parse_rfc3339(value) if value else None

    def expired(self, now: float | None = None) -> bool:
        expires = self.expires_at
        return expires is not None and expires <= (time.time() if now is None else now)


@dataclass(frozen=True)
class Resource:
    """What a lease holds: type "content" (id a digest), "ingests" (id an
    ingest ref) or "snapshots/<snapshotter>" (id a snapshot key)."""

    type: str
    id: str

    @classmethod
    def content(cls, digest: str) -> Resource:
        return cls(RESOURCE_CONTENT, digest)

    @classmethod
    def snapshot(cls, snapshotter: str, key: str) -> Resource:
        return cls(RESOURCE_SNAPSHOTS_PREFIX + snapshotter, key)

    @classmethod
    def ingest(cls, ref: str) -> Resource:
        return cls(RESOURCE_INGESTS, ref)

    @property
    def snapshotter(self) -> str | None:
        if self.type.startswith(RESOURCE_SNAPSHOTS_PREFIX):
            return self.type[len(RESOURCE_SNAPSHOTS_PREFIX):]
        return None


def parse_rfc3339(value: str) -> float:
    try:
        # Go writes nanoseconds; Python 3.11 accepts and truncates them.
        parsed = dt.datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise errdefs.InvalidArgument(
            f"invalid time {value!r}: expected RFC3339, e.g. 2024-01-02T15:04:05Z"
        ) from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def format_rfc3339(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _validate_resource(resource: Resource) -> None:
    if not resource.id:
        raise errdefs.InvalidArgument(f"lease resource of type {resource.type!r} needs an id")
    if resource.type == RESOURCE_CONTENT:
        try:
            parse_digest(resource.id)
        except InvalidDigest as exc:
            raise errdefs.InvalidArgument(f"invalid content lease resource: {exc}") from exc
    elif resource.type == RESOURCE_INGESTS:
        pass
    elif not (resource.snapshotter or "").strip():
        raise errdefs.InvalidArgument(
            f"unsupported lease resource type {resource.type!r}: use 'content', 'ingests' "
            f"or 'snapshots/<snapshotter>'"
        )


class LeaseManager:
    """Leases in the metadata database shared with the content store."""

    def __init__(self, db: MetadataDB) -> None:
        self.db = db
        db.ensure_schema(_SCHEMA)

    def create(self, lease_id: str | None = None, labels: dict[str, str] | None = None,
               expire_in: float | None = None) -> Lease:
        """Create a lease; expire_in (seconds) sets the gc.expire label."""
        lease_id = lease_id or f"lease-{uuid.uuid4().hex}"
        labels = dict(labels or {})
        now = time.time()
        if expire_in is not None:
            labels[LABEL_EXPIRE] = format_rfc3339(now + expire_in)
        if LABEL_EXPIRE in labels:
            parse_rfc3339(labels[LABEL_EXPIRE])
        with self.db.transaction() as conn:
            if conn.execute("SELECT 1 FROM leases WHERE id = ?", (lease_id,)).fetchone():
                raise errdefs.AlreadyExists(f"lease {lease_id} already exists")
            conn.execute(
                "INSERT INTO leases(id, created_at, labels) VALUES (?, ?, ?)",
                (lease_id, now, json.dumps(labels, sort_keys=True)),
            )
        return Lease(lease_id, now, labels)

    def get(self, lease_id: str) -> Lease:
        rows = self.db.query(
            "SELECT id, created_at, labels FROM leases WHERE id = ?", (lease_id,)
        )
        if not rows:
            raise errdefs.NotFound(f"lease {lease_id}: not found")
        return Lease(rows[0][0], rows[0][1], json.loads(rows[0][2]))

    def list(self) -> list[Lease]:
        rows = self.db.query("SELECT id, created_at, labels FROM leases ORDER BY created_at, id")
        return [Lease(r[0], r[1], json.loads(r[2])) for r in rows]

    def delete(self, lease_id: str) -> None:
        with self.db.transaction() as conn:
            cur = conn.execute("DELETE FROM leases WHERE id = ?", (lease_id,))
            if cur.rowcount == 0:
                raise errdefs.NotFound(f"lease {lease_id}: not found")
            conn.execute("DELETE FROM lease_resources WHERE lease_id = ?", (lease_id,))

    def add_resource(self, lease_id: str, resource: Resource) -> None:
        _validate_resource(resource)
        with self.db.transaction() as conn:
            if not conn.execute("SELECT 1 FROM leases WHERE id = ?", (lease_id,)).fetchone():
                raise errdefs.NotFound(f"lease {lease_id}: not found")
            conn.execute(
                "INSERT OR IGNORE INTO lease_resources(lease_id, type, id) VALUES (?, ?, ?)",
                (lease_id, resource.type, resource.id),
            )

    def delete_resource(self, lease_id: str, resource: Resource) -> None:
        with self.db.transaction() as conn:
            if not conn.execute("SELECT 1 FROM leases WHERE id = ?", (lease_id,)).fetchone():
                raise errdefs.NotFound(f"lease {lease_id}: not found")
            conn.execute(
                "DELETE FROM lease_resources WHERE lease_id = ? AND type = ? AND id = ?",
                (lease_id, resource.type, resource.id),
            )

    def list_resources(self, lease_id: str) -> list[Resource]:
        self.get(lease_id)
        rows = self.db.query(
            "SELECT type, id FROM lease_resources WHERE lease_id = ? ORDER BY type, id",
            (lease_id,),
        )
        return [Resource(t, i) for t, i in rows]

    def all_resources(self) -> set[Resource]:
        """Everything held by any lease (GC roots)."""
        return {Resource(t, i) for t, i in self.db.query("SELECT type, id FROM lease_resources")}

    def remove_expired(self, now: float | None = None) -> list[str]:
        """Delete leases past their gc.expire time; returns their ids."""
        removed = []
        for lease in self.list():
            if lease.expired(now):
                with contextlib.suppress(errdefs.NotFound):
                    self.delete(lease.id)
                    removed.append(lease.id)
        return removed

    @contextlib.contextmanager
    def temporary(self, labels: dict[str, str] | None = None,
                  expire_in: float = 24 * 3600) -> Iterator[Lease]:
        """A lease for the duration of a block (a pull, a build step).

        The expiry is a backstop: if the process dies inside the block, the
        next GC after expiry frees what it held.
        """
        lease = self.create(labels=labels, expire_in=expire_in)
        try:
            yield lease
        finally:
            with contextlib.suppress(errdefs.NotFound):
                self.delete(lease.id)
