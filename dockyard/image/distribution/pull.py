"""Pull: reference → verified manifest, config and layers in a content store.

Order of work (as in containerd's fetch handlers): resolve the reference to a
manifest (an index is narrowed to one platform), store its exact bytes, fetch
the config, then the layers — at most three at a time, each streamed into a
content writer that verifies size and digest at commit. A truncated body is
resumed with a Range request from the ingest's offset. The optional `unpack`
callback sees layers in manifest order as each one lands, so download and
unpack overlap. Nothing is registered as an image here: the caller does that
with the PullResult, and only a fully verified pull returns one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace

import httpx

from dockyard import errdefs
from dockyard.image import mediatypes as mt
from dockyard.image.core import ContentStore, Descriptor
from dockyard.image.distribution import progress as status
from dockyard.image.distribution.auth import Authenticator
from dockyard.image.distribution.client import FetchedManifest, RegistryClient
from dockyard.image.distribution.credentials import CredentialStore
from dockyard.image.distribution.progress import ProgressSink, Reporter, short_id
from dockyard.image.distribution.registry import RegistryConfig, resolve_endpoints
from dockyard.image.manifest import Index, Manifest, parse_manifest_or_index
from dockyard.image.platform import default_platform, select_manifest
from dockyard.image.reference import Reference, parse_reference

MAX_CONCURRENT_DOWNLOADS = 3  # Docker's default max-concurrent-downloads
SOURCE_LABEL_PREFIX = "containerd.io/distribution.source."
_LOCK_WAIT_S = 1800.0  # how long to wait for another pull of the same blob

UnpackCallback = Callable[[Descriptor], None]


@dataclass(frozen=True)
class PullResult:
    reference: Reference
    target: Descriptor  # what the reference resolves to (an index or a manifest)
    manifest_descriptor: Descriptor  # the image manifest for the chosen platform
    config_descriptor: Descriptor
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True)
class PullOptions:
    platform: str | None = None  # "os/arch[/variant]"; default: linux/<host arch>
    max_concurrent: int = MAX_CONCURRENT_DOWNLOADS
    retries: int = 3
    backoff_s: float = 0.5


class _Cancelled(Exception):
    """Another layer failed; this download stops early."""


def pull(reference: str | Reference, store: ContentStore, *,
         platform: str | None = None, credentials: CredentialStore | None = None,
         config: RegistryConfig | None = None, progress: ProgressSink | None = None,
         unpack: UnpackCallback | None = None, options: PullOptions | None = None,
         auth: Authenticator | None = None) -> PullResult:
    """Pull reference into store and return its verified descriptors.

    platform picks an index entry ("linux/arm64/v8"; default: the host's).
    unpack(layer) is called for every layer in manifest order, including ones
    already present, each as soon as its blob is committed, while later layers
    still download; an exception from it aborts the pull. Raises
    Unauthorized, NotFound, DataLoss or Unavailable with Docker's wording.
    """
    ref = reference if isinstance(reference, Reference) else parse_reference(reference)
    options = options or PullOptions()
    if platform:
        options = replace(options, platform=platform)
    own_auth = auth is None
    auth = auth or Authenticator(credentials)
    try:
        return _pull_from_endpoints(ref, store, auth, config, options, Reporter(progress),
                                    unpack)
    finally:
        if own_auth:
            auth.close()


def _pull_from_endpoints(ref: Reference, store: ContentStore, auth: Authenticator,
                         config: RegistryConfig | None, options: PullOptions,
                         reporter: Reporter, unpack: UnpackCallback | None) -> PullResult:
    failures: list[str] = []
    endpoints = resolve_endpoints(ref.domain, config)
    for index, endpoint in enumerate(endpoints):
        last = index == len(endpoints) - 1
        client = RegistryClient(endpoint, ref.path, auth, retries=options.retries,
                                backoff_s=options.backoff_s)
        try:
            try:
                client.ping()
            except errdefs.Unavailable as exc:
                failures.append(f"{endpoint.url}: {exc}")
                if last:
                    raise errdefs.Unavailable(f"failed to pull {ref.familiar_string()}: "
                                              + "; ".join(failures)) from exc
                continue
            try:
                return _Puller(client, store, ref, options, reporter, unpack).run()
            except (errdefs.NotFound, errdefs.Unauthorized, errdefs.Unavailable) as exc:
                # A mirror that lacks the image or fails is skipped, as dockerd does.
                if endpoint.mirror and not last:
                    failures.append(f"{endpoint.url}: {exc}")
                    continue
                raise
        finally:
            client.close()
    raise errdefs.Unavailable(f"no registry endpoint for {ref.domain}")  # pragma: no cover


class _Puller:
    def __init__(self, client: RegistryClient, store: ContentStore, ref: Reference,
                 options: PullOptions, reporter: Reporter,
                 unpack: UnpackCallback | None) -> None:
        self.client = client
        self.store = store
        self.ref = ref
        self.options = options
        self.reporter = reporter
        self.unpack = unpack
        self.labels = {SOURCE_LABEL_PREFIX + client.endpoint.host: ref.path}
        self.stop = threading.Event()
        self.display = ref.familiar_string()

    # ------------------------------------------------------------ manifests

    def run(self) -> PullResult:
        tag_or_digest = self.ref.digest or self.ref.tag or "latest"
        fetched = self._manifest(tag_or_digest)
        document = self._parse(fetched)
        target = Descriptor(document.media_type, fetched.digest, len(fetched.data))
        manifest_desc = target
        if isinstance(document, Index):
            self._store_bytes(fetched.data, target)
            chosen = select_manifest(document.manifests,
                                     self.options.platform or default_platform())
            child = self._manifest(chosen.digest)
            if len(child.data) != chosen.size:
                raise errdefs.DataLoss(
                    f"failed to pull {self.display}: manifest {chosen.digest} is "
                    f"{len(child.data)} bytes, the index says {chosen.size}")
            document = self._parse(child)
            if not isinstance(document, Manifest):
                raise errdefs.NotImplementedFeature(
                    f"failed to pull {self.display}: the index entry for the platform is "
                    f"itself an index ({document.media_type}); nested indexes are not supported")
            manifest_desc = Descriptor(document.media_type, child.digest, len(child.data),
                                       platform=chosen.platform)
            fetched = child
        self._store_bytes(fetched.data, manifest_desc)
        self.reporter.emit("", f"{self.ref.tag or self.ref.digest}: Pulling from "
                               f"{self.ref.familiar_name}")
        self._fetch(document.config, kind="config")
        self._fetch_layers(document.layers)
        self.reporter.emit("", f"Digest: {target.digest}")
        return PullResult(self.ref, target, manifest_desc, document.config, document.layers)

    def _parse(self, fetched: FetchedManifest) -> Manifest | Index:
        try:
            return parse_manifest_or_index(fetched.data, fetched.media_type)
        except mt.Schema1Unsupported as exc:
            raise mt.Schema1Unsupported(f"failed to pull {self.display}: {exc}") from exc
        except errdefs.InvalidArgument as exc:
            raise errdefs.DataLoss(f"failed to pull {self.display}: manifest "
                                   f"{fetched.digest} is malformed: {exc}") from exc

    def _manifest(self, tag_or_digest: str) -> FetchedManifest:
        try:
            return self.client.get_manifest(tag_or_digest)
        except errdefs.Unauthorized as exc:
            raise errdefs.Unauthorized(
                f"pull access denied for {self.ref.familiar_name}, repository does not exist "
                f"or may require 'docker login': {exc}") from exc
        except errdefs.NotFound as exc:
            raise errdefs.NotFound(
                f"manifest for {self.display} not found: manifest unknown") from exc
        except errdefs.DataLoss as exc:
            raise errdefs.DataLoss(f"failed to pull {self.display}: {exc}") from exc

    def _store_bytes(self, data: bytes, desc: Descriptor) -> None:
        if self._present(desc.digest):
            return
        ref = f"pull-{desc.digest}"
        writer = self._open_writer(ref, desc)
        if writer is None:
            return
        try:
            writer.truncate(0)
            writer.write(data)
            self._commit(writer, desc, ref)
        finally:
            writer.close()

    # ------------------------------------------------------------ blobs

    def _present(self, digest: str) -> bool:
        try:
            self.store.info(digest)
        except errdefs.NotFound:
            return False
        return True

    def _commit(self, writer, desc: Descriptor, ref: str, kind: str = "manifest") -> None:
        try:
            writer.commit(desc.size, desc.digest, labels=dict(self.labels))
        except errdefs.AlreadyExists:
            self._add_source_label(desc.digest)
        except errdefs.DataLoss as exc:
            try:
                actual = writer.digest()
            except errdefs.DockyardError:
                actual = "unknown"
            self._abort(ref)
            raise errdefs.DataLoss(
                f"failed to pull {self.display}: {kind} {desc.digest} digest mismatch: "
                f"expected {desc.digest} got {actual}") from exc

    def _add_source_label(self, digest: str) -> None:
        try:
            info = self.store.info(digest)
            key, value = next(iter(self.labels.items()))
            repos = set(filter(None, info.labels.get(key, "").split(",")))
            if value not in repos:
                self.store.update_labels(digest, {key: ",".join(sorted(repos | {value}))})
        except errdefs.NotFound:
            pass

    def _abort(self, ref: str) -> None:
        try:
            self.store.abort(ref)
        except errdefs.NotFound:
            pass

    def _fetch(self, desc: Descriptor, kind: str = "layer") -> bool:
        """Download one blob into the store. False when it was already there."""
        layer_id = short_id(desc.digest)
        if self._present(desc.digest):
            self._add_source_label(desc.digest)
            return False
        ref = f"pull-{desc.digest}"
        writer = self._open_writer(ref, desc)
        if writer is None:
            return False
        try:
            failures = 0
            while True:
                offset = writer.offset()
                if offset > desc.size:
                    writer.truncate(0)
                    offset = 0
                if offset == desc.size:
                    break
                try:
                    self._stream_into(writer, desc, offset, layer_id, kind)
                except (httpx.TransportError, errdefs.Unavailable) as exc:
                    failures += 1
                    if failures >= self.options.retries:
                        raise errdefs.Unavailable(
                            f"failed to pull {self.display}: {kind} {desc.digest} download "
                            f"failed after {failures} tries at byte {writer.offset()} of "
                            f"{desc.size}: {exc}") from exc
                    delay = self.options.backoff_s * 2 ** (failures - 1)
                    self.reporter.emit(layer_id, f"{status.RETRYING} in {delay:g} seconds")
                    time.sleep(delay)
                    continue
                if writer.offset() < desc.size:
                    failures += 1  # the body ended early without a transport error
                    if failures >= self.options.retries:
                        raise errdefs.DataLoss(
                            f"failed to pull {self.display}: {kind} {desc.digest} is truncated: "
                            f"got {writer.offset()} of {desc.size} bytes after {failures} tries")
                    time.sleep(self.options.backoff_s * 2 ** (failures - 1))
            if kind == "layer":
                self.reporter.emit(layer_id, status.VERIFYING)
            self._commit(writer, desc, ref, kind)
            if kind == "layer":
                self.reporter.emit(layer_id, status.DOWNLOAD_COMPLETE)
            return True
        finally:
            writer.close()

    def _open_writer(self, ref: str, desc: Descriptor):
        """A writer for ref, or None once the blob exists. Another pull of the
        same blob holds the ingest lock meanwhile; wait for it, as containerd
        does, rather than download the same bytes twice."""
        deadline = time.monotonic() + _LOCK_WAIT_S
        while True:
            try:
                return self.store.writer(ref, total=desc.size, expected=desc.digest)
            except errdefs.AlreadyExists:
                return None
            except errdefs.Unavailable:
                if self._present(desc.digest):
                    return None
                if self.stop.is_set():
                    raise _Cancelled() from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _stream_into(self, writer, desc: Descriptor, offset: int, layer_id: str,
                     kind: str) -> None:
        with self.client.blob_stream(desc.digest, offset) as (start, chunks):
            if start != offset:
                writer.truncate(0)  # the registry ignored Range; start again
            for chunk in chunks:
                if self.stop.is_set():
                    raise _Cancelled()
                writer.write(chunk)
                written = writer.offset()
                if written > desc.size:
                    writer.truncate(0)  # never resume from bytes that cannot be right
                    raise errdefs.DataLoss(
                        f"failed to pull {self.display}: {kind} {desc.digest} digest mismatch: "
                        f"expected {desc.size} bytes, the registry sent more")
                if kind == "layer":
                    self.reporter.bytes(layer_id, status.DOWNLOADING, written, desc.size)

    def _fetch_layers(self, layers: tuple[Descriptor, ...]) -> None:
        unique: dict[str, Descriptor] = {}
        for layer in layers:
            unique.setdefault(layer.digest, layer)
        present = {d for d in unique if self._present(d)}
        for digest in unique:
            self.reporter.emit(short_id(digest),
                               status.ALREADY_EXISTS if digest in present
                               else status.PULLING_FS_LAYER)
        for position, digest in enumerate(d for d in unique if d not in present):
            if position >= self.options.max_concurrent:
                self.reporter.emit(short_id(digest), status.WAITING)
        pool = ThreadPoolExecutor(max_workers=max(self.options.max_concurrent, 1),
                                  thread_name_prefix="pull-layer")
        futures: dict[str, Future] = {
            digest: pool.submit(self._fetch, desc)
            for digest, desc in unique.items() if digest not in present}
        try:
            unpacked: set[str] = set()
            for layer in layers:
                future = futures.get(layer.digest)
                if future is not None:
                    future.result()
                if self.unpack is None or layer.digest in unpacked:
                    if layer.digest not in present:
                        self.reporter.emit(short_id(layer.digest), status.PULL_COMPLETE)
                    continue
                unpacked.add(layer.digest)
                if layer.digest not in present:
                    self.reporter.emit(short_id(layer.digest), status.EXTRACTING,
                                       layer.size, layer.size)
                self.unpack(layer)
                if layer.digest not in present:
                    self.reporter.emit(short_id(layer.digest), status.PULL_COMPLETE)
        except BaseException:
            self.stop.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
