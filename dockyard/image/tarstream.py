"""A fast reader for layer tar streams.

tarfile's stream mode spends about 120 µs of Python per member (two headers
each for a PAX archive, every field decoded), which made it the largest CPU
cost of unpacking a layer with thousands of small files. TarStream unpacks a
header with one struct call and hands members out as tarfile.TarInfo with
tarfile's meaning for every field an unpacker uses.

It reads ustar headers, pax extended headers (per-entry and global; path,
linkpath, size, uid, gid, mtime and any other key left in pax_headers, such
as SCHILY.xattr.*), GNU long names and long link names (types L and K), and
GNU base-256 numbers. Sparse members (GNU type S, or pax GNU.sparse.*) are
refused with NotImplementedFeature rather than misread: docker and buildkit
never write them. A short stream, a bad header checksum or a malformed
header is DataLoss.

DigestingReader is the stream under it: it decompresses and hashes on a
helper thread ahead of the parser, so the diff_id comes for free.
"""

from __future__ import annotations

import hashlib
import os
import queue
import struct
import tarfile
import threading
from collections.abc import Iterator
from typing import BinaryIO

from dockyard import errdefs

CHUNK = 1 << 20  # the size of reads from the underlying stream
_PREFETCH = 8  # chunks decompressed ahead of the tar parser


class DigestingReader:
    """Counts and hashes every byte the tar reader pulls from the stream.

    Decompression and hashing run on a helper thread, up to _PREFETCH chunks
    ahead of the tar parser: igzip, zstd and sha256 release the GIL on large
    buffers, so on two cores they overlap the parser's Python work instead of
    adding to it (about a third of a 100 MB layer's apply time). An error on
    the helper thread is raised from read() in the caller's thread.
    """

    def __init__(self, inner: BinaryIO) -> None:
        self.hash = hashlib.sha256()
        self.count = 0  # bytes handed to the parser
        self._queue: queue.Queue = queue.Queue(_PREFETCH)
        self._stop = threading.Event()
        self._buffer = b""
        self._pos = 0
        self._eof = False
        self._thread = threading.Thread(target=self._produce, args=(inner,),
                                        name="layer-decompress", daemon=True)
        self._thread.start()

    def _produce(self, inner: BinaryIO) -> None:
        try:
            while not self._stop.is_set():
                data = inner.read(CHUNK)
                if not data:
                    break
                self.hash.update(data)
                self._put(data)
            self._put(None)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the reader's thread
            self._put(exc)

    def _put(self, item: bytes | BaseException | None) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _next_chunk(self) -> bool:
        if self._eof:
            return False
        item = self._queue.get()
        if item is None:
            self._eof = True
            return False
        if isinstance(item, BaseException):
            self._eof = True
            raise item
        self._buffer, self._pos = item, 0
        return True

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            parts = []
            while chunk := self.read(CHUNK):
                parts.append(chunk)
            return b"".join(parts)
        if self._pos >= len(self._buffer) and not self._next_chunk():
            return b""
        if self._pos == 0 and size >= len(self._buffer):
            data = self._buffer  # the whole chunk: no copy
        else:
            data = self._buffer[self._pos:self._pos + size]
        if len(data) < size:
            # Short reads make tarfile's stream mode report truncation, so
            # keep filling across chunk boundaries.
            parts = [data]
            self._pos += len(data)
            missing = size - len(data)
            while missing > 0 and self._next_chunk():
                piece = self._buffer[:missing]
                parts.append(piece)
                self._pos = len(piece)
                missing -= len(piece)
            data = b"".join(parts)
        else:
            self._pos += len(data)
        self.count += len(data)
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass

    def close(self) -> None:
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join()


class TarStream:
    """The members of a tar stream, read in one pass.

    Iterate to get each member as a tarfile.TarInfo; for a regular file, call
    copy_to(member, fd) before the next step of the iteration to receive its
    data (data not copied is skipped). Pulls the stream in CHUNK-sized reads,
    so a digest under it sees big buffers. reader is anything with read(n):
    a DigestingReader in apply_layer, a plain binary file elsewhere.
    """

    def __init__(self, reader: DigestingReader | BinaryIO) -> None:
        self._reader = reader
        self._buf = b""
        self._pos = 0
        self._pending = 0  # unread data and padding of the last member
        self._global_pax: dict[str, str] = {}

    def _take(self, count: int) -> bytes:
        """Up to count bytes; fewer only at the end of the stream."""
        end = self._pos + count
        if end <= len(self._buf):
            data = self._buf[self._pos:end]
            self._pos = end
            return data
        parts = [self._buf[self._pos:]]
        have = len(parts[0])
        self._buf, self._pos = b"", 0
        while have < count:
            chunk = self._reader.read(CHUNK)
            if not chunk:
                break
            need = count - have
            if len(chunk) > need:
                parts.append(chunk[:need])
                self._buf, self._pos = chunk, need
                have = count
                break
            parts.append(chunk)
            have += len(chunk)
        return b"".join(parts)

    def _skip(self, count: int) -> None:
        while count > 0:
            data = self._take(min(count, CHUNK))
            if not data:
                raise errdefs.DataLoss(f"layer tar ends {count} bytes short of its last entry")
            count -= len(data)

    def _data(self, size: int, what: str) -> bytes:
        data = self._take(size)
        if len(data) < size:
            raise errdefs.DataLoss(f"layer tar is truncated inside {what}")
        self._skip(-size % _BLOCK)
        return data

    def __iter__(self) -> Iterator[tarfile.TarInfo]:
        while True:
            if self._pending:
                self._skip(self._pending)
                self._pending = 0
            member = self._next()
            if member is None:
                return
            if member.isreg() or member.type not in tarfile.SUPPORTED_TYPES:
                self._pending = member.size + (-member.size % _BLOCK)
            yield member

    def copy_to(self, member: tarfile.TarInfo, fd: int) -> None:
        """Write the data of the member just yielded to fd."""
        remaining = member.size
        while remaining > 0:
            chunk = self._take(min(CHUNK, remaining))
            if not chunk:
                raise errdefs.DataLoss(
                    f"layer entry {member.name!r} is truncated: {remaining} of "
                    f"{member.size} bytes missing")
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
            remaining -= len(chunk)
        self._pending = -member.size % _BLOCK

    def _next(self) -> tarfile.TarInfo | None:
        pax: dict[str, str] = {}
        long_name = long_link = None
        while True:
            block = self._take(_BLOCK)
            if not block:
                return None  # no end-of-archive blocks: tarfile accepts that too
            if len(block) < _BLOCK:
                raise errdefs.DataLoss("layer tar is truncated inside a header")
            if block == _ZERO_BLOCK:
                return None
            (name, mode, uid, gid, size, mtime, chksum, kind, linkname, magic, _uname,
             _gname, devmajor, devminor, prefix) = _HEADER.unpack_from(block)
            stored = _tar_number(chksum)
            unsigned = sum(block) - sum(block[148:156]) + 256
            if stored != unsigned and stored != _signed_chksum(block):
                raise errdefs.DataLoss("layer tar has a header with a bad checksum; the "
                                       "layer is corrupt")
            size_n = _tar_number(size)
            if kind in (b"L", b"K", b"x", b"g"):
                data = self._data(size_n, "an extended header")
                if kind == b"L":
                    long_name = _tar_string(data)
                elif kind == b"K":
                    long_link = _tar_string(data)
                elif kind == b"x":
                    pax.update(_parse_pax(data))
                else:
                    self._global_pax.update(_parse_pax(data))
                continue
            break
        if kind == b"S" or any(k.startswith("GNU.sparse.") for k in pax):
            raise errdefs.NotImplementedFeature(
                "layer tar has a sparse file entry, which dockyard does not unpack; rebuild "
                "the layer without --sparse")
        info = tarfile.TarInfo()
        info.type = kind
        if long_name is not None:
            info.name = long_name
        else:
            info.name = _tar_string(name)
            if prefix[0] and kind not in tarfile.GNU_TYPES:
                info.name = _tar_string(prefix) + "/" + info.name
        info.linkname = long_link if long_link is not None else _tar_string(linkname)
        info.mode = _tar_number(mode)
        info.uid = _tar_number(uid)
        info.gid = _tar_number(gid)
        info.size = size_n
        info.mtime = _tar_number(mtime)
        if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
            info.devmajor = _tar_number(devmajor)
            info.devminor = _tar_number(devminor)
        headers = {**self._global_pax, **pax} if self._global_pax else pax
        if headers:
            _apply_pax(info, headers)
        if kind == tarfile.AREGTYPE and info.name.endswith("/"):
            info.type = tarfile.DIRTYPE
        if info.type == tarfile.DIRTYPE:
            info.name = info.name.rstrip("/")
        return info


_BLOCK = tarfile.BLOCKSIZE
_ZERO_BLOCK = bytes(_BLOCK)
# name mode uid gid size mtime chksum type linkname magic+version uname gname
# devmajor devminor prefix: the 500 bytes of a ustar header that carry fields.
_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s8s8s155s")


def _tar_string(raw: bytes) -> str:
    end = raw.find(b"\0")
    return (raw if end < 0 else raw[:end]).decode("utf-8", "surrogateescape")


def _tar_number(raw: bytes) -> int:
    if raw and raw[0] in (0o200, 0o377):  # GNU base-256, for values octal cannot hold
        value = int.from_bytes(raw[1:], "big")
        if raw[0] == 0o377:
            value -= 1 << (8 * (len(raw) - 1))
        return value
    text = raw.split(b"\0", 1)[0].strip()
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError as exc:
        raise errdefs.DataLoss(f"layer tar header has a bad number field {raw!r}") from exc


def _signed_chksum(block: bytes) -> int:
    # Some old tars summed signed chars; tarfile accepts either.
    return sum(b - 256 if b > 127 else b for b in block[:148] + block[156:]) + 256


def _parse_pax(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos]:
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            length = 0
        end = pos + length
        if space < 0 or length <= 0 or end > len(data) or data[end - 1:end] != b"\n":
            raise errdefs.DataLoss("layer tar has a malformed pax extended header")
        key, sep, value = data[space + 1:end - 1].partition(b"=")
        if not sep:
            raise errdefs.DataLoss("layer tar has a pax record without '='")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos = end
    return out


def _apply_pax(info: tarfile.TarInfo, headers: dict[str, str]) -> None:
    info.pax_headers = dict(headers)
    try:
        if "path" in headers:
            info.name = headers["path"]
        if "linkpath" in headers:
            info.linkname = headers["linkpath"]
        for key in ("size", "uid", "gid"):
            if key in headers:
                setattr(info, key, int(headers[key]))
        if "mtime" in headers:
            info.mtime = float(headers["mtime"])
    except ValueError as exc:
        raise errdefs.DataLoss(f"layer tar has a bad pax value: {exc}") from exc
