"""Terminals: a pty from the container's own devpts, its master sent over
the console socket with SCM_RIGHTS (as runc does), the slave made the
controlling terminal of the container process.
"""

from __future__ import annotations

import _socket as socket  # not socket.py: its enums and imports cost ~5 ms
import fcntl
import os
import struct

from dockyard import errdefs

_TIOCSPTLCK = 0x40045431
_TIOCGPTN = 0x80045430
_TIOCSCTTY = 0x540E
_TIOCSWINSZ = 0x5414
# Descriptors travel as C ints; struct, not array: array's import pulls in
# `collections` (~1 ms of every `run`).
_FD = struct.Struct("i")


def open_pty() -> tuple[int, str]:
    """Open a new pty master in the current mount namespace's devpts."""
    try:
        master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise errdefs.FailedPrecondition(
            f"cannot allocate a terminal: /dev/ptmx: {exc.strerror}; "
            "mount devpts on /dev/pts with ptmxmode=0666") from exc
    fcntl.ioctl(master, _TIOCSPTLCK, struct.pack("i", 0))
    number = struct.unpack("I", fcntl.ioctl(master, _TIOCGPTN, struct.pack("I", 0)))[0]
    return master, f"/dev/pts/{number}"


def set_size(fd: int, height: int, width: int) -> None:
    fcntl.ioctl(fd, _TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


def send_master(sock: socket.socket, master: int, name: str) -> None:
    sock.sendmsg([name.encode()], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                    _FD.pack(master))])


def receive_master(sock: socket.socket) -> int:
    fds: list[int] = []
    msg, ancdata, _flags, _addr = sock.recvmsg(4096, socket.CMSG_LEN(_FD.size))
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(fd for (fd,) in _FD.iter_unpack(data[: len(data) - len(data) % _FD.size]))
    if not fds:
        raise errdefs.FailedPrecondition("console socket: no terminal file descriptor received")
    return fds[0]


def make_controlling(slave_path: str) -> None:
    """Become session leader with the pty slave as terminal and stdio."""
    slave = os.open(slave_path, os.O_RDWR)
    fcntl.ioctl(slave, _TIOCSCTTY, 0)
    for target in (0, 1, 2):
        os.dup2(slave, target)
    if slave > 2:
        os.close(slave)
