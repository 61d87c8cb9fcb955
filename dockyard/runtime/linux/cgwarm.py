"""Start the kernel's cgroup-attach slow path early, on a side thread.

Moving a task into a cgroup (a write to cgroup.procs) takes the kernel's
global cgroup_threadgroup_rwsem for writing. After a quiet spell the first
such write waits for an RCU grace period (8-18 ms on the benchmark host);
writes in the next grace period or so are fast. `dockyard-runc create`
places the init ~25 ms after start-up, all of it Python imports and parsing
that need no kernel help, so a thread that moves this process into the
cgroup it is already in (a no-op for the task) takes that wait off the
critical path. Only the low-level `_thread` module is used: `threading`
costs more to import than the write it would save.

The grace-period state is kernel-wide, so any process may warm it for
another: dockyard-containerd calls `warm_now` (in a pool thread) when a
Tasks.Create starts, ahead of the shim's runtime placing the init.

A fork waits while such a write is pending, and setns(2) into some
namespaces refuses a multi-threaded caller, so the runtime calls `wait()`
before it forks the init.

Nothing here may fail the caller: any error (rootless, no cgroupfs) is
ignored and placement simply pays the wait itself.
"""

from __future__ import annotations

import os

CGROUP_ROOT = "/sys/fs/cgroup"


def _own_procs_files() -> list[str]:
    """cgroup.procs of the cgroups this process is in, the v2 entry last."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out = []
    unified = None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _hier, controllers, path = parts
        if not controllers:
            unified = path
            continue
        name = controllers.removeprefix("name=")
        out.append(os.path.join(CGROUP_ROOT, name, path.lstrip("/"), "cgroup.procs"))
    if unified is not None:
        # Pure v2 mounts the hierarchy at the root; hybrid hosts at unified/.
        for base in (CGROUP_ROOT, os.path.join(CGROUP_ROOT, "unified")):
            out.append(os.path.join(base, unified.lstrip("/"), "cgroup.procs"))
    return out


_done = None  # a held _thread lock while the warm-up runs


def _warm(done) -> None:
    try:
        warm_now()
    finally:
        done.release()


def warm_now() -> None:
    """The warm-up itself, blocking for the grace period; never raises."""
    for path in _own_procs_files():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            # "0" is the writer itself: it stays where it is.
            os.write(fd, b"0")
            return
        except OSError:
            continue
        finally:
            os.close(fd)


def start() -> None:
    """Kick off the warm-up; returns at once."""
    global _done
    try:
        import _thread

        _done = _thread.allocate_lock()
        _done.acquire()
        _thread.start_new_thread(_warm, (_done,))
    except (ImportError, RuntimeError):
        _done = None


def wait() -> None:
    """Block until the warm-up is over: call before forking or switching namespaces.

    A fork waits for a pending cgroup attach anyway; waiting here keeps the side
    thread out of the child and out of setns(2)'s single-thread checks.
    """
    global _done
    done, _done = _done, None
    if done is not None:
        done.acquire()
