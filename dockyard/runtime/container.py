"""The runtime as a library: create, start, state, kill, delete, pause,
resume, ps, stats. `dockyard-runc` (cli.py) is a thin layer on this, and
the shim calls it in-process.

create: validate everything (no syscall before that), make the state dir
and exec fifo, fork the init as our direct child (see `_spawn_init` for
the namespace choreography), put it in its cgroup, let it build the rootfs,
run the runtime-side hooks, and save state.json once the init waits on the
fifo. Any failure kills the init and removes what was made.
"""

from __future__ import annotations

import _signal as signal  # not signal.py: its enums (and `enum`) cost ~4 ms
import _socket as socket  # not socket.py: its enums and imports cost ~5 ms
import errno
import os
import select
import time

from dockyard import errdefs
from dockyard.record import field, record
from dockyard.runtime import fastjson
from dockyard.runtime import state as st
from dockyard.runtime.linux import cgwarm
from dockyard.runtime.spec import Spec, load_bundle

# What only create needs (ctypes and the syscalls over it, the init and,
# through it, namespaces, rootfs, capabilities, rlimits: ~7 ms of imports)
# is imported there: start, state, kill and delete do without it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from dockyard.runtime.init import Prepared, Sync

OCI_VERSION = "1.0.2"

# Devices every container may use whatever the config says, as runc allows.
DEFAULT_ALLOWED_DEVICES = [
    {"allow": True, "type": "c", "major": None, "minor": None, "access": "m"},
    {"allow": True, "type": "b", "major": None, "minor": None, "access": "m"},
    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 7, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 8, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 9, "access": "rwm"},
    {"allow": True, "type": "c", "major": 5, "minor": 0, "access": "rwm"},
    {"allow": True, "type": "c", "major": 5, "minor": 1, "access": "rwm"},
    {"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"},
    {"allow": True, "type": "c", "major": 136, "minor": None, "access": "rwm"},
    {"allow": True, "type": "c", "major": 10, "minor": 200, "access": "rwm"},
]


@record
class CreateOptions:
    console_socket: str | None = None
    pid_file: str | None = None
    # stdio for the init when it has no terminal (default: ours).
    stdin: int | None = None
    stdout: int | None = None
    stderr: int | None = None
    extra_env: list[str] = field(default_factory=list)
    preserve_fds: int = 0
    no_pivot: bool = False


def _prepare(spec: Spec) -> tuple[Prepared, object, list[str]]:
    """Parse and compile the parts other modules own; every error before any syscall."""
    from dockyard.runtime.init import Prepared
    from dockyard.runtime.linux import capabilities, rlimits
    from dockyard.runtime.linux.cgroups import resources as cgroup_resources

    warnings: list[str] = []
    process = spec.process
    if process is None:
        raise errdefs.InvalidArgument("config.json: process: is required to create a container")
    caps = None
    if process.capabilities is not None:
        caps = capabilities.Capabilities.from_oci(process.capabilities)
        warnings.extend(caps.warnings)
    limits = tuple(rlimits.parse_rlimits(list(process.rlimits)))
    filt = None
    if spec.linux.seccomp:
        # Imported only when configured: libseccomp's bindings cost ~1.5 ms.
        from dockyard.runtime.linux import seccomp
        filt = seccomp.compile_filter(spec.linux.seccomp)
    resources_raw = dict(spec.linux.resources or {})
    resources_raw["devices"] = list(resources_raw.get("devices") or []) + DEFAULT_ALLOWED_DEVICES + [
        {"allow": True, "type": d.type if d.type != "u" else "c", "major": d.major,
         "minor": d.minor, "access": "rwm"} for d in spec.linux.devices]
    resources = cgroup_resources.Resources.from_oci(resources_raw)
    if not spec.linux.namespace("mount") or spec.linux.namespace("mount").path:
        raise errdefs.InvalidArgument(
            "config.json: linux.namespaces: a new mount namespace is required")
    if process.apparmor_profile and not os.path.exists("/sys/kernel/security/apparmor"):
        warnings.append(f"apparmor profile {process.apparmor_profile!r} ignored: "
                        "the host has no AppArmor")
    if process.selinux_label and not os.path.exists("/sys/fs/selinux"):
        warnings.append(f"selinux label {process.selinux_label!r} ignored: the host has no SELinux")
    return Prepared(capabilities=caps, seccomp=filt, rlimits=limits), resources, warnings


class Runtime:
    """Containers under one state root (runc's --root)."""

    def __init__(self, root: str = st.DEFAULT_ROOT) -> None:
        self.root = root
        self._holders: dict[int, _UserNamespaceHolder] = {}

    # ------------------------------------------------------------ helpers

    def _dir(self, container_id: str) -> str:
        st.validate_id(container_id)
        return os.path.join(self.root, container_id)

    def load(self, container_id: str) -> st.ContainerState:
        return st.ContainerState.load(self._dir(container_id), container_id)

    def status(self, cs: st.ContainerState) -> str:
        if not cs.pid or st.process_start_time(cs.pid) != cs.pid_start_time:
            return "stopped"
        if os.path.exists(os.path.join(self._dir(cs.id), st.EXEC_FIFO)):
            return "created"
        manager = self.cgroup(cs)
        try:
            if manager.state() == "frozen":
                return "paused"
        except (OSError, errdefs.DockyardError):
            pass
        return "running"

    def cgroup(self, cs: st.ContainerState):
        from dockyard.runtime.linux.cgroups import new_manager
        return new_manager(cs.cgroups_path, cs.id)

    def state(self, container_id: str) -> dict:
        cs = self.load(container_id)
        status = self.status(cs)
        return {
            "ociVersion": OCI_VERSION,
            "id": cs.id,
            "pid": cs.pid if status != "stopped" else 0,
            "status": status,
            "bundle": cs.bundle,
            "rootfs": cs.rootfs,
            "created": cs.created,
            "annotations": cs.annotations,
            "owner": cs.owner,
        }

    def list(self) -> list[dict]:
        try:
            names = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            try:
                out.append(self.state(name))
            except errdefs.DockyardError:
                continue
        return out

    # ------------------------------------------------------------- create

    def create(self, container_id: str, bundle: str,
               options: CreateOptions | None = None) -> tuple[int, list[str]]:
        """Create the container; returns (init pid, warnings)."""
        options = options or CreateOptions()
        state_dir = self._dir(container_id)
        spec = load_bundle(bundle)
        prepared, resources, warnings = _prepare(spec)
        prepared.preserve_fds = options.preserve_fds
        prepared.no_pivot = options.no_pivot
        os.makedirs(self.root, mode=0o711, exist_ok=True)
        try:
            os.mkdir(state_dir, 0o711)
        except FileExistsError:
            raise errdefs.AlreadyExists(f"container with id exists: {container_id}") from None
        init_pid = 0
        manager = None
        try:
            fifo = os.path.join(state_dir, st.EXEC_FIFO)
            os.mkfifo(fifo)
            # Writable by the container's root whatever it maps to (not umask's).
            os.chmod(fifo, 0o622)
            from dockyard.runtime.linux.cgroups import new_manager
            manager = new_manager(spec.linux.cgroups_path or None, container_id)
            console = None
            if spec.process.terminal:
                if not options.console_socket:
                    raise errdefs.InvalidArgument(
                        "cannot allocate tty if runc will detach without setting console socket")
                console = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    console.connect(options.console_socket)
                except OSError as exc:
                    raise errdefs.InvalidArgument(
                        f"console socket {options.console_socket}: {exc.strerror}") from exc
            init_pid, sync = self._spawn_init(spec, prepared, state_dir, console, options)
            if console is not None:
                console.close()
            cs = st.ContainerState(
                id=container_id, pid=init_pid, pid_start_time=st.process_start_time(init_pid) or 0,
                bundle=spec.bundle, rootfs=spec.root.path,
                created=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z",
                cgroups_path=manager.path, annotations=spec.annotations, config=spec.raw,
                owner="root" if os.geteuid() == 0 else str(os.geteuid()))
            self._finish_create(spec, cs, sync, manager, resources, init_pid)
            cs.save(state_dir)
            if options.pid_file:
                st.write_atomic(os.path.abspath(options.pid_file), str(init_pid).encode(), 0o644)
        except BaseException:
            if init_pid:
                _kill_and_reap(init_pid)
            if manager is not None:
                try:
                    manager.remove()
                except (OSError, errdefs.DockyardError):
                    pass
            st.remove_state_dir(state_dir)
            raise
        finally:
            holder = self._holders.pop(init_pid, None)
            if holder is not None:
                holder.close()
        return init_pid, warnings

    def _finish_create(self, spec: Spec, cs: st.ContainerState, sync: Sync, manager,
                       resources, init_pid: int) -> None:
        try:
            manager.apply(init_pid)
            manager.set(resources)
            sync.send("go")
            if _has_runtime_hooks(spec):
                from dockyard.runtime.hooks import run_hooks

                sync.expect("hooks")
                hook_state = {"ociVersion": OCI_VERSION, "id": cs.id, "status": "creating",
                              "pid": init_pid, "bundle": cs.bundle,
                              "annotations": cs.annotations}
                run_hooks("prestart", spec.hooks, hook_state)
                run_hooks("createRuntime", spec.hooks, hook_state)
                sync.send("hooks-done")
            sync.expect("ready")
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.ECONNRESET):
                raise errdefs.FailedPrecondition(
                    f"container init for {cs.id} exited during setup") from exc
            raise
        finally:
            sync.close()

    def _spawn_init(self, spec: Spec, prepared: Prepared, state_dir: str,
                    console: socket.socket | None, options: CreateOptions) -> tuple[int, Sync]:
        """Fork the init, in the right pid namespace; returns (pid, sync).

        A new pid namespace applies to the children of whoever makes it, so
        we make it (or join it) "for children", fork, and go back to our own:
        the init is our direct child. With a new user namespace the pid
        namespace must be owned by it, and only a process inside the user
        namespace can make such a one: see `_UserNamespaceHolder`.
        """
        from dockyard.linux import syscalls as sc
        from dockyard.runtime.init import Sync, container_init
        from dockyard.runtime.linux import namespaces

        cgwarm.wait()
        linux = spec.linux
        user_ns = linux.namespace("user")
        pid_ns = linux.namespace("pid")
        ns_fds = namespaces.open_namespace_paths(
            linux, tuple(k for k in namespaces.JOIN_ORDER if k not in ("user", "pid")))
        parent_sync, child_sync = Sync.pair()
        if user_ns and not user_ns.path:
            try:
                holder = _UserNamespaceHolder(spec, prepared, state_dir, console, options,
                                              child_sync, ns_fds)
            finally:
                for _, fd in ns_fds:
                    os.close(fd)
                child_sync.close()
            self._holders[holder.init_pid] = holder
            return holder.init_pid, parent_sync
        own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        user_fd = None
        try:
            if user_ns:
                user_fd = os.open(user_ns.path, os.O_RDONLY | os.O_CLOEXEC)
            if pid_ns and pid_ns.path:
                fd = os.open(pid_ns.path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    namespaces.join("pid", fd)
                finally:
                    os.close(fd)
            elif pid_ns:
                namespaces.unshare(sc.CLONE_NEWPID)
            # Not dumpable from the first instant (see init.container_init).
            sc.prctl(sc.PR_SET_DUMPABLE, 0)
            pid = os.fork()
            if pid == 0:
                parent_sync.close()
                _redirect_stdio(options)
                container_init(spec, child_sync, prepared, state_dir=state_dir,
                               user_ns_fd=user_fd, ns_fds=ns_fds, console=console)
                os._exit(1)  # not reached
        finally:
            sc.prctl(sc.PR_SET_DUMPABLE, 1)
            # Back to our own pid namespace for any later child.
            sc.setns(own_pid_ns, sc.CLONE_NEWPID)
            os.close(own_pid_ns)
            if user_fd is not None:
                os.close(user_fd)
            for _, fd in ns_fds:
                os.close(fd)
            child_sync.close()
        return pid, parent_sync

    # -------------------------------------------------------------- start

    def start(self, container_id: str) -> None:
        cs = self.load(container_id)
        status = self.status(cs)
        if status != "created":
            raise errdefs.FailedPrecondition(f"cannot start a container that has {status}"
                                             if status == "stopped" else
                                             f"cannot start an already {status} container")
        fifo_path = os.path.join(self._dir(container_id), st.EXEC_FIFO)
        fd = os.open(fifo_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            data = _await_init_byte(fd, cs)
            if data and load_hooks(cs.config).get("poststart"):
                # EOF: the init closed its end at execve (see init.py).
                _await_init_byte(fd, cs)
        finally:
            os.close(fd)
        os.unlink(fifo_path)
        if not data:
            raise errdefs.FailedPrecondition(f"container {container_id}: init exited before start")
        spec_hooks = load_hooks(cs.config)
        if spec_hooks.get("poststart"):
            hook_state = self.state(container_id)
            for hook in spec_hooks["poststart"]:
                try:
                    from dockyard.runtime.hooks import run_hook
                    run_hook("poststart", hook, hook_state)
                except errdefs.DockyardError as exc:
                    _warn(f"poststart hook failed: {exc}")

    # --------------------------------------------------------------- kill

    def kill(self, container_id: str, sig: int = signal.SIGTERM, *, all_processes: bool = False) -> None:
        cs = self.load(container_id)
        status = self.status(cs)
        if status == "stopped" and not all_processes:
            raise errdefs.FailedPrecondition("container not running")
        if all_processes:
            self.cgroup(cs).kill_all(sig)
            return
        _signal_pid(cs, sig)

    # ------------------------------------------------------------- delete

    def delete(self, container_id: str, *, force: bool = False) -> None:
        state_dir = self._dir(container_id)
        try:
            cs = self.load(container_id)
        except errdefs.NotFound:
            raise
        except errdefs.FailedPrecondition:
            if not force:
                raise
            st.remove_state_dir(state_dir)
            return
        status = self.status(cs)
        if status in ("running", "paused") and not force:
            raise errdefs.FailedPrecondition(
                f"cannot delete container {container_id} that is not stopped: {status}")
        manager = self.cgroup(cs)
        if status != "stopped":
            if status == "paused":
                manager.thaw()
            _signal_pid(cs, signal.SIGKILL)
            _wait_gone(cs.pid, cs.pid_start_time)
        # Whatever else the init left in the cgroup (exec'd processes, when
        # the container shares no pid namespace) goes too.
        try:
            if manager.exists() and manager.pids():
                manager.kill_all(signal.SIGKILL)
                deadline = time.monotonic() + 5
                while manager.pids() and time.monotonic() < deadline:
                    time.sleep(0.01)
            manager.remove()
        except (OSError, errdefs.DockyardError) as exc:
            _warn(f"removing cgroup of {container_id}: {exc}")
        hooks = load_hooks(cs.config)
        if hooks.get("poststop"):
            hook_state = {"ociVersion": OCI_VERSION, "id": cs.id, "status": "stopped",
                          "pid": 0, "bundle": cs.bundle, "annotations": cs.annotations}
            for hook in hooks["poststop"]:
                try:
                    from dockyard.runtime.hooks import run_hook
                    run_hook("poststop", hook, hook_state)
                except errdefs.DockyardError as exc:
                    _warn(f"poststop hook failed: {exc}")
        st.remove_state_dir(state_dir)

    # ----------------------------------------------------- pause / resume

    def pause(self, container_id: str) -> None:
        cs = self.load(container_id)
        status = self.status(cs)
        if status not in ("running", "created"):
            raise errdefs.FailedPrecondition(f"container not running: {status}")
        self.cgroup(cs).freeze()

    def resume(self, container_id: str) -> None:
        cs = self.load(container_id)
        if self.status(cs) != "paused":
            raise errdefs.FailedPrecondition("container not paused")
        self.cgroup(cs).thaw()

    def pids(self, container_id: str) -> list[int]:
        cs = self.load(container_id)
        return sorted(self.cgroup(cs).pids())

    def stats(self, container_id: str) -> dict:
        cs = self.load(container_id)
        if self.status(cs) == "stopped":
            raise errdefs.FailedPrecondition("container not running")
        return {"type": "stats", "id": container_id, "data": self.cgroup(cs).stats()}


class _UserNamespaceHolder:
    """The init's parent when the container has a new user namespace.

    It unshares the user namespace (we write its ID maps), then the pid
    namespace, which is therefore owned by the user namespace (mounting
    proc needs that), and forks the init as PID 1 of it. It stays until
    create is over, so the init's parent-death signal keeps covering a
    runtime that dies mid-create; then it exits and the init re-parents to
    the nearest subreaper (the shim, or `run`, or the caller), as with runc.
    """

    def __init__(self, spec: Spec, prepared: Prepared, state_dir: str,
                 console: socket.socket | None, options: CreateOptions, init_sync: Sync,
                 ns_fds: list[tuple[str, int]]) -> None:
        from dockyard.linux import syscalls as sc
        from dockyard.runtime.init import Sync
        from dockyard.runtime.linux import namespaces

        linux = spec.linux
        pid_ns = linux.namespace("pid")
        pid_path_fd = (os.open(pid_ns.path, os.O_RDONLY | os.O_CLOEXEC)
                       if pid_ns and pid_ns.path else None)
        parent, child = Sync.pair()
        sc.prctl(sc.PR_SET_DUMPABLE, 0)
        try:
            self.pid = os.fork()
        finally:
            if self.pid != 0:
                sc.prctl(sc.PR_SET_DUMPABLE, 1)
        if self.pid == 0:
            parent.close()
            self._run_holder(spec, prepared, state_dir, console, options, init_sync, ns_fds,
                             child, pid_path_fd)
        child.close()
        if pid_path_fd is not None:
            os.close(pid_path_fd)
        self._sync = parent
        try:
            parent.expect("unshared")
            namespaces.write_id_mappings(self.pid, linux.uid_mappings, linux.gid_mappings)
            parent.send("mapped")
            self.init_pid = int(parent.expect("init")["pid"])
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _run_holder(spec, prepared, state_dir, console, options, init_sync, ns_fds, sync,
                    pid_path_fd) -> None:
        from dockyard.linux import syscalls as sc
        from dockyard.runtime.init import container_init
        from dockyard.runtime.linux import namespaces

        try:
            sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
            if pid_path_fd is not None:
                # Joined "for children" before leaving the host user namespace,
                # which owns that pid namespace.
                namespaces.join("pid", pid_path_fd)
            sc.unshare(sc.CLONE_NEWUSER)
            sync.send("unshared")
            sync.expect("mapped")
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
            if pid_path_fd is None and spec.linux.namespace("pid"):
                sc.unshare(sc.CLONE_NEWPID)
            init = os.fork()
            if init == 0:
                sync.close()
                _redirect_stdio(options)
                container_init(spec, init_sync, prepared, state_dir=state_dir,
                               user_ns_fd=None, ns_fds=ns_fds, console=console)
                os._exit(1)  # not reached
            sync.send("init", pid=init)
            sync.recv()  # until the runtime closes its end: create is over
        except BaseException as exc:  # noqa: BLE001 - the child must never unwind
            try:
                sync.send("error", message=f"user namespace: {exc}")
            except OSError:
                pass
        os._exit(0)

    def close(self) -> None:
        self._sync.close()
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


def _redirect_stdio(options: CreateOptions) -> None:
    for fd, target in ((options.stdin, 0), (options.stdout, 1), (options.stderr, 2)):
        if fd is not None and fd != target:
            os.dup2(fd, target)


def _await_init_byte(fd: int, cs: st.ContainerState) -> bytes:
    """Read the init's byte from the exec fifo; give up if the init dies.

    Our non-blocking read end lets the init's blocking open for writing
    complete; poll reports nothing until it has written (no POLLHUP for a
    writer that never came), so the init's liveness is checked meanwhile.
    """
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while True:
        if poller.poll(50):
            try:
                return os.read(fd, 1)
            except BlockingIOError:
                continue
        if st.process_start_time(cs.pid) != cs.pid_start_time:
            return b""


def _kill_and_reap(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _signal_pid(cs: st.ContainerState, sig: int) -> None:
    """Signal the init through a pidfd, so a recycled pid is never hit."""
    try:
        pidfd = os.pidfd_open(cs.pid)
    except OSError as exc:
        if exc.errno == errno.ESRCH:
            raise errdefs.FailedPrecondition("container not running") from None
        raise
    try:
        if st.process_start_time(cs.pid) != cs.pid_start_time:
            raise errdefs.FailedPrecondition("container not running")
        signal.pidfd_send_signal(pidfd, sig)
    finally:
        os.close(pidfd)


def _wait_gone(pid: int, start_time: int, timeout: float = 10.0) -> None:
    """Wait for the process (pid, start_time) to exit, reaping it if it is our child.

    A pidfd turns readable when its process exits, child or not: no polling
    of /proc in a sleep loop (whose first nap alone cost `delete --force` 5 ms).
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        # Checked after pidfd_open, so the pidfd is the process we killed.
        if st.process_start_time(pid) == start_time:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            if not poller.poll(int(timeout * 1000)):
                raise errdefs.FailedPrecondition(f"process {pid} did not exit after SIGKILL")
    finally:
        os.close(pidfd)
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _has_runtime_hooks(spec: Spec) -> bool:
    """Whether the runtime runs hooks mid-create (else the init skips that round trip)."""
    return bool(spec.hooks.get("prestart") or spec.hooks.get("createRuntime"))


def load_hooks(config: dict) -> dict:
    from dockyard.runtime.spec import _parse_hooks
    return _parse_hooks(config.get("hooks"))


def _warn(message: str) -> None:
    os.write(2, fastjson.dumps({"level": "warning", "msg": message}).encode() + b"\n")
