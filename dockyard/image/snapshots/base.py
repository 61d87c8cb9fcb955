"""What both snapshotters share: rows in SQLite, one directory per snapshot.

Layout under root: metadata.db, snapshots/<id>/fs (the tree), plus whatever a
subclass adds beside fs. A new snapshot's directory is built under a
temporary name and renamed to snapshots/<id> inside the transaction that
inserts its row; removal deletes the row first and the directory after. Either
way a crash leaves only directories without rows, and opening the root
removes those.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator

from dockyard import errdefs
from dockyard.image.core import Mount, SnapshotInfo, SnapshotKind, Usage
from dockyard.image.snapshots.metastore import MetaStore, SnapshotRecord


def disk_usage(path: str) -> Usage:
    """Bytes (allocated blocks, as du counts them) and inodes under path.

    A hardlinked inode is counted once.
    """
    seen: set[tuple[int, int]] = set()
    size = inodes = 0
    stack = [path]
    while stack:
        current = stack.pop()
        st = os.lstat(current)
        key = (st.st_dev, st.st_ino)
        if key in seen:
            continue
        seen.add(key)
        inodes += 1
        size += st.st_blocks * 512
        if stat.S_ISDIR(st.st_mode):
            with os.scandir(current) as entries:
                stack.extend(entry.path for entry in entries)
    return Usage(size=size, inodes=inodes)


class DirectorySnapshotter:
    """Snapshotter skeleton; subclasses fill a new directory and describe mounts."""

    kind_name = "directory"

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)
        self.snapshots_dir = os.path.join(self.root, "snapshots")
        os.makedirs(self.snapshots_dir, mode=0o700, exist_ok=True)
        self.store = MetaStore(os.path.join(self.root, "metadata.db"))
        self._remove_orphans()

    # -------------------------------------------------------- subclass hooks

    def _populate(self, staging: str, kind: SnapshotKind, parent: SnapshotRecord | None) -> None:
        raise NotImplementedError

    def _mounts(self, record: SnapshotRecord) -> list[Mount]:
        raise NotImplementedError

    def _after_commit(self, record: SnapshotRecord) -> None:
        """Hook run once a snapshot is committed (and again after a crash)."""

    def _after_remove(self, record: SnapshotRecord) -> None:
        """Hook run after a snapshot's row is gone."""

    # ------------------------------------------------------------- helpers

    def snapshot_dir(self, snapshot_id: int) -> str:
        return os.path.join(self.snapshots_dir, str(snapshot_id))

    def fs_dir(self, snapshot_id: int) -> str:
        return os.path.join(self.snapshot_dir(snapshot_id), "fs")

    def _remove_orphans(self) -> None:
        known = self.store.ids()
        for name in os.listdir(self.snapshots_dir):
            if name.isdigit() and int(name) in known:
                continue
            shutil.rmtree(os.path.join(self.snapshots_dir, name), ignore_errors=True)

    def _create(self, kind: SnapshotKind, key: str, parent: str | None,
                labels: dict[str, str] | None) -> list[Mount]:
        # Cheap checks before a possibly long copy; the transaction re-checks.
        try:
            self.store.get(key)
        except errdefs.NotFound:
            pass
        else:
            raise errdefs.AlreadyExists(f"snapshot {key!r} already exists")
        parent_record = None
        if parent:
            parent_record = self.store.get(parent)
            if parent_record.kind is not SnapshotKind.COMMITTED:
                raise errdefs.InvalidArgument(
                    f"parent snapshot {parent!r} of {key!r} is {parent_record.kind.value}, "
                    "not committed; commit it first")
        staging = tempfile.mkdtemp(prefix="new-", dir=self.snapshots_dir)
        final: str | None = None
        try:
            self._populate(staging, kind, parent_record)
            with self.store.transaction() as db:
                record = self.store.create(db, key, kind, parent, labels)
                final = self.snapshot_dir(record.id)
                if os.path.lexists(final):
                    # Left by a crash between rename and commit, when the id was not yet taken.
                    shutil.rmtree(final)
                os.rename(staging, final)
        except BaseException:
            shutil.rmtree(final if final and os.path.exists(final) else staging,
                          ignore_errors=True)
            raise
        return self._mounts(record)

    # -------------------------------------------------------------- protocol

    def stat(self, key: str) -> SnapshotInfo:
        return self.store.get(key).info()

    def update(self, info: SnapshotInfo, fieldpaths: list[str] | None = None) -> SnapshotInfo:
        return self.store.update(info, fieldpaths)

    def usage(self, key: str) -> Usage:
        record = self.store.get(key)
        return disk_usage(self.fs_dir(record.id))

    def mounts(self, key: str) -> list[Mount]:
        record = self.store.get(key)
        if record.kind is SnapshotKind.COMMITTED:
            raise errdefs.FailedPrecondition(
                f"snapshot {key!r} is committed; make a view or an active snapshot on it to "
                "mount it")
        return self._mounts(record)

    def prepare(self, key: str, parent: str | None = None,
                labels: dict[str, str] | None = None) -> list[Mount]:
        return self._create(SnapshotKind.ACTIVE, key, parent, labels)

    def view(self, key: str, parent: str | None = None,
             labels: dict[str, str] | None = None) -> list[Mount]:
        return self._create(SnapshotKind.VIEW, key, parent, labels)

    def commit(self, name: str, key: str, labels: dict[str, str] | None = None) -> None:
        with self.store.transaction() as db:
            record = self.store.commit_active(db, name, key, labels)
        self._after_commit(record)

    def remove(self, key: str) -> None:
        with self.store.transaction() as db:
            record = self.store.remove(db, key)
        # The row is gone: a crash from here on leaves an orphan that open() removes.
        doomed = os.path.join(self.snapshots_dir, f"rm-{record.id}")
        try:
            os.rename(self.snapshot_dir(record.id), doomed)
        except FileNotFoundError:
            doomed = ""
        self._after_remove(record)
        if doomed:
            shutil.rmtree(doomed, ignore_errors=True)

    def walk(self) -> Iterator[SnapshotInfo]:
        for record in self.store.all():
            yield record.info()

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> DirectorySnapshotter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
