"""The overlayfs snapshotter: committed layers are read-only lowers.

Layout under root: snapshots/<id>/fs (a layer's files; an active snapshot's
upper dir), snapshots/<id>/work (overlay's workdir, active snapshots only) and
l/<short> -> ../snapshots/<id>/fs, one short link per committed layer. Mount
options name lowers by their link (root + "/l/" + a base-36 id), which keeps
a deep image's option string small. When even that passes the kernel's
one-page limit (about 90 layers under a long root), mount.py mounts from a
working directory that turns every path into a few bytes; the options stay
plain absolute paths, valid for any mounter that does the same (containerd's
does).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading

from dockyard import errdefs
from dockyard.image.core import Mount, SnapshotKind
from dockyard.image.snapshots.base import DirectorySnapshotter
from dockyard.image.snapshots.metastore import SnapshotRecord
from dockyard.linux import syscalls

_LINKS = "l"
_checked_roots: set[str] = set()
_check_lock = threading.Lock()


def short_name(snapshot_id: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        snapshot_id, rest = divmod(snapshot_id, 36)
        out = digits[rest] + out
        if not snapshot_id:
            return out


def default_overlay_options() -> tuple[str, ...]:
    """Turn off overlay features the kernel enables by default that break diffs.

    With redirect_dir or metacopy, an upper dir no longer holds whole files
    and directories, so it stops being a layer; index pins lowers to one mount.
    """
    options = []
    for feature in ("index", "redirect_dir", "metacopy"):
        try:
            with open(f"/sys/module/overlay/parameters/{feature}") as handle:
                enabled = handle.read().strip() in ("Y", "on")
        except OSError:
            continue
        if enabled:
            options.append(f"{feature}=off")
    return tuple(options)


def check_overlay_support(root: str) -> None:
    """Mount a two-lower overlay under root once; raise Unavailable if it fails."""
    with _check_lock:
        if root in _checked_roots:
            return
        try:
            with open("/proc/filesystems") as handle:
                known = handle.read().split()
        except OSError:
            known = []
        if "overlay" not in known:
            raise errdefs.Unavailable(
                "overlayfs is not available: 'overlay' is missing from /proc/filesystems; "
                "run 'modprobe overlay' or use the native snapshotter")
        probe = tempfile.mkdtemp(prefix="overlay-probe-", dir=root)
        try:
            paths = {name: os.path.join(probe, name)
                     for name in ("lower1", "lower2", "upper", "work", "merged")}
            for path in paths.values():
                os.mkdir(path)
            data = (f"lowerdir={paths['lower1']}:{paths['lower2']},upperdir={paths['upper']},"
                    f"workdir={paths['work']}")
            try:
                syscalls.mount("overlay", paths["merged"], "overlay", 0, data)
            except OSError as exc:
                raise errdefs.Unavailable(
                    f"overlayfs cannot be mounted on {root} ({exc.strerror}): it needs root "
                    "(CAP_SYS_ADMIN) and a backing filesystem that can be an upper dir (not "
                    "overlay itself); use the native snapshotter otherwise") from exc
            syscalls.umount(paths["merged"], syscalls.MNT_DETACH)
        finally:
            shutil.rmtree(probe, ignore_errors=True)
        _checked_roots.add(root)


class OverlaySnapshotter(DirectorySnapshotter):
    """containerd's overlayfs snapshotter semantics over dockyard's metastore."""

    kind_name = "overlayfs"

    def __init__(self, root: str, *, check: bool = True) -> None:
        os.makedirs(root, mode=0o700, exist_ok=True)
        if check:
            check_overlay_support(os.path.realpath(root))
        self.extra_options = default_overlay_options()
        super().__init__(root)
        self.links_dir = os.path.join(self.root, _LINKS)
        os.makedirs(self.links_dir, mode=0o700, exist_ok=True)
        self._repair_links()

    # ------------------------------------------------------------- links

    def link_path(self, snapshot_id: int) -> str:
        return os.path.join(self.links_dir, short_name(snapshot_id))

    def _ensure_link(self, snapshot_id: int) -> str:
        path = self.link_path(snapshot_id)
        target = os.path.join("..", "snapshots", str(snapshot_id), "fs")
        try:
            if os.readlink(path) == target:
                return path
        except OSError:
            pass
        staging = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
        try:
            os.unlink(staging)
        except FileNotFoundError:
            pass
        os.symlink(target, staging)
        os.replace(staging, path)
        return path

    def _repair_links(self) -> None:
        committed = {record.id for record in self.store.all()
                     if record.kind is SnapshotKind.COMMITTED}
        wanted = {short_name(snapshot_id) for snapshot_id in committed}
        for name in os.listdir(self.links_dir):
            if name not in wanted:
                os.unlink(os.path.join(self.links_dir, name))
        for snapshot_id in committed:
            self._ensure_link(snapshot_id)

    def _after_commit(self, record: SnapshotRecord) -> None:
        self._ensure_link(record.id)
        # A committed layer is only ever a lower: its workdir is dead weight.
        shutil.rmtree(os.path.join(self.snapshot_dir(record.id), "work"), ignore_errors=True)

    def _after_remove(self, record: SnapshotRecord) -> None:
        try:
            os.unlink(self.link_path(record.id))
        except FileNotFoundError:
            pass

    # ------------------------------------------------------------ snapshots

    def _populate(self, staging: str, kind: SnapshotKind, parent: SnapshotRecord | None) -> None:
        os.mkdir(os.path.join(staging, "fs"), 0o755)
        if kind is SnapshotKind.ACTIVE:
            os.mkdir(os.path.join(staging, "work"), 0o700)

    def upper_dir(self, key: str) -> str:
        """The directory a layer is unpacked into (or diffed from) for key."""
        return self.fs_dir(self.store.get(key).id)

    def lower_dirs(self, key: str) -> list[str]:
        """Absolute fs dirs of key's ancestors, nearest first (for write_diff)."""
        record = self.store.get(key)
        return [self.fs_dir(snapshot_id) for snapshot_id in self.store.chain(record)]

    def _mounts(self, record: SnapshotRecord) -> list[Mount]:
        lowers = self.store.chain(record)
        if record.kind is SnapshotKind.ACTIVE and not lowers:
            return [Mount(type="bind", source=self.fs_dir(record.id), options=("rbind", "rw"))]
        if record.kind is SnapshotKind.VIEW and len(lowers) <= 1:
            source = self.fs_dir(lowers[0] if lowers else record.id)
            return [Mount(type="bind", source=source, options=("rbind", "ro"))]
        lowerdir = ":".join(self._ensure_link(snapshot_id) for snapshot_id in lowers)
        options: list[str] = []
        if record.kind is SnapshotKind.ACTIVE:
            options += [f"workdir={os.path.join(self.snapshot_dir(record.id), 'work')}",
                        f"upperdir={self.fs_dir(record.id)}"]
        options.append(f"lowerdir={lowerdir}")
        options += self.extra_options
        return [Mount(type="overlay", source="overlay", options=tuple(options))]
