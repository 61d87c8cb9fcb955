"""Push: an image from a content store to a registry.

Blobs go first (layers, then config), manifests last, so a registry never
holds a manifest that names a missing blob. A blob the registry already has is
skipped (HEAD); one this store knows from another repository on the same
registry (label containerd.io/distribution.source.<host>=<repo>[,<repo>...]) is
cross-mounted instead of uploaded. Uploads are monolithic up to a threshold and
chunked above it. An index is pushed child manifests first, by digest.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from dockyard import errdefs
from dockyard.image import mediatypes as mt
from dockyard.image.core import ContentStore, Descriptor
from dockyard.image.distribution import progress as status
from dockyard.image.distribution.auth import Authenticator
from dockyard.image.distribution.client import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_CHUNK_THRESHOLD,
    RegistryClient,
    connect,
)
from dockyard.image.distribution.credentials import CredentialStore
from dockyard.image.distribution.progress import ProgressSink, Reporter, short_id
from dockyard.image.distribution.pull import SOURCE_LABEL_PREFIX
from dockyard.image.distribution.registry import RegistryConfig
from dockyard.image.reference import Reference, parse_reference

MAX_CONCURRENT_UPLOADS = 5  # Docker's default max-concurrent-uploads

@dataclass(frozen=True)
class PushOptions:
    chunk_threshold: int = DEFAULT_CHUNK_THRESHOLD
    chunk_size: int = DEFAULT_CHUNK_SIZE
    max_concurrent: int = MAX_CONCURRENT_UPLOADS
    retries: int = 3
    backoff_s: float = 0.5


@dataclass(frozen=True)
class PushResult:
    reference: Reference
    digest: str  # of the pushed top-level manifest
    size: int
    uploaded: tuple[str, ...] = ()  # blob digests sent in full
    mounted: tuple[str, ...] = ()  # blob digests linked from another repository
    skipped: tuple[str, ...] = ()  # blob digests the registry already had


def push(reference: str | Reference, store: ContentStore, target: Descriptor, *,
         credentials: CredentialStore | None = None, config: RegistryConfig | None = None,
         progress: ProgressSink | None = None, options: PushOptions | None = None,
         auth: Authenticator | None = None) -> PushResult:
    """Push the image whose top-level manifest (or index) is target to
    reference (tag or digest)."""
    ref = reference if isinstance(reference, Reference) else parse_reference(reference)
    options = options or PushOptions()
    own_auth = auth is None
    auth = auth or Authenticator(credentials)
    try:
        return _push(ref, store, target, auth, config, progress, options)
    finally:
        if own_auth:
            auth.close()


def _push(ref: Reference, store: ContentStore, target: Descriptor, auth: Authenticator,
          config: RegistryConfig | None, progress: ProgressSink | None,
          options: PushOptions) -> PushResult:
    client = connect(ref.domain, ref.path, auth, config=config, push=True,
                     retries=options.retries, backoff_s=options.backoff_s)
    try:
        pusher = _Pusher(client, store, ref, options, Reporter(progress))
        try:
            pusher.push_manifest(target, ref.tag or target.digest)
        except errdefs.Unauthorized as exc:
            raise errdefs.Unauthorized(
                f"denied: requested access to the resource is denied: push to "
                f"{ref.familiar_name} refused ({exc}); log in with 'docker login "
                f"{client.endpoint.host}' as a user allowed to push there") from exc
        pusher.reporter.emit("", f"{ref.tag or 'latest'}: digest: {target.digest} "
                                 f"size: {target.size}")
        return PushResult(ref, target.digest, target.size, tuple(pusher.uploaded),
                          tuple(pusher.mounted), tuple(pusher.skipped))
    finally:
        client.close()


class _Pusher:
    def __init__(self, client: RegistryClient, store: ContentStore, ref: Reference,
                 options: PushOptions, reporter: Reporter) -> None:
        self.client = client
        self.store = store
        self.ref = ref
        self.options = options
        self.reporter = reporter
        self.label_key = SOURCE_LABEL_PREFIX + client.endpoint.host
        self.lock = threading.Lock()
        self.uploaded: list[str] = []
        self.mounted: list[str] = []
        self.skipped: list[str] = []

    def _read(self, desc: Descriptor) -> bytes:
        try:
            data = self.store.read_blob(desc.digest)
        except errdefs.NotFound as exc:
            raise errdefs.NotFound(
                f"cannot push {self.ref.familiar_string()}: {desc.media_type or 'blob'} "
                f"{desc.digest} is not in the content store; pull or build the image "
                "again") from exc
        return data

    def push_manifest(self, desc: Descriptor, tag_or_digest: str) -> None:
        data = self._read(desc)
        try:
            body = json.loads(data)
        except ValueError as exc:
            raise errdefs.DataLoss(f"manifest {desc.digest} in the content store is not "
                                   "JSON") from exc
        media_type = desc.media_type or body.get("mediaType", "")
        if mt.is_index(media_type) or "manifests" in body:
            for child in body.get("manifests") or []:
                child_desc = Descriptor.from_json(child)
                self.push_manifest(child_desc, child_desc.digest)
        else:
            blobs = [Descriptor.from_json(layer) for layer in body.get("layers") or []]
            blobs = [b for b in blobs if not mt.is_foreign_layer(b.media_type)]
            for blob in blobs:
                self.reporter.emit(short_id(blob.digest), status.PREPARING)
            workers = max(self.options.max_concurrent, 1)
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="push-layer") as pool:
                seen: set[str] = set()
                futures = []
                for blob in blobs:
                    if blob.digest not in seen:
                        seen.add(blob.digest)
                        futures.append(pool.submit(self.push_blob, blob))
                for future in futures:
                    future.result()
            self.push_blob(Descriptor.from_json(body["config"]), quiet=True)
        self.client.put_manifest(tag_or_digest, data, media_type)

    def push_blob(self, desc: Descriptor, quiet: bool = False) -> None:
        layer_id = short_id(desc.digest)

        def emit(text: str, current: int = 0, total: int = 0) -> None:
            if not quiet:
                self.reporter.emit(layer_id, text, current, total)

        if self.client.blob_exists(desc.digest):
            with self.lock:
                self.skipped.append(desc.digest)
            emit(status.LAYER_EXISTS)
            self._label(desc.digest)
            return
        for source in self._sources(desc.digest):
            if self.client.mount_blob(desc.digest, source):
                with self.lock:
                    self.mounted.append(desc.digest)
                emit(f"{status.MOUNTED} {source}")
                self._label(desc.digest)
                return
        try:
            blob = self.store.open_blob(desc.digest)
        except errdefs.NotFound as exc:
            raise errdefs.NotFound(
                f"cannot push {self.ref.familiar_string()}: blob {desc.digest} is not in the "
                "content store; pull or build the image again") from exc
        with blob:
            self.client.upload_blob(
                desc.digest, desc.size, blob.read,
                chunk_threshold=self.options.chunk_threshold,
                chunk_size=self.options.chunk_size,
                on_progress=None if quiet else (
                    lambda done, total: self.reporter.bytes(layer_id, status.PUSHING,
                                                            done, total)))
        with self.lock:
            self.uploaded.append(desc.digest)
        emit(status.PUSHED)
        self._label(desc.digest)

    def _sources(self, digest: str) -> list[str]:
        """Other repositories on this registry that hold digest, per its label."""
        try:
            labels = self.store.info(digest).labels
        except errdefs.NotFound:
            return []
        repos = labels.get(self.label_key, "")
        return [r for r in repos.split(",") if r and r != self.ref.path]

    def _label(self, digest: str) -> None:
        """Remember that this repository now holds digest, for later mounts."""
        with self.lock:
            try:
                labels = self.store.info(digest).labels
            except errdefs.NotFound:
                return
            repos = set(filter(None, labels.get(self.label_key, "").split(",")))
            if self.ref.path not in repos:
                self.store.update_labels(
                    digest, {self.label_key: ",".join(sorted(repos | {self.ref.path}))})
