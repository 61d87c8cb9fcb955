"""Where a container's runtime state lives: <root>/<id>/.

state.json is written atomically once create has finished; exec.fifo exists
from create until start. The status is derived, never stored: the init
process alive (same start time, not a zombie) and the fifo present means
created; alive without fifo, running (or paused if its cgroup is frozen);
otherwise stopped.
"""

from __future__ import annotations

import os

from dockyard import errdefs
from dockyard.record import field, fields, record
from dockyard.runtime import fastjson

DEFAULT_ROOT = "/run/dockyard-runc"
# Checked without `re`, which `run` does not otherwise import (~7 ms).
_ID_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_ID_CHARS = _ID_FIRST | frozenset("_.+-")
EXEC_FIFO = "exec.fifo"
STATE_FILE = "state.json"


def validate_id(container_id: str) -> None:
    if not (container_id and len(container_id) <= 1024 and container_id[0] in _ID_FIRST
            and _ID_CHARS.issuperset(container_id)):
        raise errdefs.InvalidArgument(
            f"invalid container id {container_id!r}: use letters, digits, '_', '.', '+', '-'")


@record
class ContainerState:
    id: str
    pid: int
    pid_start_time: int
    bundle: str
    rootfs: str
    created: str
    cgroups_path: str
    annotations: dict[str, str] = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    owner: str = ""

    def save(self, state_dir: str) -> None:
        # Every field is plain JSON already: no need for asdict's walk through the config.
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        write_atomic(os.path.join(state_dir, STATE_FILE), fastjson.dumps(data).encode())

    @classmethod
    def load(cls, state_dir: str, container_id: str) -> ContainerState:
        try:
            with open(os.path.join(state_dir, STATE_FILE), "rb") as f:
                raw = fastjson.loads(f.read())
        except FileNotFoundError:
            raise errdefs.NotFound(f"container does not exist: {container_id}") from None
        except (OSError, ValueError) as exc:
            raise errdefs.FailedPrecondition(
                f"container {container_id}: unreadable state ({exc}); "
                f"remove it with `delete --force {container_id}`") from exc
        return cls(**raw)


def write_atomic(path: str, data: bytes, mode: int = 0o600) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def process_start_time(pid: int) -> int | None:
    """Start time (field 22 of /proc/<pid>/stat), or None when gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(b")") + 2:].split()
    if rest[0] in (b"Z", b"X"):
        return None
    return int(rest[19])


def remove_state_dir(path: str) -> None:
    """Remove a container's state dir (flat: state.json, exec.fifo, temp files)."""
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return
    for name in names:
        try:
            os.unlink(os.path.join(path, name))
        except IsADirectoryError:
            import shutil
            shutil.rmtree(os.path.join(path, name), ignore_errors=True)
        except FileNotFoundError:
            pass
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
