"""DaemonContext: everything a dockyard-containerd service needs, built once.

Layout under root (containerd's plugin directory names where one exists):
    <root>/uuid                                       server uuid (Introspection.Server)
    <root>/io.containerd.metadata.v1.sqlite/meta.db   namespaces, containers
    <root>/io.containerd.metadata.v1.sqlite/images/<ns>.db   one ImageStore per namespace
    <root>/io.containerd.content.v1.content/          LocalContentStore (+ leases in its db)
    <root>/io.containerd.snapshotter.v1.<name>/       snapshotters, opened on first use
    <state>/containerd.sock, <state>/containerd.pid

Leases are per namespace in containerd but LeaseManager has one flat id space, so a
lease is stored under `lease_key(namespace, id)` ("<ns>/<id>"; namespaces cannot contain
"/"). Services must use lease_key/lease_of_key, never raw ids.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import uuid as uuidlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dockyard import errdefs
from dockyard.containerd.exchange import Exchange
from dockyard.containerd.metadata import MetadataStore

log = logging.getLogger(__name__)

VERSION = "1.6.20-dockyard"
REVISION = "dockyard"
DEFAULT_ROOT = "/var/lib/dockyard/containerd"
DEFAULT_STATE = "/run/dockyard/containerd"

SNAPSHOTTER_PLUGIN_DIR = "io.containerd.snapshotter.v1.{name}"
CONTENT_PLUGIN_DIR = "io.containerd.content.v1.content"
METADATA_PLUGIN_DIR = "io.containerd.metadata.v1.sqlite"


def _make_overlay(root: str) -> Any:
    from dockyard.image.snapshots.overlay import OverlaySnapshotter
    return OverlaySnapshotter(root)


def _make_native(root: str) -> Any:
    from dockyard.image.snapshots.native import NativeSnapshotter
    return NativeSnapshotter(root)


SNAPSHOTTER_FACTORIES: dict[str, Callable[[str], Any]] = {
    "overlayfs": _make_overlay,
    "native": _make_native,
}


class Snapshotters(Mapping[str, Any]):
    """name -> Snapshotter, each opened on first use (overlay probes the kernel with a
    mount, which would slow start-up). A snapshotter that fails to open is absent
    and its error is kept in `errors` (reported by Introspection as init_err)."""

    def __init__(self, root: Path, factories: Mapping[str, Callable[[str], Any]]) -> None:
        self._root = root
        self._factories = dict(factories)
        self._open: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        self._lock = threading.Lock()

    def _load(self, name: str) -> Any | None:
        with self._lock:
            if name in self._open:
                return self._open[name]
            if name in self.errors or name not in self._factories:
                return None
            path = self._root / SNAPSHOTTER_PLUGIN_DIR.format(name=name)
            try:
                sn = self._factories[name](str(path))
            except Exception as exc:  # noqa: BLE001 -- any failure disables the plugin
                log.warning("snapshotter %s unavailable: %s", name, exc)
                self.errors[name] = str(exc) or type(exc).__name__
                return None
            self._open[name] = sn
            return sn

    def __getitem__(self, name: str) -> Any:
        sn = self._load(name)
        if sn is None:
            raise KeyError(name)
        return sn

    def get_or_raise(self, name: str) -> Any:
        """The snapshotter, or NotFound / Unavailable in containerd's words."""
        name = name or "overlayfs"
        sn = self._load(name)
        if sn is not None:
            return sn
        if name in self.errors:
            raise errdefs.Unavailable(f"snapshotter {name} failed to start: {self.errors[name]}")
        raise errdefs.InvalidArgument(f"snapshotter not loaded: {name}")

    def __iter__(self) -> Iterator[str]:
        return iter([n for n in self._factories if self._load(n) is not None])

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def names(self) -> list[str]:
        """Configured names, without opening anything."""
        return list(self._factories)

    def close(self) -> None:
        with self._lock:
            for sn in self._open.values():
                try:
                    sn.close()
                except Exception:  # noqa: BLE001
                    log.exception("closing snapshotter")
            self._open.clear()


@dataclass
class DaemonContext:
    """Shared state of one dockyard-containerd; built by `DaemonContext.create`.

    Fields helpers rely on:
      root, state, address     paths
      metadata                 MetadataStore (namespaces, containers)
      content                  dockyard.image.content.LocalContentStore (shared by all ns)
      leases                   dockyard.image.leases.LeaseManager (ids via lease_key)
      snapshotters             Snapshotters mapping ("overlayfs", "native"), lazy
      events                   Exchange: events.publish(namespace, topic, message)
      tasks                    helper C's TaskManager(context) or None
      namespace_users          callables ns -> resource kind name ("images", "snapshots")
                               or None; consulted before a namespace is deleted
      gc_hook                  callable(sync: bool) run after lease deletes (helper B)
      plugin_errors            plugin id -> init error text, for Introspection
      registry                 server.Registry of loaded/failed service modules
      close_hooks              callables run at shutdown before the stores close (stop
                               background threads that use them, e.g. GC)
    """

    root: Path
    state: Path
    address: str
    metadata: MetadataStore
    content: Any
    leases: Any
    snapshotters: Snapshotters
    events: Exchange
    tasks: Any = None
    namespace_users: list[Callable[[str], str | None]] = field(default_factory=list)
    gc_hook: Callable[[bool], None] | None = None
    plugin_errors: dict[str, str] = field(default_factory=dict)
    registry: Any = None  # server.Registry: which service modules loaded
    close_hooks: list[Callable[[], None]] = field(default_factory=list)
    _images: dict[str, Any] = field(default_factory=dict)
    _images_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def create(cls, root: str | os.PathLike, state: str | os.PathLike,
               address: str | None = None) -> DaemonContext:
        from dockyard.image.content import LocalContentStore
        from dockyard.image.leases import LeaseManager

        root_p, state_p = Path(root), Path(state)
        root_p.mkdir(parents=True, exist_ok=True, mode=0o711)
        state_p.mkdir(parents=True, exist_ok=True, mode=0o711)
        content = LocalContentStore(root_p / CONTENT_PLUGIN_DIR)
        ctx = cls(
            root=root_p,
            state=state_p,
            address=address or str(state_p / "containerd.sock"),
            metadata=MetadataStore(root_p / METADATA_PLUGIN_DIR / "meta.db"),
            content=content,
            leases=LeaseManager(content.db),
            snapshotters=Snapshotters(root_p, SNAPSHOTTER_FACTORIES),
            events=Exchange(),
        )
        ctx.namespace_users.append(ctx._images_user)
        return ctx

    # -- identity -------------------------------------------------------------

    def server_uuid(self) -> str:
        """A uuid made once per root and kept (containerd keeps its in the meta db)."""
        path = self.root / "uuid"
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            pass
        value = str(uuidlib.uuid4())
        tmp = path.with_name(f".uuid.{os.getpid()}")
        with open(tmp, "w") as f:
            f.write(value + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return value

    # -- namespaces -----------------------------------------------------------

    def touch_namespace(self, namespace: str) -> None:
        """Create the namespace if needed; call before any write in a namespace."""
        self.metadata.ensure_namespace(namespace)

    def namespace_in_use(self, namespace: str) -> list[str]:
        kinds = []
        for user in self.namespace_users:
            try:
                kind = user(namespace)
            except Exception:  # noqa: BLE001 -- a broken check must not block deletes forever
                log.exception("namespace usage check failed")
                continue
            if kind and kind not in kinds:
                kinds.append(kind)
        return kinds

    # -- images (one store per namespace) ---------------------------------------

    def images(self, namespace: str) -> Any:
        """The namespace's dockyard.image.images.ImageStore (names not normalised,
        exactly as containerd clients give them)."""
        with self._images_lock:
            store = self._images.get(namespace)
            if store is None:
                from dockyard.image.images import ImageStore

                path = self.root / METADATA_PLUGIN_DIR / "images" / f"{namespace}.db"
                path.parent.mkdir(parents=True, exist_ok=True)
                store = ImageStore(path, normalize=False)
                self._images[namespace] = store
            return store

    def _images_user(self, namespace: str) -> str | None:
        path = self.root / METADATA_PLUGIN_DIR / "images" / f"{namespace}.db"
        if not path.exists():
            return None
        return "images" if self.images(namespace).list() else None

    # -- leases ---------------------------------------------------------------

    @staticmethod
    def lease_key(namespace: str, lease_id: str) -> str:
        return f"{namespace}/{lease_id}"

    @staticmethod
    def lease_of_key(key: str) -> tuple[str, str]:
        namespace, _, lease_id = key.partition("/")
        return namespace, lease_id

    # -- tasks ----------------------------------------------------------------

    def load_tasks(self) -> None:
        """Attach helper C's TaskManager if its module exists."""
        try:
            module = importlib.import_module("dockyard.containerd.tasks")
        except ModuleNotFoundError as exc:
            if exc.name != "dockyard.containerd.tasks":
                self.plugin_errors["task"] = str(exc)
                log.exception("task manager failed to import")
            else:
                log.debug("no task manager (dockyard.containerd.tasks absent)")
            return
        try:
            self.tasks = module.TaskManager(self)
        except Exception as exc:  # noqa: BLE001 -- daemon still serves metadata
            self.plugin_errors["task"] = str(exc)
            log.exception("task manager failed to start")

    def close(self) -> None:
        """Close stores; the server closes the task manager (it may be async) first."""
        self.events.close()
        self.gc_hook = None
        for hook in self.close_hooks:
            try:
                hook()
            except Exception:  # noqa: BLE001 -- shutdown goes on
                log.exception("close hook failed")
        self.snapshotters.close()
        with self._images_lock:
            for store in self._images.values():
                store.close()
            self._images.clear()
        self.content.close()
        self.metadata.close()
