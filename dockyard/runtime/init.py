"""The container init and the exec'd process: what runs in the forked child.

`container_init` is one straight line of named steps; each ordering
constraint is stated where it matters. It talks to the runtime process over
a socketpair (`Sync`) until it reports ready, then blocks on the exec fifo
until `start` opens it, then becomes the user's process with execve.

Nothing here may raise into the caller's code: the child reports the error
over the sync socket (or stderr, after ready) and leaves with os._exit.
"""

from __future__ import annotations

import _signal as signal  # not signal.py: its enums (and `enum`) cost ~4 ms
import _socket as socket  # not socket.py: its enums and imports cost ~5 ms
import os
import sys

from dockyard import errdefs
from dockyard.linux import syscalls as sc
from dockyard.record import record
from dockyard.runtime import fastjson
from dockyard.runtime.hooks import run_hooks
from dockyard.runtime.linux import capabilities, namespaces, rlimits, rootfs, tty
from dockyard.runtime.spec import Process, Spec

# typing costs ~4 ms of start-up on `dockyard-runc run`; annotations only need it
# for type checkers.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Sync:
    """Message channel between the runtime and the child (SOCK_SEQPACKET)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @classmethod
    def pair(cls) -> tuple[Sync, Sync]:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        return cls(a), cls(b)

    def send(self, kind: str, **fields: Any) -> None:
        self.sock.send(fastjson.dumps({"type": kind, **fields}).encode())

    def recv(self) -> dict:
        data = self.sock.recv(1 << 16)
        if not data:
            return {"type": "eof"}
        return fastjson.loads(data)

    def expect(self, kind: str) -> dict:
        msg = self.recv()
        if msg["type"] == "error":
            raise errdefs.FailedPrecondition(msg["message"])
        if msg["type"] != kind:
            raise errdefs.FailedPrecondition(f"container init: expected {kind}, got {msg['type']}")
        return msg

    def close(self) -> None:
        self.sock.close()


@record
class Prepared:
    """What the runtime validated and compiled before forking, handed to the child."""

    capabilities: Any = None  # capabilities.Capabilities or None
    seccomp: Any = None  # compiled seccomp filter or None
    rlimits: tuple = ()
    no_pivot: bool = False  # MS_MOVE + chroot instead of pivot_root (runc --no-pivot)
    preserve_fds: int = 0  # fds 3..3+N-1 passed on to the process, as runc's --preserve-fds


def lookup_path(name: str, env: tuple[str, ...]) -> str:
    if "/" in name:
        if not os.path.exists(name):
            raise errdefs.NotFound(f'exec: "{name}": stat {name}: no such file or directory')
        return name
    path = DEFAULT_PATH
    for entry in env:
        if entry.startswith("PATH="):
            path = entry[5:]
    for directory in path.split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise errdefs.NotFound(f'exec: "{name}": executable file not found in $PATH')


def _home_for(uid: int) -> str:
    try:
        with open("/etc/passwd") as f:
            for line in f:
                fields = line.rstrip("\n").split(":")
                if len(fields) >= 6 and fields[2] == str(uid):
                    return fields[5] or "/"
    except OSError:
        pass
    return "/"


def process_env(process: Process) -> list[str]:
    env = list(process.env)
    if not any(e.startswith("HOME=") for e in env):
        env.append(f"HOME={_home_for(process.user.uid)}")
    return env


def resolve_command(process: Process) -> tuple[str, list[str]]:
    """(executable, environment) of the process, as execve will get them."""
    env = process_env(process)
    return lookup_path(process.args[0], tuple(env)), env


def become_process(process: Process, prepared: Prepared, *, in_user_ns: bool,
                   resolved: tuple[str, list[str]] | None = None) -> None:
    """Switch user, capabilities, seccomp and execve. Never returns.

    Order: bounding set drop and keepcaps before setuid (so the permitted
    set survives it); capset and ambient after; seccomp last, right before
    execve, except without no_new_privileges, where loading a filter needs
    CAP_SYS_ADMIN and so happens before the capabilities are reduced.
    """
    executable, env = resolved or resolve_command(process)
    caps = prepared.capabilities
    if caps is not None:
        capabilities.drop_bounding(caps)
        capabilities.set_keepcaps()
    user = process.user
    if not in_user_ns or user.additional_gids:
        try:
            os.setgroups(list(user.additional_gids))
        except PermissionError:
            if user.additional_gids:
                raise
    os.setresgid(user.gid, user.gid, user.gid)
    os.setresuid(user.uid, user.uid, user.uid)
    if caps is not None:
        capabilities.clear_keepcaps()
    try:
        os.chdir(process.cwd)
    except OSError as exc:
        raise errdefs.InvalidArgument(
            f"process.cwd {process.cwd}: {exc.strerror} (as uid {user.uid})") from exc
    if process.user.umask is not None:
        os.umask(process.user.umask)
    if process.no_new_privileges:
        sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
    if prepared.seccomp is not None and not process.no_new_privileges:
        prepared.seccomp.load()
    if caps is not None:
        capabilities.apply_sets(caps)
        capabilities.raise_ambient(caps)
    # Python ignores SIGPIPE and SIGXFSZ; ignored signals survive execve.
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    # No runtime descriptor may reach the container (CVE-2024-21626 class),
    # except those the caller asked to pass on.
    first_closed = 3 + prepared.preserve_fds
    for fd in range(3, first_closed):
        os.set_inheritable(fd, True)
    sc.close_range(first_closed, 0xFFFFFFFF, 4)  # CLOSE_RANGE_CLOEXEC
    if prepared.seccomp is not None and process.no_new_privileges:
        prepared.seccomp.load()
    os.execve(executable, list(process.args), dict(
        e.split("=", 1) if "=" in e else (e, "") for e in env))


def container_init(spec: Spec, sync: Sync, prepared: Prepared, *, state_dir: str,
                   user_ns_fd: int | None, ns_fds: list[tuple[str, int]],
                   console: socket.socket | None) -> None:
    """The container's PID 1 until execve. Runs in the forked child; never returns."""
    ready = False
    try:
        # Die with the runtime while it still waits for us.
        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
        # Keep our memory (and the runtime binary behind /proc/self/exe) out
        # of reach of other processes in the container (CVE-2019-5736 class).
        sc.prctl(sc.PR_SET_DUMPABLE, 0)
        sync.expect("go")
        linux = spec.linux
        if user_ns_fd is not None:
            namespaces.join("user", user_ns_fd)
            os.close(user_ns_fd)
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
        for kind, fd in ns_fds:
            namespaces.join(kind, fd)
            os.close(fd)
        # The cgroup namespace comes last among these, after the runtime
        # placed us in our cgroup (it did, before "go").
        namespaces.unshare(namespaces.new_namespace_flags(linux, exclude=("user", "pid")))
        net = linux.namespace("network")
        if net and not net.path:
            namespaces.bring_up_loopback()
        os.setsid()
        uts = linux.namespace("uts")
        if uts and not uts.path:
            if spec.hostname:
                sc.sethostname(spec.hostname)
            if spec.domainname:
                sc.setdomainname(spec.domainname)

        rootfs.prepare_rootfs(spec)
        if spec.hooks.get("prestart") or spec.hooks.get("createRuntime"):
            # Run by the runtime (container._has_runtime_hooks decides alike).
            sync.send("hooks")
            sync.expect("hooks-done")
        run_hooks("createContainer", spec.hooks, _state(spec, "created", state_dir))
        fifo = os.open(os.path.join(state_dir, "exec.fifo"), os.O_PATH | os.O_CLOEXEC)
        rootfs.pivot_into(spec.root.path, no_pivot=prepared.no_pivot)
        process = spec.process
        assert process is not None
        if process.terminal:
            _setup_console(console, process)
        elif console is not None:
            console.close()
        # sysctls before readonlyPaths: /proc/sys is about to become read-only.
        rootfs.write_sysctls(linux.sysctl)
        rootfs.readonly_paths(linux.readonly_paths)
        rootfs.mask_paths(linux.masked_paths)
        rootfs.finalize_rootfs(spec)
        if process.oom_score_adj is not None:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write(str(process.oom_score_adj))
        rlimits.apply_rlimits(prepared.rlimits)
        # Resolved once, at create, as runc does: a missing executable fails create.
        resolved = resolve_command(process)

        sc.prctl(sc.PR_SET_PDEATHSIG, 0)
        sync.send("ready")
        sync.close()
        ready = True
        # Blocks until `start` opens the fifo for reading.
        writer = os.open(f"/proc/self/fd/{fifo}", os.O_WRONLY | os.O_CLOEXEC)
        os.write(writer, b"0")
        # writer stays open (O_CLOEXEC) until execve: `start` sees EOF once the
        # user's process runs, so poststart hooks follow startContainer's.
        os.close(fifo)
        run_hooks("startContainer", spec.hooks, _state(spec, "running", state_dir))
        become_process(process, prepared, in_user_ns=user_ns_fd is not None
                       or bool(linux.namespace("user")), resolved=resolved)
    except BaseException as exc:  # noqa: BLE001 - the child must never unwind
        message = _describe(exc)
        if not ready:
            try:
                sync.send("error", message=message)
            except OSError:
                pass
        else:
            os.write(2, f"dockyard-runc init: {message}\n".encode())
        os._exit(127 if isinstance(exc, errdefs.NotFound) else 1)


def _setup_console(console: socket.socket | None, process: Process) -> None:
    if console is None:
        raise errdefs.InvalidArgument(
            "process.terminal is true but no --console-socket was given")
    master, slave_path = tty.open_pty()
    if process.console_size:
        tty.set_size(master, *process.console_size)
    tty.send_master(console, master, slave_path)
    os.close(master)
    console.close()
    tty.make_controlling(slave_path)


def _state(spec: Spec, status: str, state_dir: str) -> dict:
    # The state dir is <root>/<id>: the init knows its id from it.
    return {"ociVersion": spec.oci_version or "1.0.2", "id": os.path.basename(
        state_dir.rstrip("/")), "status": status, "pid": os.getpid(), "bundle": spec.bundle,
        "annotations": spec.annotations}


def _describe(exc: BaseException) -> str:
    if isinstance(exc, errdefs.DockyardError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    return f"{type(exc).__name__}: {exc}"


def exit_with_error(message: str) -> None:
    sys.stderr.write(message + "\n")
    os._exit(1)
