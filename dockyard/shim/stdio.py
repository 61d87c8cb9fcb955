"""A process's stdio as the shim owns it.

The container always writes into a pipe (or its pty) whose other end the
shim holds and drains as fast as it can, so a container never blocks on its
output whoever reads it or not. What the shim copies it to:

  "" (no stream)            /dev/null
  /path or fifo:///path     a FIFO the client made: opened O_RDWR|O_NONBLOCK,
                            so the open never waits for a reader, a missing
                            reader never means EPIPE, and the data waits in
                            the FIFO (or in our bounded buffer) until the
                            client reads; closed once the process's output
                            ends, which the client sees as EOF
  file:///path              appended to a file (`ctr run --log-uri`)
  json-file:///path?max-size=10m&max-file=3
                            Docker's json-file log, rotated by size

stdin comes from a FIFO opened O_RDWR too: no EOF when the client's writer
comes and goes; the client ends stdin explicitly (CloseIO).
"""

from __future__ import annotations

import errno
import os
import time

from dockyard.shim import wire
from dockyard.shim.loop import Loop

CHUNK = 65536
FIFO_BUFFER_LIMIT = 1 << 20
FIFO_FLUSH_SECONDS = 5.0
JSON_LINE_LIMIT = 16 * 1024


class StdioError(Exception):
    """A stdio URI the shim cannot open; the message names it."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _nonblocking(fd: int) -> None:
    os.set_blocking(fd, False)


def parse_size(text: str) -> int:
    """Docker's sizes: 10k, 10m, 1g (binary multiples) or plain bytes."""
    text = text.strip().lower().removesuffix("b")
    factor = 1
    for suffix, mult in (("k", 1 << 10), ("m", 1 << 20), ("g", 1 << 30)):
        if text.endswith(suffix):
            factor, text = mult, text[:-1]
            break
    try:
        value = int(float(text) * factor)
    except ValueError as exc:
        raise StdioError("InvalidArgument", f"invalid log size {text!r}: use e.g. 10m") from exc
    if value <= 0:
        raise StdioError("InvalidArgument", f"invalid log size {text!r}: must be positive")
    return value


# --------------------------------------------------------------------- sinks

class _Sink:
    def __init__(self) -> None:
        self.refs = 0

    def acquire(self) -> _Sink:
        self.refs += 1
        return self

    def release(self) -> None:
        self.refs -= 1
        if self.refs <= 0:
            self.close()

    def write(self, stream: str, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class FileSink(_Sink):
    def __init__(self, path: str) -> None:
        super().__init__()
        try:
            os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise StdioError("InvalidArgument", f"log file {path}: {exc.strerror}") from exc

    def write(self, stream: str, data: bytes) -> None:
        try:
            _write_all(self.fd, data)
        except OSError:
            pass  # a full disk must not stop the copy (and so the container)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class JsonFileSink(_Sink):
    """One JSON object per line: {"log": ..., "stream": ..., "time": RFC 3339 nano}."""

    def __init__(self, path: str, max_size: int = 0, max_file: int = 1) -> None:
        super().__init__()
        self.path = path
        self.max_size = max_size
        self.max_file = max(1, max_file)
        self._partial: dict[str, bytes] = {}
        self.fd = -1
        try:
            os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
            self._open()
        except OSError as exc:
            raise StdioError("InvalidArgument", f"log file {path}: {exc.strerror}") from exc

    def _open(self) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self.size = os.fstat(self.fd).st_size

    def _rotate(self) -> None:
        os.close(self.fd)
        if self.max_file <= 1:
            os.truncate(self.path, 0)
        else:
            for n in range(self.max_file - 1, 0, -1):
                older = f"{self.path}.{n}"
                newer = self.path if n == 1 else f"{self.path}.{n - 1}"
                if os.path.exists(newer):
                    os.rename(newer, older)
        self._open()

    def _emit(self, stream: str, line: bytes) -> None:
        now = time.time_ns()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now // 1_000_000_000))
        record = wire.dumps({"log": line.decode("utf-8", "replace"), "stream": stream,
                             "time": f"{stamp}.{now % 1_000_000_000:09d}Z"}).encode() + b"\n"
        try:
            if self.max_size and self.size + len(record) > self.max_size and self.size:
                self._rotate()
            _write_all(self.fd, record)
            self.size += len(record)
        except OSError:
            pass

    def write(self, stream: str, data: bytes) -> None:
        data = self._partial.pop(stream, b"") + data
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            self._emit(stream, data[start:end + 1])
            start = end + 1
        rest = data[start:]
        while len(rest) >= JSON_LINE_LIMIT:
            self._emit(stream, rest[:JSON_LINE_LIMIT])
            rest = rest[JSON_LINE_LIMIT:]
        if rest:
            self._partial[stream] = rest

    def close(self) -> None:
        for stream, rest in list(self._partial.items()):
            self._emit(stream, rest)
        self._partial.clear()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class FifoSink(_Sink):
    def __init__(self, loop: Loop, path: str) -> None:
        super().__init__()
        self.loop = loop
        self.path = path
        self.pending = bytearray()
        self.dropped = 0
        self.closing = False
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise StdioError("NotFound" if exc.errno == errno.ENOENT else "InvalidArgument",
                              f"stdio fifo {path}: {exc.strerror}") from exc

    def write(self, stream: str, data: bytes) -> None:
        if self.fd < 0:
            return
        if not self.pending:
            try:
                data = data[os.write(self.fd, data):]
            except BlockingIOError:
                pass
            except OSError:
                return
            if not data:
                return
            self.loop.add_writer(self.fd, self._flush)
        room = FIFO_BUFFER_LIMIT - len(self.pending)
        if len(data) > room:
            # Nobody reads: drop rather than block the container.
            self.dropped += len(data) - max(room, 0)
            data = data[:max(room, 0)]
        self.pending += data

    def _flush(self) -> None:
        try:
            written = os.write(self.fd, self.pending)
        except BlockingIOError:
            return
        except OSError:
            written = len(self.pending)
        del self.pending[:written]
        if not self.pending:
            self.loop.remove_writer(self.fd)
            if self.closing:
                self._really_close()

    def close(self) -> None:
        self.closing = True
        if self.pending:
            self.loop.call_later(FIFO_FLUSH_SECONDS, self._really_close)
        else:
            self._really_close()

    def _really_close(self) -> None:
        if self.fd >= 0:
            self.loop.remove_writer(self.fd)
            os.close(self.fd)
            self.fd = -1


def open_sink(loop: Loop, uri: str, shared: dict[str, _Sink]) -> _Sink | None:
    """The sink for one stream URI; stdout and stderr naming the same file share it."""
    if not uri:
        return None
    if uri in shared:
        return shared[uri].acquire()
    scheme, sep, rest = uri.partition("://")
    if not sep:
        scheme, rest = "fifo", uri
    path, _, query = rest.partition("?")
    if not path.startswith("/"):
        raise StdioError("InvalidArgument", f"stdio {uri!r}: the path must be absolute")
    if scheme == "fifo":
        sink: _Sink = FifoSink(loop, path)
    elif scheme == "file":
        sink = FileSink(path)
    elif scheme == "json-file":
        options = dict(p.partition("=")[::2] for p in query.split("&") if p)
        sink = JsonFileSink(path, parse_size(options["max-size"]) if options.get("max-size")
                            else 0, int(options.get("max-file") or 1))
    else:
        raise StdioError("NotImplementedFeature",
                         f"stdio {uri!r}: scheme {scheme!r} is not supported "
                         "(use a FIFO path, file:// or json-file://)")
    shared[uri] = sink
    return sink.acquire()


# ------------------------------------------------------------------- copiers

class OutputCopier:
    """Drain one container output (pipe read end or pty master) into a sink."""

    def __init__(self, loop: Loop, fd: int, stream: str, sink: _Sink | None,
                 on_eof, *, owns_fd: bool = True) -> None:
        self.loop, self.fd, self.stream, self.sink = loop, fd, stream, sink
        self.on_eof = on_eof
        self.owns_fd = owns_fd
        _nonblocking(fd)
        loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, CHUNK)
        except BlockingIOError:
            return
        except OSError:  # EIO: the pty's last slave closed
            data = b""
        if data:
            if self.sink is not None:
                self.sink.write(self.stream, data)
            return
        self.finish()

    def drain_now(self) -> None:
        while self.fd >= 0:
            self._readable()
            if self.fd >= 0 and not self._has_data():
                break

    def _has_data(self) -> bool:
        import select
        return bool(select.select([self.fd], [], [], 0)[0])


    def finish(self) -> None:
        if self.fd < 0:
            return
        self.loop.remove_reader(self.fd)
        if self.owns_fd:
            os.close(self.fd)
        self.fd = -1
        if self.sink is not None:
            self.sink.release()
            self.sink = None
        self.on_eof()


class StdinCopier:
    """Client FIFO → the container's stdin pipe (or pty master)."""

    def __init__(self, loop: Loop, path: str, target: int, *, owns_target: bool) -> None:
        self.loop, self.target, self.owns_target = loop, target, owns_target
        self.pending = bytearray()
        self.closing = False
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise StdioError("NotFound" if exc.errno == errno.ENOENT else "InvalidArgument",
                              f"stdin fifo {path}: {exc.strerror}") from exc
        _nonblocking(target)
        loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        self.pending += data
        self._flush()
        if len(self.pending) > FIFO_BUFFER_LIMIT:
            self.loop.remove_reader(self.fd)  # backpressure on the client, not the container

    def _flush(self) -> None:
        if self.target < 0:
            self.pending.clear()
            return
        try:
            written = os.write(self.target, self.pending) if self.pending else 0
        except BlockingIOError:
            written = 0
        except OSError:  # the process closed its stdin
            written = len(self.pending)
        del self.pending[:written]
        if self.pending:
            self.loop.add_writer(self.target, self._flush)
        else:
            self.loop.remove_writer(self.target)
            if self.fd >= 0 and not self.closing:
                self.loop.add_reader(self.fd, self._readable)
            if self.closing:
                self._close_target()

    def close(self) -> None:
        """CloseIO: take what the client already wrote, deliver it, then EOF."""
        if self.fd >= 0:
            while True:
                try:
                    data = os.read(self.fd, CHUNK)
                except OSError:
                    break
                if not data:
                    break
                self.pending += data
            self.loop.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1
        self.closing = True
        self._flush()

    def _close_target(self) -> None:
        if self.target >= 0:
            self.loop.remove_writer(self.target)
            if self.owns_target:
                os.close(self.target)
            self.target = -1
