"""The native snapshotter: every snapshot is a full copy of its parent.

Works on any filesystem and without overlayfs (rootless, overlay-on-overlay),
at the price of a copy per prepare or view. Layout under root:
snapshots/<id>/fs; mounts are bind mounts (read-only for views). Layers are
unpacked with apply_layer(..., overlay_whiteouts=False) and diffed with
write_diff([parent fs], fs, overlay=False).
"""

from __future__ import annotations

import os

from dockyard.image.core import Mount, SnapshotKind
from dockyard.image.snapshots.base import DirectorySnapshotter
from dockyard.image.snapshots.copy import copy_tree
from dockyard.image.snapshots.metastore import SnapshotRecord


class NativeSnapshotter(DirectorySnapshotter):
    kind_name = "native"

    def __init__(self, root: str) -> None:
        os.makedirs(root, mode=0o700, exist_ok=True)
        super().__init__(root)

    def _populate(self, staging: str, kind: SnapshotKind, parent: SnapshotRecord | None) -> None:
        target = os.path.join(staging, "fs")
        if parent is None:
            os.mkdir(target, 0o755)
        else:
            copy_tree(self.fs_dir(parent.id), target)

    def upper_dir(self, key: str) -> str:
        return self.fs_dir(self.store.get(key).id)

    def lower_dirs(self, key: str) -> list[str]:
        """The parent's flat tree (at most one entry), for write_diff(overlay=False)."""
        record = self.store.get(key)
        return [self.fs_dir(record.parent_id)] if record.parent_id is not None else []

    def _mounts(self, record: SnapshotRecord) -> list[Mount]:
        access = "rw" if record.kind is SnapshotKind.ACTIVE else "ro"
        return [Mount(type="bind", source=self.fs_dir(record.id), options=("rbind", access))]
