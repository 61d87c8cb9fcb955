"""Garbage collection of content and snapshots (containerd's mark and sweep).

Roots: what the caller's image (and container) records point at, every
resource held by a lease, and content or snapshots labelled
"containerd.io/gc.root". From there references are followed through labels:

    containerd.io/gc.ref.content[.<x>]             -> a content digest
    containerd.io/gc.ref.snapshot.<snapshotter>[/|.<x>]  -> a snapshot key

and from each snapshot to its parent. Whatever is not reached is removed,
snapshots children first. Anything created after the collection started is
kept, so a concurrent pull that has not yet taken its lease is not swept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from dockyard import errdefs
from dockyard.image.core import ContentManager, SnapshotInfo, SnapshotKind, Snapshotter
from dockyard.image.leases import RESOURCE_CONTENT, LeaseManager, Resource

log = logging.getLogger(__name__)

LABEL_ROOT = "containerd.io/gc.root"
LABEL_REF_CONTENT = "containerd.io/gc.ref.content"
LABEL_REF_SNAPSHOT_PREFIX = "containerd.io/gc.ref.snapshot."

RootRef = str | Resource  # a bare string is a content digest


@dataclass(frozen=True)
class GCResult:
    removed_content: tuple[str, ...] = ()
    removed_snapshots: tuple[tuple[str, str], ...] = ()  # (snapshotter, key)
    removed_leases: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()


def label_references(labels: Mapping[str, str]) -> list[Resource]:
    """The content and snapshots a label set points at."""
    out = []
    for key, value in labels.items():
        if not value:
            continue
        if key == LABEL_REF_CONTENT or key.startswith(LABEL_REF_CONTENT + "."):
            out.append(Resource.content(value))
        elif key.startswith(LABEL_REF_SNAPSHOT_PREFIX):
            rest = key[len(LABEL_REF_SNAPSHOT_PREFIX):]
            cut = min((i for i in (rest.find("/"), rest.find(".")) if i >= 0), default=len(rest))
            if rest[:cut]:
                out.append(Resource.snapshot(rest[:cut], value))
    return out


def _as_resource(ref: RootRef) -> Resource:
    return ref if isinstance(ref, Resource) else Resource.content(ref)


def collect(store: ContentManager, snapshotters: Mapping[str, Snapshotter],
            roots: Callable[[], Iterable[RootRef]] | None = None,
            leases: LeaseManager | None = None, *,
            keep_active_snapshots: bool = True, now: float | None = None) -> GCResult:
    """Remove unreferenced content and snapshots and expired leases.

    keep_active_snapshots treats ACTIVE and VIEW snapshots as roots. That is
    the safe default until every container record is reported through
    roots(); with it False the semantics are containerd's exactly.
    """
    started = time.time() if now is None else now
    removed_leases = tuple(leases.remove_expired(started)) if leases else ()

    contents = {info.digest: info for info in store.walk()}
    snaps: dict[str, dict[str, SnapshotInfo]] = {
        name: {info.name: info for info in sn.walk()} for name, sn in snapshotters.items()
    }

    pending: list[Resource] = [_as_resource(r) for r in (roots() if roots else ())]
    if leases:
        pending.extend(leases.all_resources())
    pending.extend(Resource.content(d) for d, info in contents.items() if LABEL_ROOT in info.labels)
    for name, infos in snaps.items():
        for key, info in infos.items():
            if LABEL_ROOT in info.labels or (
                keep_active_snapshots and info.kind != SnapshotKind.COMMITTED
            ):
                pending.append(Resource.snapshot(name, key))

    marked: set[Resource] = set()
    while pending:
        res = pending.pop()
        if res in marked:
            continue
        marked.add(res)
        if res.type == RESOURCE_CONTENT:
            info = contents.get(res.id)
            if info is not None:
                pending.extend(label_references(info.labels))
        elif res.snapshotter is not None:
            sinfo = snaps.get(res.snapshotter, {}).get(res.id)
            if sinfo is not None:
                pending.extend(label_references(sinfo.labels))
                if sinfo.parent:
                    pending.append(Resource.snapshot(res.snapshotter, sinfo.parent))

    errors: list[str] = []
    removed_content = []
    for digest, info in contents.items():
        if Resource.content(digest) in marked or info.created_at > started:
            continue
        try:
            store.delete(digest)
            removed_content.append(digest)
        except errdefs.NotFound:
            pass  # someone else removed it first
        except (OSError, errdefs.DockyardError) as exc:
            errors.append(f"content {digest}: {exc}")

    removed_snapshots = []
    for name, infos in snaps.items():
        doomed = [
            key for key, info in infos.items()
            if Resource.snapshot(name, key) not in marked and info.created_at <= started
        ]
        for key in sorted(doomed, key=lambda k: _depth(infos, k), reverse=True):
            try:
                snapshotters[name].remove(key)
                removed_snapshots.append((name, key))
            except errdefs.NotFound:
                pass
            except (OSError, errdefs.DockyardError) as exc:
                errors.append(f"snapshot {name}/{key}: {exc}")
    for message in errors:
        log.warning("garbage collection could not remove %s", message)
    return GCResult(tuple(removed_content), tuple(removed_snapshots), removed_leases,
                    tuple(errors))


def _depth(infos: Mapping[str, SnapshotInfo], key: str) -> int:
    depth, seen = 0, set()
    info = infos.get(key)
    while info is not None and info.parent and info.parent not in seen:
        seen.add(info.parent)
        depth += 1
        info = infos.get(info.parent)
    return depth
