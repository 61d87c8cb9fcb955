"""Per-layer progress events, worded like Docker's pull/push output.

A sink is any callable taking a ProgressEvent; the engine turns events into
the JSON progress stream ("status", "id", "progressDetail") of the Docker API.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

# Statuses Docker prints per layer, in the order a layer meets them.
PULLING_FS_LAYER = "Pulling fs layer"
WAITING = "Waiting"
DOWNLOADING = "Downloading"
VERIFYING = "Verifying Checksum"
DOWNLOAD_COMPLETE = "Download complete"
EXTRACTING = "Extracting"
PULL_COMPLETE = "Pull complete"
ALREADY_EXISTS = "Already exists"
RETRYING = "Retrying"

PREPARING = "Preparing"
PUSHING = "Pushing"
PUSHED = "Pushed"
LAYER_EXISTS = "Layer already exists"
MOUNTED = "Mounted from"


@dataclass(frozen=True)
class ProgressEvent:
    """One line of progress. id is the short (12 hex) layer id, or "" for
    image-wide lines such as "Digest: sha256:..."."""

    id: str
    status: str
    current: int = 0
    total: int = 0

    def to_json(self) -> dict:
        out: dict = {"status": self.status}
        if self.id:
            out["id"] = self.id
        if self.total or self.current:
            out["progressDetail"] = {"current": self.current, "total": self.total}
        return out


ProgressSink = Callable[[ProgressEvent], None]


def short_id(digest: str) -> str:
    """Docker's 12-character layer id: the hex of the digest, cut."""
    return digest.split(":", 1)[-1][:12]


def discard(_event: ProgressEvent) -> None:
    """The sink used when the caller wants no progress."""


class Reporter:
    """Thread-safe front of a sink; download progress is rate-limited so a fast
    loopback pull does not emit an event per 64 KiB chunk."""

    def __init__(self, sink: ProgressSink | None, min_step: int = 512 * 1024) -> None:
        self._sink = sink or discard
        self._lock = threading.Lock()
        self._min_step = min_step
        self._last: dict[str, int] = {}

    def emit(self, layer_id: str, status: str, current: int = 0, total: int = 0) -> None:
        with self._lock:
            self._sink(ProgressEvent(layer_id, status, current, total))

    def bytes(self, layer_id: str, status: str, current: int, total: int) -> None:
        with self._lock:
            last = self._last.get(layer_id + status, -self._min_step)
            if current - last < self._min_step and current != total:
                return
            self._last[layer_id + status] = current
            self._sink(ProgressEvent(layer_id, status, current, total))
