# Snapshotters: containerd-style trees of filesystem snapshots.
#   base       shared skeleton: one directory per snapshot, crash-safe create/remove
#   metastore  SQLite rows (<root>/metadata.db): ids, keys, kinds, parents, labels
#   overlay    OverlaySnapshotter: committed layers as overlayfs lowers, short l/ links
#   native     NativeSnapshotter: full copies, bind mounts (no overlayfs needed)
#   copy       cp -a in Python (owners, modes, xattrs, hardlinks, devices, times)
#   mount      perform / undo a list of core.Mount (long overlay options shortened)
"""Snapshotter implementations of dockyard.image.core.Snapshotter."""

from __future__ import annotations

from dockyard.image.snapshots.base import disk_usage
from dockyard.image.snapshots.mount import mount_all, mounted, unmount_all
from dockyard.image.snapshots.native import NativeSnapshotter
from dockyard.image.snapshots.overlay import OverlaySnapshotter, check_overlay_support

__all__ = [
    "NativeSnapshotter",
    "OverlaySnapshotter",
    "check_overlay_support",
    "disk_usage",
    "mount_all",
    "mounted",
    "unmount_all",
]
