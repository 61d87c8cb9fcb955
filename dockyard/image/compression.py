"""Streaming (de)compression of layer blobs: gzip and zstd, sniffed by magic.

Layers are never buffered whole: every function here wraps a file-like
object and returns another one that reads or writes incrementally. gzip
goes through isal's igzip (several times faster than zlib) when it imports,
and falls back to the standard library otherwise.
"""

from __future__ import annotations

import gzip
import io
from typing import BinaryIO

from dockyard import errdefs

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

try:  # isal is a pinned dependency, but a broken wheel must not break pulls
    from isal import igzip as _igzip
except ImportError:  # pragma: no cover - depends on the installed wheel
    _igzip = None


class _PrefixedReader(io.RawIOBase):
    """Gives back the bytes consumed while sniffing, then the rest of the stream."""

    def __init__(self, prefix: bytes, rest: BinaryIO) -> None:
        self._prefix = prefix
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        view = memoryview(buffer)
        if self._prefix:
            count = min(len(view), len(self._prefix))
            view[:count] = self._prefix[:count]
            self._prefix = self._prefix[count:]
            return count
        data = self._rest.read(len(view))
        view[: len(data)] = data
        return len(data)


def _read_exactly(stream: BinaryIO, count: int) -> bytes:
    chunks = []
    while count > 0:
        chunk = stream.read(count)
        if not chunk:
            break
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def sniff(stream: BinaryIO) -> tuple[str | None, BinaryIO]:
    """Detect the compression of stream from its first bytes.

    Returns the kind ("gzip", "zstd" or None) and a stream that still yields
    every byte, so non-seekable sources (HTTP bodies, pipes) work.
    """
    head = _read_exactly(stream, 4)
    kind: str | None = None
    if head.startswith(GZIP_MAGIC):
        kind = "gzip"
    elif head.startswith(ZSTD_MAGIC):
        kind = "zstd"
    return kind, io.BufferedReader(_PrefixedReader(head, stream), 1 << 16)


def decompressing_reader(stream: BinaryIO, compression: str | None = "auto") -> BinaryIO:
    """Wrap stream so reads return uncompressed bytes.

    compression is "auto" (sniff magic bytes), "gzip", "zstd" or None.
    """
    if compression == "auto":
        compression, stream = sniff(stream)
    if compression is None:
        return stream
    if compression == "gzip":
        if _igzip is not None:
            return _igzip.IGzipFile(fileobj=stream, mode="rb")  # type: ignore[return-value]
        return gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[return-value]
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(  # type: ignore[return-value]
            stream, read_across_frames=True, closefd=False)
    raise errdefs.InvalidArgument(
        f"unknown layer compression {compression!r}: use 'auto', 'gzip', 'zstd' or None")


def compressing_writer(stream: BinaryIO, compression: str | None,
                       level: int | None = None) -> BinaryIO:
    """Wrap stream so writes are compressed; close() the result to flush the trailer.

    Closing the wrapper leaves stream itself open.
    """
    if compression is None:
        return stream
    if compression == "gzip":
        # mtime=0 keeps the compressed blob reproducible for the same tar.
        if _igzip is not None:
            return _igzip.IGzipFile(fileobj=stream, mode="wb", mtime=0,  # type: ignore[return-value]
                                    compresslevel=2 if level is None else level)
        return gzip.GzipFile(fileobj=stream, mode="wb", mtime=0,  # type: ignore[return-value]
                             compresslevel=6 if level is None else level)
    if compression == "zstd":
        import zstandard

        compressor = zstandard.ZstdCompressor(level=3 if level is None else level)
        return compressor.stream_writer(stream, closefd=False)  # type: ignore[return-value]
    raise errdefs.InvalidArgument(
        f"unknown layer compression {compression!r}: use 'gzip', 'zstd' or None")
