"""Garbage collection for dockyard-containerd, with containerd's labels.

Roots: the target of every image in every namespace, each container's
snapshot (and whatever its `containerd.io/gc.ref.*` labels name), every
resource a lease holds, and anything labelled `containerd.io/gc.root`. From
there dockyard.image.gc follows `containerd.io/gc.ref.content*` and
`containerd.io/gc.ref.snapshot.<snapshotter>` labels and snapshot parents;
the rest is removed. Content (and its labels) is shared by all namespaces
here, so one collection always covers the whole daemon.

Collections are serialised: a second caller waits for the running one and
then runs its own, so a `sync` delete always sees its own removal collected.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

from dockyard.containerd.context import METADATA_PLUGIN_DIR
from dockyard.image import gc as image_gc
from dockyard.image.leases import Resource

log = logging.getLogger(__name__)

_locks: dict[int, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock_for(context: object) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(id(context), threading.Lock())


def _roots(context) -> Iterator[image_gc.RootRef]:  # noqa: ANN001 - DaemonContext
    for ns in context.metadata.list_namespaces():
        images_db = context.root / METADATA_PLUGIN_DIR / "images" / f"{ns.name}.db"
        if images_db.exists():  # do not create a database just to find it empty
            for image in context.images(ns.name).list():
                yield image.target.digest
    for _ns, container in context.metadata.all_containers():
        if container.snapshotter and container.snapshot_key:
            yield Resource.snapshot(container.snapshotter, container.snapshot_key)
        yield from image_gc.label_references(container.labels)


def _open_snapshotters(context) -> dict:  # noqa: ANN001
    # Only snapshotters that opened: one that failed to start holds nothing to collect.
    return {name: context.snapshotters[name] for name in context.snapshotters}


def collect(context, namespace: str | None = None) -> image_gc.GCResult:  # noqa: ANN001
    """Run one mark-and-sweep over the daemon's content and snapshots.

    namespace only names who asked (for the log): content is shared, so the
    collection is always daemon-wide.
    """
    with _lock_for(context):
        roots = list(_roots(context))
        result = image_gc.collect(context.content, _open_snapshotters(context),
                                  roots=lambda: roots, leases=context.leases)
    if result.removed_content or result.removed_snapshots or result.removed_leases:
        log.info("gc (requested in namespace %s): removed %d blobs, %d snapshots, %d leases",
                 namespace or "-", len(result.removed_content), len(result.removed_snapshots),
                 len(result.removed_leases))
    return result


class _Background:
    """At most one queued background collection per daemon."""

    def __init__(self, context) -> None:  # noqa: ANN001
        self._context = context
        self._pending = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def schedule(self) -> None:
        with self._lock:
            self._pending.set()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="containerd-gc",
                                                daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._pending.is_set():
                    self._thread = None
                    return
                self._pending.clear()
            try:
                collect(self._context)
            except Exception:  # noqa: BLE001 - a failed background GC must not kill the daemon
                log.exception("background garbage collection failed")


def install_hook(context) -> None:  # noqa: ANN001
    """Set context.gc_hook (run after lease deletes) unless someone already did."""
    if getattr(context, "gc_hook", None) is not None:
        return
    background = _Background(context)

    def hook(sync: bool) -> None:
        if sync:
            collect(context)
        else:
            background.schedule()

    context.gc_hook = hook
