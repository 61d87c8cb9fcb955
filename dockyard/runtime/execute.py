"""Exec: start a new process inside a running container.

The process is our direct child: we enter the container's pid namespace
"for children", fork, and return to our own. The child is put in the
container's cgroup before it joins the other namespaces (user first,
mount last), then becomes the process like the init does.
"""

from __future__ import annotations

import _signal as signal  # not signal.py: its enums (and `enum`) cost ~4 ms
import _socket as socket  # not socket.py: its enums and imports cost ~5 ms
import os

from dockyard import errdefs
from dockyard.linux import syscalls as sc
from dockyard.record import record, replace
from dockyard.runtime import state as st
from dockyard.runtime.init import Prepared, Sync, _describe, _setup_console, become_process
from dockyard.runtime.linux import cgwarm, namespaces
from dockyard.runtime.spec import Process, parse_spec


@record
class ExecOptions:
    console_socket: str | None = None
    pid_file: str | None = None
    stdin: int | None = None
    stdout: int | None = None
    stderr: int | None = None
    preserve_fds: int = 0


def exec_process(runtime, container_id: str, process: Process,
                 options: ExecOptions | None = None) -> int:
    """Start process in the container; returns its pid (our child)."""
    from dockyard.runtime.container import _kill_and_reap
    from dockyard.runtime.linux import capabilities, rlimits, seccomp

    options = options or ExecOptions()
    cs = runtime.load(container_id)
    status = runtime.status(cs)
    if status not in ("running", "created"):
        raise errdefs.FailedPrecondition(f"cannot exec in a {status} container")
    spec = parse_spec(cs.config, cs.bundle)
    caps = capabilities.Capabilities.from_oci(process.capabilities) \
        if process.capabilities is not None else None
    filt = seccomp.compile_filter(spec.linux.seccomp) if spec.linux.seccomp else None
    prepared = Prepared(capabilities=caps, seccomp=filt,
                        rlimits=tuple(rlimits.parse_rlimits(list(process.rlimits))),
                        preserve_fds=options.preserve_fds)
    manager = runtime.cgroup(cs)
    kinds = [ns.type for ns in spec.linux.namespaces]
    ns_fds: list[tuple[str, int]] = []
    try:
        for kind in namespaces.JOIN_ORDER:
            if kind in kinds and kind != "pid":
                ns_fds.append((kind, os.open(f"/proc/{cs.pid}/ns/{namespaces.PROC_NAMES[kind]}",
                                             os.O_RDONLY | os.O_CLOEXEC)))
    except OSError as exc:
        for _, fd in ns_fds:
            os.close(fd)
        raise errdefs.FailedPrecondition(f"container {container_id} is not running: {exc}") from exc
    console = None
    if process.terminal:
        if not options.console_socket:
            raise errdefs.InvalidArgument("cannot allocate tty if runc will detach without "
                                          "setting console socket")
        console = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        console.connect(options.console_socket)
    parent_sync, child_sync = Sync.pair()
    cgwarm.wait()
    own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    pid = 0
    try:
        if "pid" in kinds:
            fd = os.open(f"/proc/{cs.pid}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
            try:
                namespaces.join("pid", fd)
            finally:
                os.close(fd)
        # Not dumpable from the first instant in the container's pid
        # namespace: it must never reach our /proc/<pid>/exe (CVE-2019-5736).
        sc.prctl(sc.PR_SET_DUMPABLE, 0)
        pid = os.fork()
        if pid == 0:
            parent_sync.close()
            _exec_child(child_sync, process, prepared, ns_fds, console, options,
                        in_user_ns="user" in kinds)
    finally:
        if pid != 0:
            sc.prctl(sc.PR_SET_DUMPABLE, 1)
        sc.setns(own_pid_ns, sc.CLONE_NEWPID)
        os.close(own_pid_ns)
        for _, fd in ns_fds:
            os.close(fd)
        child_sync.close()
        if console is not None:
            console.close()
    try:
        manager.add(pid)
        parent_sync.send("go")
        msg = parent_sync.recv()  # EOF: the sync socket closed on execve
        if msg["type"] == "error":
            os.waitpid(pid, 0)
            pid = 0
            raise _error_from_child(msg["message"])
    except BaseException:
        if pid:
            _kill_and_reap(pid)
        raise
    finally:
        parent_sync.close()
    if options.pid_file:
        st.write_atomic(os.path.abspath(options.pid_file), str(pid).encode(), 0o644)
    return pid


def _error_from_child(message: str) -> errdefs.DockyardError:
    if "executable file not found" in message or "no such file or directory" in message:
        return errdefs.NotFound(message)
    return errdefs.FailedPrecondition(message)


def _exec_child(sync: Sync, process: Process, prepared: Prepared,
                ns_fds: list[tuple[str, int]], console: socket.socket | None,
                options: ExecOptions, *, in_user_ns: bool) -> None:
    try:
        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
        for fd, target in ((options.stdin, 0), (options.stdout, 1), (options.stderr, 2)):
            if fd is not None and fd != target:
                os.dup2(fd, target)
        sync.expect("go")
        for kind, fd in ns_fds:
            namespaces.join(kind, fd)
        if process.terminal:
            os.setsid()
            _setup_console(console, process)
        from dockyard.runtime.linux import rlimits
        rlimits.apply_rlimits(prepared.rlimits)
        sc.prctl(sc.PR_SET_PDEATHSIG, 0)
        become_process(process, prepared, in_user_ns=in_user_ns)
    except BaseException as exc:  # noqa: BLE001 - the child must never unwind
        try:
            sync.send("error", message=_describe(exc))
        except OSError:
            pass
    os._exit(127)


def process_for_exec(base: Process | None, args: list[str], *, env: list[str], cwd: str | None,
                     user: str | None, terminal: bool, caps: list[str] | None = None,
                     no_new_privs: bool | None = None) -> Process:
    """The container's process config with the exec overrides, as runc exec builds it."""
    if base is None:
        base = Process(args=tuple(args))
    merged_env = list(base.env)
    for entry in env:
        key = entry.split("=", 1)[0]
        merged_env = [e for e in merged_env if e.split("=", 1)[0] != key] + [entry]
    proc = replace(base, args=tuple(args), env=tuple(merged_env), terminal=terminal,
                   cwd=cwd or base.cwd, console_size=None)
    if user:
        uid_s, _, gid_s = user.partition(":")
        try:
            proc = replace(proc, user=replace(proc.user, uid=int(uid_s),
                                              gid=int(gid_s) if gid_s else 0,
                                              additional_gids=()))
        except ValueError as exc:
            raise errdefs.InvalidArgument(f"--user {user!r}: expected UID[:GID] numbers") from exc
    if caps:
        current = dict(base.capabilities or {})
        for key in ("bounding", "effective", "permitted", "ambient", "inheritable"):
            if key in ("bounding", "effective", "permitted"):
                current[key] = sorted(set(current.get(key, [])) | set(caps))
        proc = replace(proc, capabilities=current)
    if no_new_privs is not None:
        proc = replace(proc, no_new_privileges=no_new_privs)
    return proc
