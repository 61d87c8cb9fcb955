"""Terminals: the pty master arrives over --console-socket (SCM_RIGHTS, as
runc sends it), the container's process sees /dev/pts/0 as its controlling
terminal with the configured size, for the init and for `exec -t`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time

import pytest

from dockyard.runtime.linux.tty import receive_master
from tests.integration.runtime_helpers import created, new_id, runc

pytestmark = [pytest.mark.integration, pytest.mark.requires_root]


class ConsoleReceiver:
    """A console socket: accepts one connection and keeps the master it got."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, f"console-{os.urandom(3).hex()}.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(1)
        self.sock.settimeout(20)
        self.master: int | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        try:
            conn, _ = self.sock.accept()
            with conn:
                self.master = receive_master(conn)
        except BaseException as exc:  # noqa: BLE001 - reported by wait()
            self.error = exc

    def wait(self) -> int:
        self._thread.join(20)
        if self.error:
            raise self.error
        assert self.master is not None, "no pty master received"
        return self.master

    def read_all(self, timeout: float = 10) -> str:
        """Read the master until the slave side is closed by every process."""
        master = self.wait()
        os.set_blocking(master, False)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = os.read(master, 4096)
            except BlockingIOError:
                time.sleep(0.01)
                continue
            except OSError:  # EIO: no slave left
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks).decode(errors="replace")

    def close(self) -> None:
        if self.master is not None:
            os.close(self.master)
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _create_with_console(bundle, session_env, cid: str, console: ConsoleReceiver) -> None:
    proc = runc(session_env, "create", "--console-socket", console.path, "--bundle",
                bundle.path, cid)
    assert proc.returncode == 0, proc.stderr


def test_init_terminal_over_console_socket(bundle, session_env):
    process = bundle.config["process"]
    process["terminal"] = True
    process["consoleSize"] = {"height": 40, "width": 100}
    bundle.set_args("sh", "-c", "tty; stty size; [ -t 0 ] && [ -t 1 ] && echo ISATTY")
    console = ConsoleReceiver(bundle.path)
    cid = new_id("tty")
    try:
        _create_with_console(bundle, session_env, cid, console)
        assert runc(session_env, "start", cid).returncode == 0
        out = console.read_all().replace("\r\n", "\n").splitlines()
        assert out == ["/dev/pts/0", "40 100", "ISATTY"]
    finally:
        runc(session_env, "delete", "--force", cid)
        console.close()


def test_terminal_without_console_socket_is_refused(bundle, session_env):
    bundle.config["process"]["terminal"] = True
    bundle.write()
    cid = new_id("tty")
    proc = runc(session_env, "create", "--bundle", bundle.path, cid)
    assert proc.returncode == 1
    assert "console socket" in proc.stderr
    assert not os.path.exists(os.path.join(session_env.runc_root, cid))


def test_exec_tty_over_console_socket(bundle, session_env):
    with created(bundle, session_env, "sleep", "60") as cid:
        console = ConsoleReceiver(bundle.path)
        try:
            proc = runc(session_env, "exec", "-t", "-d", "--console-socket", console.path, cid,
                        "sh", "-c", "tty; stty size; echo ISATTY")
            assert proc.returncode == 0, proc.stderr
            out = console.read_all().replace("\r\n", "\n").splitlines()
            assert out[0].startswith("/dev/pts/") and out[-1] == "ISATTY"
        finally:
            console.close()
