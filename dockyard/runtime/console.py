"""The foreground terminal of `run -t` / `exec -t` without --console-socket:
we are our own console socket, receive the pty master, and copy bytes
between it and our stdio with the local terminal in raw mode.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import shutil
import socket
import tempfile
import termios
import tty as ttymod

from dockyard.runtime.linux import tty


class ConsoleRelay:
    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="dockyard-console-")
        self.path = os.path.join(self._dir, "console.sock")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(1)
        self.master: int | None = None
        self._saved_attrs = None

    def accept(self) -> None:
        conn, _ = self._listener.accept()
        with conn:
            self.master = tty.receive_master(conn)
        self.resize_from_stdin()

    def resize_from_stdin(self) -> None:
        if self.master is None or not os.isatty(0):
            return
        size = fcntl.ioctl(0, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, size)

    def copy_until_exit(self, pid: int) -> None:
        """Copy stdin → master and master → stdout until the pty closes."""
        assert self.master is not None
        if os.isatty(0):
            self._saved_attrs = termios.tcgetattr(0)
            ttymod.setraw(0)
        stdin_open = True
        try:
            while True:
                readers = [self.master] + ([0] if stdin_open else [])
                try:
                    ready, _, _ = select.select(readers, [], [])
                except InterruptedError:
                    continue
                if self.master in ready:
                    try:
                        data = os.read(self.master, 65536)
                    except OSError:
                        data = b""
                    if not data:
                        return
                    _write_all(1, data)
                if 0 in ready:
                    data = os.read(0, 65536)
                    if not data:
                        stdin_open = False
                        continue
                    _write_all(self.master, data)
        finally:
            self._restore()

    def _restore(self) -> None:
        if self._saved_attrs is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, self._saved_attrs)
            self._saved_attrs = None

    def close(self) -> None:
        self._restore()
        if self.master is not None:
            with contextlib.suppress(OSError):
                os.close(self.master)
            self.master = None
        self._listener.close()
        shutil.rmtree(self._dir, ignore_errors=True)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]
