"""A single-threaded event loop: readers, writers and timers on epoll.

asyncio (or even `selectors`) would cost the shim megabytes of imports, and
threads would make the runtime worker's fork unsafe, so the shim runs this.
"""

from __future__ import annotations

import heapq
import itertools
import select
import time
from collections.abc import Callable


class Loop:
    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._registered: set[int] = set()
        self._readers: dict[int, Callable[[], None]] = {}
        self._writers: dict[int, Callable[[], None]] = {}
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.running = True

    def _update(self, fd: int) -> None:
        mask = (select.EPOLLIN if fd in self._readers else 0) | \
            (select.EPOLLOUT if fd in self._writers else 0)
        if fd not in self._registered:
            if mask:
                self._epoll.register(fd, mask)
                self._registered.add(fd)
        elif mask:
            self._epoll.modify(fd, mask)
        else:
            self._epoll.unregister(fd)
            self._registered.discard(fd)

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self._readers[fd] = callback
        self._update(fd)

    def remove_reader(self, fd: int) -> None:
        if self._readers.pop(fd, None) is not None:
            self._update(fd)

    def add_writer(self, fd: int, callback: Callable[[], None]) -> None:
        self._writers[fd] = callback
        self._update(fd)

    def remove_writer(self, fd: int) -> None:
        if self._writers.pop(fd, None) is not None:
            self._update(fd)

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), callback))

    def run(self) -> None:
        while self.running:
            timeout = None
            if self._timers:
                timeout = max(0.0, self._timers[0][0] - time.monotonic())
            try:
                events = self._epoll.poll(-1 if timeout is None else timeout)
            except InterruptedError:
                events = []
            for fd, mask in events:
                if mask & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR) \
                        and fd in self._readers:
                    self._readers[fd]()
                if mask & (select.EPOLLOUT | select.EPOLLERR) and fd in self._writers:
                    self._writers[fd]()
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                _, _, callback = heapq.heappop(self._timers)
                callback()
