"""The local content store: blobs addressed by digest, written via ingests.

Layout under root:
    blobs/sha256/<hex>                    committed, verified, read-only blobs
    ingest/<sha256(ref)>/data             bytes written so far for one ref
    ingest/<sha256(ref)>/{ref,startedat,updatedat,total,expected,lock}
    metadata.db                           SQLite (WAL): labels and timestamps

A blob becomes visible only by a hard link from a verified, fsynced ingest
file, so a crash (even SIGKILL mid-write) leaves at worst a resumable ingest,
never a bad blob. The file on disk is the truth for existence; the database
only adds labels and times, so a blob without a row still reads fine.
Writers on the same ref are serialised across processes with flock(2).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from dockyard import errdefs
from dockyard.image.core import ContentInfo, ContentStore, Descriptor, IngestStatus
from dockyard.image.digest import Digester, digest_bytes, parse_digest

_CHUNK = 1 << 20
_LABEL_MAX = 4096  # containerd's limit on len(key) + len(value)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS content (
    digest     TEXT PRIMARY KEY,
    size       INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    labels     TEXT NOT NULL DEFAULT '{}'
);
"""


# ------------------------------------------------------------------ sqlite


class MetadataDB:
    """One SQLite connection in WAL mode shared by the store, leases and GC.

    A lock serialises use from threads; other processes are handled by
    SQLite's own locking (busy timeout) and BEGIN IMMEDIATE for writes.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(
            str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False
        )
        self._conn.execute("PRAGMA busy_timeout = 30000")
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = FULL")

    def ensure_schema(self, ddl: str) -> None:
        with self.transaction() as conn:
            # executescript() would COMMIT our transaction, so run one by one.
            for statement in ddl.split(";"):
                if statement.strip():
                    conn.execute(statement)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            self._conn.close()


# ------------------------------------------------------------ file helpers


def _write_small_file(path: Path, text: str) -> None:
    # Ingest metadata is advisory (the data is verified at commit), so an
    # atomic rename without fsync is enough: a torn write cannot be seen.
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}.{threading.get_ident()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _read_small_file(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_labels(labels: dict[str, str]) -> None:
    for key, value in labels.items():
        if not key:
            raise errdefs.InvalidArgument("label keys must not be empty")
        if len(key) + len(value) > _LABEL_MAX:
            raise errdefs.InvalidArgument(
                f"label {key!r} is too long: key and value must be under {_LABEL_MAX} bytes"
            )


# ------------------------------------------------------------------ writer


class LocalContentWriter:
    """An open ingest holding the ref's lock until commit() or close()."""

    def __init__(self, store: LocalContentStore, ref: str, ingest_dir: Path, lock_fd: int,
                 total: int, expected: str | None) -> None:
        self.ref = ref
        self._store = store
        self._dir = ingest_dir
        self._lock_fd: int | None = lock_fd
        self._total = total
        self._expected = expected
        self._digester = Digester()
        self._data_fd = os.open(ingest_dir / "data", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._offset = self._rehash(os.fstat(self._data_fd).st_size)

    def _rehash(self, size: int) -> int:
        # The running hash is not persisted; rebuilding it from the bytes on
        # disk is what makes a resume after a crash trustworthy.
        self._digester = Digester()
        os.lseek(self._data_fd, 0, os.SEEK_SET)
        remaining = size
        while remaining > 0:
            chunk = os.read(self._data_fd, min(_CHUNK, remaining))
            if not chunk:
                break
            self._digester.update(chunk)
            remaining -= len(chunk)
        done = size - remaining
        os.ftruncate(self._data_fd, done)
        os.lseek(self._data_fd, done, os.SEEK_SET)
        return done

    def _check_open(self) -> None:
        if self._lock_fd is None:
            raise errdefs.FailedPrecondition(f"writer for ref {self.ref} is closed")

    def write(self, data: bytes) -> int:
        self._check_open()
        view = memoryview(data)
        while view:
            n = os.write(self._data_fd, view)
            view = view[n:]
        self._digester.update(data)
        self._offset += len(data)
        return len(data)

    def offset(self) -> int:
        return self._offset

    def digest(self) -> str:
        return self._digester.digest()

    @property
    def total(self) -> int:
        return self._total

    @property
    def expected(self) -> str | None:
        return self._expected

    def truncate(self, size: int) -> None:
        self._check_open()
        if size < 0 or size > self._offset:
            raise errdefs.InvalidArgument(
                f"cannot truncate ingest {self.ref} to {size}: it holds {self._offset} bytes"
            )
        self._offset = self._rehash(size)

    def status(self) -> IngestStatus:
        return self._store.ingest_status(self.ref)

    def commit(self, size: int = 0, expected: str | None = None,
               labels: dict[str, str] | None = None) -> str:
        self._check_open()
        size = size or self._total
        expected = expected or self._expected
        labels = dict(labels or {})
        _check_labels(labels)
        actual = self._digester.digest()
        if size and size != self._offset:
            self._discard()
            raise errdefs.DataLoss(
                f"commit of ref {self.ref} failed: unexpected size {self._offset}, "
                f"expected {size}; the ingest was removed, fetch the content again"
            )
        if expected and expected != actual:
            self._discard()
            raise errdefs.DataLoss(
                f"commit of ref {self.ref} failed: digest mismatch, expected {expected}, "
                f"actual {actual}; the ingest was removed, fetch the content again"
            )
        os.fsync(self._data_fd)
        os.fchmod(self._data_fd, 0o444)
        target = self._store.blob_path(actual)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            # link(2), unlike rename(2), fails if the target exists, which is
            # how two committers of the same content learn who won.
            os.link(self._dir / "data", target)
        except FileExistsError as exc:
            self._discard()
            raise errdefs.AlreadyExists(f"content {actual} already exists") from exc
        _fsync_dir(target.parent)
        self._store._record_commit(actual, self._offset, labels)
        self._discard()
        return actual

    def _discard(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)
        self._release()

    def _release(self) -> None:
        if self._lock_fd is None:
            return
        os.close(self._data_fd)
        os.close(self._lock_fd)  # closing the descriptor drops the flock
        self._lock_fd = None

    def close(self) -> None:
        if self._lock_fd is None:
            return
        with contextlib.suppress(OSError):
            _write_small_file(self._dir / "updatedat", repr(time.time()))
        self._release()

    def __enter__(self) -> LocalContentWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._release()


# ------------------------------------------------------------------- store


class LocalContentStore:
    """Provider, Ingester, IngestManager and ContentManager on a local directory."""

    def __init__(self, root: str | os.PathLike, db: MetadataDB | None = None) -> None:
        self.root = Path(root)
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.root / "ingest").mkdir(parents=True, exist_ok=True)
        self.db = db or MetadataDB(self.root / "metadata.db")
        self.db.ensure_schema(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------ paths

    def blob_path(self, digest: str) -> Path:
        d = parse_digest(digest)
        return self.root / "blobs" / d.algorithm / d.hex

    def _ingest_dir(self, ref: str) -> Path:
        return self.root / "ingest" / hashlib.sha256(ref.encode()).hexdigest()

    def exists(self, digest: str) -> bool:
        return self.blob_path(digest).exists()

    # --------------------------------------------------------- provider

    def open_blob(self, digest: str) -> BinaryIO:
        path = self.blob_path(digest)
        try:
            return open(path, "rb")  # the caller owns the file
        except FileNotFoundError as exc:
            raise errdefs.NotFound(f"content digest {digest}: not found") from exc

    def read_blob(self, digest: str) -> bytes:
        with self.open_blob(digest) as f:
            return f.read()

    # --------------------------------------------------------- ingester

    def writer(self, ref: str, total: int = 0, expected: str | None = None) -> LocalContentWriter:
        if not ref:
            raise errdefs.InvalidArgument("an ingest ref must not be empty")
        if expected is not None:
            parse_digest(expected)
            if self.exists(expected):
                raise errdefs.AlreadyExists(f"content {expected} already exists")
        ingest_dir = self._ingest_dir(ref)
        lock_fd = self._lock_ingest(ref, ingest_dir)
        try:
            self._prepare_ingest(ref, ingest_dir, total, expected)
            return LocalContentWriter(self, ref, ingest_dir, lock_fd, total, expected)
        except BaseException:
            os.close(lock_fd)
            raise

    def _lock_ingest(self, ref: str, ingest_dir: Path) -> int:
        lock_path = ingest_dir / "lock"
        for _ in range(100):
            ingest_dir.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except FileNotFoundError:
                continue  # the directory was removed by a commit/abort; retry
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise errdefs.Unavailable(
                        f"ref {ref} locked: another writer is ingesting it; retry later"
                    ) from exc
                raise
            # A committer may have removed the directory between our open and
            # our flock; a lock on an unlinked file protects nothing.
            try:
                same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)
        raise errdefs.Unavailable(f"ref {ref} locked: could not acquire the ingest lock")

    def _prepare_ingest(self, ref: str, ingest_dir: Path, total: int,
                        expected: str | None) -> None:
        data = ingest_dir / "data"
        old_ref = _read_small_file(ingest_dir / "ref")
        old_expected = _read_small_file(ingest_dir / "expected") or None
        old_total = int(_read_small_file(ingest_dir / "total") or 0)
        try:
            st = data.stat()
        except FileNotFoundError:
            st = None
        resumable = (
            st is not None
            and old_ref == ref
            and not (expected and old_expected and expected != old_expected)
            and not (total and old_total and total != old_total)
            and not (total and st.st_size > total)
            # A second link means a commit linked this file into blobs/ and
            # died before removing the ingest: writing on would change the
            # visible blob, so drop our name for it and start afresh.
            and st.st_nlink == 1
        )
        if resumable:
            if not st.st_mode & 0o200:
                data.chmod(0o644)  # a commit that failed after marking it read-only
            if total or expected:
                _write_small_file(ingest_dir / "total", str(total or old_total))
                _write_small_file(ingest_dir / "expected", expected or old_expected or "")
            return
        # A fresh ingest, or one written for different content: start over.
        with contextlib.suppress(FileNotFoundError):
            data.unlink()
        now = repr(time.time())
        _write_small_file(ingest_dir / "startedat", now)
        _write_small_file(ingest_dir / "updatedat", now)
        _write_small_file(ingest_dir / "total", str(total))
        _write_small_file(ingest_dir / "expected", expected or "")
        data.touch()
        _write_small_file(ingest_dir / "ref", ref)

    # --------------------------------------------------- ingest manager

    def _status_of(self, ingest_dir: Path) -> IngestStatus | None:
        ref = _read_small_file(ingest_dir / "ref")
        if ref is None:
            return None
        try:
            st = (ingest_dir / "data").stat()
        except FileNotFoundError:
            return None
        started = float(_read_small_file(ingest_dir / "startedat") or st.st_mtime)
        updated = float(_read_small_file(ingest_dir / "updatedat") or started)
        return IngestStatus(
            ref=ref,
            offset=st.st_size,
            total=int(_read_small_file(ingest_dir / "total") or 0),
            expected=_read_small_file(ingest_dir / "expected") or None,
            started_at=started,
            updated_at=max(updated, st.st_mtime),
        )

    def ingest_status(self, ref: str) -> IngestStatus:
        status = self._status_of(self._ingest_dir(ref))
        if status is None or status.ref != ref:
            raise errdefs.NotFound(f"ingest ref {ref}: not found")
        return status

    def list_ingests(self) -> list[IngestStatus]:
        out = []
        for entry in sorted((self.root / "ingest").iterdir()):
            if entry.is_dir():
                status = self._status_of(entry)
                if status is not None:
                    out.append(status)
        return out

    def abort(self, ref: str) -> None:
        ingest_dir = self._ingest_dir(ref)
        if not (ingest_dir / "ref").exists():
            raise errdefs.NotFound(f"ingest ref {ref}: not found")
        fd = self._lock_ingest(ref, ingest_dir)
        try:
            shutil.rmtree(ingest_dir, ignore_errors=True)
        finally:
            os.close(fd)

    # -------------------------------------------------- content manager

    def _record_commit(self, digest: str, size: int, labels: dict[str, str]) -> None:
        now = time.time()
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO content(digest, size, created_at, updated_at, labels)"
                " VALUES (?, ?, ?, ?, ?)",
                (digest, size, now, now, json.dumps(labels, sort_keys=True)),
            )

    def _info_from(self, digest: str, st: os.stat_result, row: tuple | None) -> ContentInfo:
        if row is None:
            return ContentInfo(digest, st.st_size, st.st_mtime, st.st_mtime, {})
        _, created, updated, labels = row
        return ContentInfo(digest, st.st_size, created, updated, json.loads(labels))

    def _stat_blob(self, digest: str) -> os.stat_result:
        try:
            return self.blob_path(digest).stat()
        except FileNotFoundError as exc:
            raise errdefs.NotFound(f"content digest {digest}: not found") from exc

    def info(self, digest: str) -> ContentInfo:
        st = self._stat_blob(digest)
        rows = self.db.query(
            "SELECT size, created_at, updated_at, labels FROM content WHERE digest = ?",
            (digest,),
        )
        return self._info_from(digest, st, rows[0] if rows else None)

    def update_labels(self, digest: str, labels: dict[str, str]) -> ContentInfo:
        """Merge labels into the blob's; an empty value removes that label."""
        st = self._stat_blob(digest)
        _check_labels({k: v for k, v in labels.items() if v})
        now = time.time()
        with self.db.transaction() as conn:
            row = conn.execute(
                "SELECT created_at, labels FROM content WHERE digest = ?", (digest,)
            ).fetchone()
            created, current = (row[0], json.loads(row[1])) if row else (st.st_mtime, {})
            for key, value in labels.items():
                if value:
                    current[key] = value
                else:
                    current.pop(key, None)
            conn.execute(
                "INSERT OR REPLACE INTO content(digest, size, created_at, updated_at, labels)"
                " VALUES (?, ?, ?, ?, ?)",
                (digest, st.st_size, created, now, json.dumps(current, sort_keys=True)),
            )
        return ContentInfo(digest, st.st_size, created, now, current)

    def walk(self) -> Iterator[ContentInfo]:
        rows = {
            r[0]: r[1:] for r in self.db.query(
                "SELECT digest, size, created_at, updated_at, labels FROM content"
            )
        }
        blobs = self.root / "blobs"
        for algo_dir in sorted(blobs.iterdir()):
            if not algo_dir.is_dir():
                continue
            for entry in sorted(os.scandir(algo_dir), key=lambda e: e.name):
                digest = f"{algo_dir.name}:{entry.name}"
                try:
                    parse_digest(digest)
                    st = entry.stat()
                except (errdefs.InvalidArgument, FileNotFoundError):
                    continue
                yield self._info_from(digest, st, rows.get(digest))

    def delete(self, digest: str) -> None:
        path = self.blob_path(digest)
        try:
            path.unlink()
        except FileNotFoundError as exc:
            raise errdefs.NotFound(f"content digest {digest}: not found") from exc
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM content WHERE digest = ?", (digest,))


# ------------------------------------------------------------ conveniences


def write_blob(store: ContentStore, data: bytes, expected: str | None = None,
               labels: dict[str, str] | None = None,
               media_type: str = "application/octet-stream",
               timeout: float = 30.0) -> Descriptor:
    """Store an in-memory blob (idempotent) and return its descriptor.

    If the blob exists already, labels are merged into it.
    """
    digest = digest_bytes(data)
    if expected and expected != digest:
        raise errdefs.DataLoss(
            f"digest mismatch writing blob: expected {expected}, actual {digest}"
        )
    deadline = time.monotonic() + timeout
    while True:
        try:
            w = store.writer(f"write-blob-{digest}", total=len(data), expected=digest)
        except errdefs.AlreadyExists:
            break
        except errdefs.Unavailable:
            # Someone else is writing the same bytes; they will commit soon.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
            continue
        try:
            if w.offset():
                w.truncate(0)
            w.write(data)
            w.commit(len(data), digest, labels)
            return Descriptor(media_type, digest, len(data))
        except errdefs.AlreadyExists:
            break
        finally:
            w.close()
    if labels:
        store.update_labels(digest, labels)
    return Descriptor(media_type, digest, len(data))


def copy_stream(store: ContentStore, ref: str, reader: BinaryIO, expected: str | None = None,
                total: int = 0, progress: Callable[[int, int], None] | None = None,
                labels: dict[str, str] | None = None) -> str:
    """Copy a stream into the store through an ingest; returns the digest.

    A resumed ingest continues at its offset when the reader can seek there,
    and restarts from zero otherwise. Content that already exists counts as
    success.
    """
    try:
        w = store.writer(ref, total=total, expected=expected)
    except errdefs.AlreadyExists:
        assert expected is not None
        return expected
    try:
        offset = w.offset()
        if offset:
            try:
                reader.seek(offset)
            except (AttributeError, OSError, ValueError):
                w.truncate(0)
        while True:
            chunk = reader.read(_CHUNK)
            if not chunk:
                break
            w.write(chunk)
            if progress is not None:
                progress(w.offset(), total)
        actual = w.digest()
        try:
            return w.commit(total, expected, labels)
        except errdefs.AlreadyExists:
            return actual
    finally:
        w.close()
