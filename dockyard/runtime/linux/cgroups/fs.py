"""Reading and writing cgroup control files, with kernel errors turned into errdefs.

Both hierarchies share these helpers. Every write names the OCI field it came
from, so an EINVAL from the kernel reaches the user as
"linux.resources.cpu.cpus: the kernel rejected '7' in .../cpuset.cpus".
"""

from __future__ import annotations

import errno
import os
import time

from dockyard.errdefs import FailedPrecondition, InvalidArgument, Unavailable

UINT64_MAX = (1 << 64) - 1


def write(directory: str, name: str, value: str | int, *, field: str) -> None:
    path = os.path.join(directory, name)
    text = str(value)
    try:
        # No O_CREAT: a plain file made on a non-cgroup directory would hide a wrong
        # path. O_TRUNC is a no-op on cgroupfs but keeps plain-file test trees honest.
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise Unavailable(
            f"{field}: {path} does not exist; the kernel or this cgroup hierarchy lacks the "
            "feature (is the controller mounted/enabled?)") from exc
    except PermissionError as exc:
        raise FailedPrecondition(f"{field}: cannot open {path}: permission denied") from exc
    try:
        os.write(fd, text.encode())
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ERANGE, errno.EOVERFLOW):
            raise InvalidArgument(
                f"{field}: the kernel rejected {text!r} in {path}: {exc.strerror}") from exc
        if exc.errno in (errno.EBUSY, errno.EPERM, errno.EACCES):
            raise FailedPrecondition(
                f"{field}: cannot write {text!r} to {path}: {exc.strerror}") from exc
        raise Unavailable(f"{field}: cannot write {text!r} to {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)


def try_write(directory: str, name: str, value: str | int, *, field: str) -> bool:
    """Write when the file exists; return whether it did (for optional kernel knobs)."""
    if not os.path.exists(os.path.join(directory, name)):
        return False
    write(directory, name, value, field=field)
    return True


def read_text(directory: str, name: str, default: str | None = None) -> str:
    try:
        with open(os.path.join(directory, name)) as f:
            return f.read().strip()
    except FileNotFoundError:
        if default is None:
            raise
        return default


def read_int(directory: str, name: str, default: int = 0) -> int:
    """An integer file; "max" reads as UINT64_MAX, as runc reports it."""
    try:
        text = read_text(directory, name)
    except (FileNotFoundError, OSError):
        return default
    if text == "max":
        return UINT64_MAX
    try:
        return int(text.split()[0])
    except (ValueError, IndexError):
        return default


def read_keyed(directory: str, name: str) -> dict[str, int]:
    """A "key value" per line file such as memory.stat or cpu.stat; missing → {}."""
    out: dict[str, int] = {}
    try:
        text = read_text(directory, name)
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = UINT64_MAX if parts[1] == "max" else int(parts[1])
            except ValueError:
                continue
    return out


def read_pids(directory: str, name: str = "cgroup.procs") -> list[int]:
    try:
        text = read_text(directory, name)
    except OSError:
        return []
    return [int(x) for x in text.split()]


def walk_pids(directory: str) -> list[int]:
    """Pids of a cgroup and all its descendants, each once."""
    seen: dict[int, None] = {}
    if not os.path.isdir(directory):
        return []
    for root, _dirs, _files in os.walk(directory):
        for pid in read_pids(root):
            seen[pid] = None
    return list(seen)


def make_dirs(directory: str, on_create=None) -> None:
    """mkdir -p that calls on_create(path) for each directory it made, parent first.

    v1 cpuset needs the hook: the kernel leaves a new cpuset empty and refuses tasks.
    """
    missing = []
    current = directory
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            continue
        except PermissionError as exc:
            raise FailedPrecondition(f"cannot create cgroup {path}: permission denied") from exc
        except OSError as exc:
            raise Unavailable(f"cannot create cgroup {path}: {exc.strerror}") from exc
        if on_create is not None:
            on_create(path)


def remove_tree(directory: str, timeout: float = 5.0) -> None:
    """rmdir a cgroup and its children, deepest first, retrying while tasks exit.

    A cgroup stays busy for a moment after its last task was reaped, so EBUSY
    is retried until timeout. A directory already gone is success.
    """
    if not os.path.isdir(directory):
        return
    deadline = time.monotonic() + timeout
    dirs = [root for root, _d, _f in os.walk(directory)]
    for path in sorted(dirs, key=lambda p: p.count(os.sep), reverse=True):
        delay = 0.005
        while True:
            try:
                os.rmdir(path)
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    pids = read_pids(path)
                    raise FailedPrecondition(
                        f"cannot remove cgroup {path}: {exc.strerror}"
                        + (f" (still has processes {pids[:10]})" if pids else "")) from exc
                time.sleep(delay)
                delay = min(delay * 2, 0.1)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.001
    while not predicate():
        if time.monotonic() > deadline:
            raise Unavailable(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def signal_frozen(manager, sig: int, *, can_freeze: bool = True) -> None:
    """Signal every process in manager's cgroup, frozen meanwhile when possible:
    a forking process cannot escape between the listing and the kill."""
    frozen = False
    if can_freeze:
        try:
            manager.freeze()
            frozen = True
        except (Unavailable, FailedPrecondition):
            frozen = False
    try:
        for pid in manager.pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                continue
    finally:
        if frozen:
            manager.thaw()
