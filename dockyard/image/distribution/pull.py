"""Pull: reference → verified manifest, config and layers in a content store.

Order of work (as in containerd's fetch handlers): resolve the reference to a
manifest (an index is narrowed to one platform), store its exact bytes, fetch
the config, then the layers — at most three at a time, each streamed into a
content writer that verifies size and digest at commit. A truncated body is
resumed with a Range request from the ingest's offset. The optional `unpack`
callback sees layers in manifest order as each one lands, so download and
unpack overlap; `unpack_stream` goes further and is fed the first layer's
bytes while they download (see _LayerPipe). Nothing is registered as an
image here: the caller does that with the PullResult, and only a fully
verified pull returns one.
"""

from __future__ import annotations

import io
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import BinaryIO

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
StreamUnpackCallback = Callable[[Descriptor, BinaryIO], None]
_PIPE_DEPTH = 256  # chunks (of ~64 KiB off the wire) buffered ahead of the unpacker


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


class _LayerPipe(io.RawIOBase):
    """The bytes of one layer as they download, for unpack_stream.

    The downloading thread feeds each chunk right after writing it to the
    ingest, so decompression and extraction run while the rest is still on
    the wire. End of stream is given only after the blob is committed with
    its digest verified; a failed download raises from read() instead. When
    the wire cannot supply the stream in order (a resumed ingest, another
    pull holding the blob) the pipe stops being fed and, once the blob is in
    the store, the reader continues from the store at the same offset.
    """

    def __init__(self, store: ContentStore, desc: Descriptor, stop: threading.Event) -> None:
        self._store = store
        self._desc = desc
        self._stop = stop
        self._queue: queue.Queue = queue.Queue(_PIPE_DEPTH)
        self._fed = 0  # bytes put in the queue
        self._read = 0  # bytes handed to the reader
        self._live = True
        self._reader_gone = threading.Event()
        self._buffer = b""
        self._fallback: BinaryIO | None = None
        self._done = False

    def readable(self) -> bool:
        return True

    # -- the downloading thread

    def feed(self, chunk: bytes, position: int) -> None:
        if not self._live or self._reader_gone.is_set():
            return
        end = position + len(chunk)
        if end <= self._fed:
            return  # resent bytes the reader already has
        if position > self._fed:
            self._live = False  # a gap: the rest comes from the store
            return
        self._put(chunk[self._fed - position:])
        self._fed = end

    def finish(self) -> None:
        self._put(None)

    def fail(self, exc: BaseException) -> None:
        self._put(exc)

    def _put(self, item: bytes | BaseException | None) -> None:
        while not self._reader_gone.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                if self._stop.is_set():
                    if isinstance(item, bytes):
                        raise _Cancelled() from None
                    return  # the pull is failing anyway; nobody waits for the end

    # -- the unpacking thread

    def readinto(self, buffer) -> int:  # type: ignore[override]
        view = memoryview(buffer)
        while not self._buffer:
            if self._fallback is not None:
                count = self._fallback.readinto(view)
                self._read += count
                return count
            if self._done:
                return 0
            item = self._queue.get()
            if item is None:
                self._done = True
                if self._read < self._desc.size:
                    self._fallback = self._store.open_blob(self._desc.digest)
                    self._fallback.seek(self._read)
                continue
            if isinstance(item, BaseException):
                self._done = True
                raise item
            self._buffer = item
        count = min(len(view), len(self._buffer))
        view[:count] = self._buffer[:count]
        self._buffer = self._buffer[count:]
        self._read += count
        return count

    def close(self) -> None:
        self._reader_gone.set()
        if self._fallback is not None:
            self._fallback.close()
            self._fallback = None
        super().close()


def pull(reference: str | Reference, store: ContentStore, *,
         platform: str | None = None, credentials: CredentialStore | None = None,
         config: RegistryConfig | None = None, progress: ProgressSink | None = None,
         unpack: UnpackCallback | None = None, options: PullOptions | None = None,
         auth: Authenticator | None = None,
         unpack_stream: StreamUnpackCallback | None = None) -> PullResult:
    """Pull reference into store and return its verified descriptors.

    platform picks an index entry ("linux/arm64/v8"; default: the host's).
    unpack(layer) is called for every layer in manifest order, including ones
    already present, each as soon as its blob is committed, while later layers
    still download; an exception from it aborts the pull. Raises
    Unauthorized, NotFound, DataLoss or Unavailable with Docker's wording.

    unpack_stream(layer, stream) is the overlapping form of unpack (give one
    or the other): also called in manifest order, with a stream of the
    layer's blob. The first layer that has to be downloaded streams straight
    off the wire while it downloads; the others are read from the store. A
    stream ends only once its blob is committed with a verified digest, so a
    callback that reads it to the end (as apply_layer does) has unpacked
    verified bytes; a failed download raises from the stream's read().
    """
    if unpack is not None and unpack_stream is not None:
        raise errdefs.InvalidArgument("pull takes unpack or unpack_stream, not both")
    ref = reference if isinstance(reference, Reference) else parse_reference(reference)
    options = options or PullOptions()
    if platform:
        options = replace(options, platform=platform)
    own_auth = auth is None
    auth = auth or Authenticator(credentials)
    try:
        return _pull_from_endpoints(ref, store, auth, config, options, Reporter(progress),
                                    unpack, unpack_stream)
    finally:
        if own_auth:
            auth.close()


def _pull_from_endpoints(ref: Reference, store: ContentStore, auth: Authenticator,
                         config: RegistryConfig | None, options: PullOptions,
                         reporter: Reporter, unpack: UnpackCallback | None,
                         unpack_stream: StreamUnpackCallback | None = None) -> PullResult:
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
                return _Puller(client, store, ref, options, reporter, unpack,
                               unpack_stream).run()
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
                 unpack: UnpackCallback | None,
                 unpack_stream: StreamUnpackCallback | None = None) -> None:
        self.client = client
        self.store = store
        self.ref = ref
        self.options = options
        self.reporter = reporter
        self.unpack = unpack
        self.unpack_stream = unpack_stream
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

    def _fetch(self, desc: Descriptor, kind: str = "layer",
               pipe: _LayerPipe | None = None) -> bool:
        """Download one blob into the store. False when it was already there.
        With a pipe, every chunk is also fed to it, and it ends (or fails)
        once the blob is committed (or not)."""
        try:
            fetched = self._fetch_blob(desc, kind, pipe)
        except BaseException as exc:
            if pipe is not None:
                pipe.fail(exc)
            raise
        if pipe is not None:
            pipe.finish()
        return fetched

    def _fetch_blob(self, desc: Descriptor, kind: str, pipe: _LayerPipe | None) -> bool:
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
                    self._stream_into(writer, desc, offset, layer_id, kind, pipe)
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
                     kind: str, pipe: _LayerPipe | None = None) -> None:
        with self.client.blob_stream(desc.digest, offset) as (start, chunks):
            if start != offset:
                writer.truncate(0)  # the registry ignored Range; start again
            for chunk in chunks:
                if self.stop.is_set():
                    raise _Cancelled()
                position = writer.offset()
                writer.write(chunk)
                if pipe is not None:
                    pipe.feed(chunk, position)
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
        # The first layer to download streams into unpack_stream as it
        # arrives; an image's base layer usually comes first and is the
        # biggest, and the unpacker has nothing else to do meanwhile.
        streamed = None
        if self.unpack_stream is not None:
            streamed = next((d for d in unique if d not in present), None)
        pipes: dict[str, _LayerPipe] = {}
        pool = ThreadPoolExecutor(max_workers=max(self.options.max_concurrent, 1),
                                  thread_name_prefix="pull-layer")
        futures: dict[str, Future] = {}
        for digest, desc in unique.items():
            if digest in present:
                continue
            if digest == streamed:
                pipes[digest] = _LayerPipe(self.store, desc, self.stop)
            futures[digest] = pool.submit(self._fetch, desc, "layer", pipes.get(digest))
        unpacking = self.unpack is not None or self.unpack_stream is not None
        try:
            unpacked: set[str] = set()
            for layer in layers:
                future = futures.get(layer.digest)
                pipe = pipes.pop(layer.digest, None)
                if future is not None and pipe is None:
                    future.result()
                if not unpacking or layer.digest in unpacked:
                    if layer.digest not in present:
                        self.reporter.emit(short_id(layer.digest), status.PULL_COMPLETE)
                    continue
                unpacked.add(layer.digest)
                if layer.digest not in present:
                    self.reporter.emit(short_id(layer.digest), status.EXTRACTING,
                                       layer.size, layer.size)
                if pipe is not None and future is not None:
                    try:
                        self.unpack_stream(layer, pipe)  # type: ignore[misc]
                    finally:
                        pipe.close()
                    future.result()
                elif self.unpack_stream is not None:
                    with self.store.open_blob(layer.digest) as blob:
                        self.unpack_stream(layer, blob)
                else:
                    self.unpack(layer)  # type: ignore[misc]
                if layer.digest not in present:
                    self.reporter.emit(short_id(layer.digest), status.PULL_COMPLETE)
        except BaseException:
            self.stop.set()
            for pipe in pipes.values():
                pipe.close()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
