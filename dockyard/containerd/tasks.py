"""TaskManager: containerd tasks on dockyard shims, one shim per container.

Per task, under <state>/io.containerd.runtime.v2.task/<namespace>/<id>/ (the
bundle, and the shim's state dir): config.json, rootfs/ (the task's rootfs
mounts), task.json (what the daemon needs to find the shim again, written
atomically), exits/ (the shim's exit records), shim.log. Shim sockets live
in <state>/s/<hash>.sock (unix socket paths are short).

The local layer raises errdefs kinds and publishes containerd's task events;
services/tasks.py only converts protobuf. A restart (`start`) reconnects to
every shim still alive; a task whose shim is gone is reported stopped with
the exit status the shim recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
from dataclasses import dataclass, field

from dockyard import errdefs
from dockyard.shim.client import AsyncShimClient, ShimConfig, launch_async, read_exit

log = logging.getLogger(__name__)

TASK_DIR = "io.containerd.runtime.v2.task"
BUILTIN_RUNTIMES = ("", "io.containerd.runc.v2", "io.containerd.runc.v1", "io.containerd.runtime.v1.linux",
                    "dockyard", "io.dockyard.v1")
SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"


def write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def _proto_string_field(data: bytes, number: int) -> str:
    """A string field of an encoded protobuf message (runc's Options.binary_name)
    read without its schema: the runtime options type is not ours to compile."""
    i = 0
    found = ""

    def varint() -> int:
        nonlocal i
        shift = value = 0
        while True:
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7

    try:
        while i < len(data):
            key = varint()
            wire_type, field_number = key & 7, key >> 3
            if wire_type == 0:
                varint()
            elif wire_type == 1:
                i += 8
            elif wire_type == 5:
                i += 4
            elif wire_type == 2:
                length = varint()
                chunk = data[i:i + length]
                i += length
                if field_number == number:
                    found = chunk.decode()
            else:
                break
    except (IndexError, UnicodeDecodeError):
        pass
    return found


RUNC_OPTIONS_BINARY_NAME = 6


def select_runtime(runtime_name: str, options: bytes | None, runtime_path: str = "") -> str:
    """"builtin" (dockyard's runtime, in the shim's worker) or an OCI runtime binary path."""
    binary = runtime_path or (_proto_string_field(options, RUNC_OPTIONS_BINARY_NAME)
                              if options else "")
    if not binary and runtime_name.startswith("/"):
        binary = runtime_name
    if binary:
        if not os.path.isabs(binary):
            found = shutil.which(binary)
            if not found:
                raise errdefs.InvalidArgument(f"runtime binary {binary!r} not found in PATH")
            binary = found
        if not os.access(binary, os.X_OK):
            raise errdefs.InvalidArgument(f"runtime binary {binary} is not executable")
        return binary
    if runtime_name not in BUILTIN_RUNTIMES:
        raise errdefs.NotFound(f"runtime {runtime_name!r}: no such runtime; use "
                               "io.containerd.runc.v2 or an OCI runtime binary path")
    return "builtin"


@dataclass
class Task:
    namespace: str
    id: str
    bundle: str
    address: str
    runtime: str
    shim_pid: int = 0
    pid: int = 0
    rootfs_mounted: bool = False
    client: AsyncShimClient | None = None
    watcher: asyncio.Task | None = None
    dead: bool = False  # the shim is gone
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def record(self) -> dict:
        return {"namespace": self.namespace, "id": self.id, "bundle": self.bundle,
                "address": self.address, "runtime": self.runtime, "shim_pid": self.shim_pid,
                "pid": self.pid, "rootfs_mounted": self.rootfs_mounted}

    def save(self) -> None:
        write_atomic(os.path.join(self.bundle, "task.json"), json.dumps(self.record()).encode())


class TaskManager:
    def __init__(self, context) -> None:
        self.context = context
        self.state_dir = str(context.state)
        self.tasks_root = os.path.join(self.state_dir, TASK_DIR)
        self.socket_dir = os.path.join(self.state_dir, "s")
        os.makedirs(self.tasks_root, mode=0o711, exist_ok=True)
        os.makedirs(self.socket_dir, mode=0o711, exist_ok=True)
        self.tasks: dict[tuple[str, str], Task] = {}
        self.spare_dir = os.path.join(self.state_dir, "spare")
        # One shim started ahead with its runtime worker warm: `ctr run` then
        # skips the shim start and the runtime imports (~130 ms of ~200).
        self.use_spare = os.environ.get("DOCKYARD_SHIM_SPARE", "1") != "0"
        self._spare: tuple[int, str, str] | None = None  # pid, address, dir
        self._spare_task: asyncio.Task | None = None
        self._warming: asyncio.Future | None = None

    # ------------------------------------------------------------- helpers

    def _publish(self, namespace: str, topic: str, message) -> None:
        try:
            self.context.events.publish(namespace, topic, message)
        except Exception:  # noqa: BLE001 - an event must never fail the operation
            log.exception("publishing %s", topic)

    def get(self, namespace: str, task_id: str) -> Task:
        task = self.tasks.get((namespace, task_id))
        if task is None:
            raise errdefs.NotFound(f"task {task_id}")
        return task

    def list(self, namespace: str) -> list[Task]:
        return [t for (ns, _), t in sorted(self.tasks.items()) if ns == namespace]

    async def _client(self, task: Task) -> AsyncShimClient:
        if task.dead:
            raise errdefs.NotFound(f"task {task.id}: shim is gone; delete the task")
        if task.client is None or task.client.closed:
            try:
                task.client = await AsyncShimClient(task.address).connect()
            except errdefs.Unavailable:
                task.dead = True
                raise
        return task.client

    async def call(self, task: Task, method: str, **params):
        client = await self._client(task)
        return await client.call(method, **params)

    # -------------------------------------------------------------- create

    async def create(self, namespace: str, task_id: str, *, rootfs: list, stdin: str,
                     stdout: str, stderr: str, terminal: bool, options: bytes | None,
                     runtime_path: str = "") -> Task:
        from dockyard.image.snapshots import mount as mountlib

        if (namespace, task_id) in self.tasks:
            raise errdefs.AlreadyExists(f"task {task_id}")
        container = self.context.metadata.get_container(namespace, task_id)
        if container.spec is None or not container.spec.value:
            raise errdefs.InvalidArgument(f"container {task_id}: has no OCI spec")
        try:
            spec = json.loads(container.spec.value)
        except ValueError as exc:
            raise errdefs.InvalidArgument(f"container {task_id}: spec is not valid JSON") from exc
        if not isinstance(spec, dict) or not isinstance(spec.get("process"), dict):
            raise errdefs.InvalidArgument(f"container {task_id}: spec has no process")
        runtime_options = options or (container.runtime_options.value
                                      if container.runtime_options else None)
        runtime = select_runtime(container.runtime_name, runtime_options, runtime_path)
        # The runtime will move the init into its cgroup in ~10-40 ms; start the
        # kernel's grace period for that now, off the loop (see cgwarm). One at
        # a time: concurrent creates share a grace period anyway.
        if self._warming is None or self._warming.done():
            from dockyard.runtime.linux import cgwarm
            self._warming = asyncio.get_running_loop().run_in_executor(None, cgwarm.warm_now)
        if not rootfs and container.snapshot_key:
            snapshotter = self.context.snapshotters.get_or_raise(container.snapshotter)
            rootfs = await asyncio.to_thread(snapshotter.mounts, container.snapshot_key)
        bundle = os.path.join(self.tasks_root, namespace, task_id)
        try:
            os.makedirs(os.path.dirname(bundle), mode=0o711, exist_ok=True)
            os.mkdir(bundle, 0o711)
        except FileExistsError:
            raise errdefs.AlreadyExists(f"task {task_id}: bundle {bundle} exists") from None
        digest = hashlib.sha256(f"{namespace}/{task_id}".encode()).hexdigest()[:32]
        task = Task(namespace=namespace, id=task_id, bundle=bundle, runtime=runtime,
                    address=os.path.join(self.socket_dir, f"{digest}.sock"))
        self.tasks[(namespace, task_id)] = task
        clock = asyncio.get_running_loop().time
        started = clock()
        phases: list[str] = []
        try:
            async with task.lock:
                root = spec.setdefault("root", {})
                root.setdefault("path", "rootfs")
                rootfs_dir = os.path.join(bundle, root["path"])
                os.makedirs(rootfs_dir, exist_ok=True)
                with open(os.path.join(bundle, "config.json"), "w") as f:
                    json.dump(spec, f)
                if rootfs:
                    await asyncio.to_thread(mountlib.mount_all, list(rootfs), rootfs_dir)
                    task.rootfs_mounted = True
                task.save()
                phases.append(f"bundle+mount {1000 * (clock() - started):.0f}")
                runtime_root = os.path.join(self.state_dir, "runtime", namespace)
                spare = await self._take_spare() if runtime == "builtin" else None
                if spare is not None and not await self._adopt(task, spare, runtime_root):
                    spare = None
                if spare is None:
                    task.shim_pid = await launch_async(ShimConfig(
                        namespace=namespace, id=task_id, bundle=bundle, state_dir=bundle,
                        address=task.address, runtime=runtime, runtime_root=runtime_root))
                    task.save()  # (_adopt saved an adopted spare's)
                phases.append(f"{'spare' if spare else 'new'} shim {1000 * (clock() - started):.0f}")
                result = await self.call(task, "create", stdin=stdin, stdout=stdout,
                                         stderr=stderr, terminal=terminal)
                task.pid = int(result["pid"])
                task.save()
                phases.append(f"runtime create {1000 * (clock() - started):.0f}")
                task.watcher = asyncio.create_task(self._watch(task))
        except BaseException:
            await self._cleanup(task, kill_shim=True)
            raise
        finally:
            if runtime == "builtin":
                # The next spare starts once this create's heavy part is over (it
                # would compete with it for the CPU), and no later.
                self._refill_spare()
        log.debug("task %s/%s create (ms since start): %s", namespace, task_id,
                  ", ".join(phases))
        from dockyard.containerd.api.events import task_pb2 as ev
        from dockyard.containerd.services.snapshots import mount_to_proto
        self._publish(namespace, "/tasks/create", ev.TaskCreate(
            container_id=task_id, bundle=bundle, pid=task.pid,
            rootfs=[mount_to_proto(m) if not hasattr(m, "SerializeToString") else m
                    for m in rootfs],
            io=ev.TaskIO(stdin=stdin, stdout=stdout, stderr=stderr, terminal=terminal)))
        return task

    async def _watch(self, task: Task) -> None:
        """Turn the shim's exit events into /tasks/exit."""
        from google.protobuf import timestamp_pb2

        from dockyard.containerd.api.events import task_pb2 as ev
        client = AsyncShimClient(task.address)
        try:
            await client.connect()
            queue = await client.subscribe()
            while (event := await queue.get()) is not None:
                if event.get("type") != "exit":
                    continue
                stamp = timestamp_pb2.Timestamp()
                stamp.FromNanoseconds(int(event.get("exited_at") or 0))
                self._publish(task.namespace, "/tasks/exit", ev.TaskExit(
                    container_id=task.id, id=event.get("exec_id") or task.id,
                    pid=int(event.get("pid") or 0), exit_status=int(event["exit_status"]),
                    exited_at=stamp))
        except (errdefs.DockyardError, OSError):
            pass
        finally:
            await client.close()

    async def _cleanup(self, task: Task, *, kill_shim: bool) -> None:
        from dockyard.image.snapshots import mount as mountlib

        if task.watcher is not None:
            task.watcher.cancel()
        if task.client is not None:
            with contextlib.suppress(Exception):
                if kill_shim and not task.dead:
                    await task.client.call("shutdown", force=True)
            await task.client.close()
            task.client = None
        # The shim holds nothing under the rootfs: it exits while we unmount.
        shim_gone = (asyncio.create_task(_wait_gone(task.shim_pid))
                     if kill_shim and task.shim_pid else None)
        try:
            rootfs_dir = os.path.join(task.bundle, "rootfs")
            if task.rootfs_mounted or os.path.ismount(rootfs_dir):
                await asyncio.to_thread(mountlib.unmount_all, rootfs_dir)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(task.address)
            shutil.rmtree(task.bundle, ignore_errors=True)
        finally:
            if shim_gone is not None:
                await shim_gone
        self.tasks.pop((task.namespace, task.id), None)

    # ----------------------------------------------------------- lifecycle

    async def start(self, namespace: str | None = None, task_id: str = "",
                    exec_id: str = "") -> int:
        if namespace is None:
            await self.restore()  # the daemon's start-up hook
            return 0
        from dockyard.containerd.api.events import task_pb2 as ev
        task = self.get(namespace, task_id)
        result = await self.call(task, "start", exec_id=exec_id)
        pid = int(result["pid"])
        if exec_id:
            self._publish(namespace, "/tasks/exec-started", ev.TaskExecStarted(
                container_id=task_id, exec_id=exec_id, pid=pid))
        else:
            self._publish(namespace, "/tasks/start", ev.TaskStart(container_id=task_id, pid=pid))
        return pid

    async def delete(self, namespace: str, task_id: str, exec_id: str = "") -> dict:
        from google.protobuf import timestamp_pb2

        from dockyard.containerd.api.events import task_pb2 as ev
        task = self.get(namespace, task_id)
        clock = asyncio.get_running_loop().time
        started = clock()
        async with task.lock:
            if task.dead:
                result = self._dead_state(task)
                if not exec_id:
                    await asyncio.to_thread(_force_runtime_delete, task, self.state_dir)
            else:
                result = await self.call(task, "delete", exec_id=exec_id)
            deleted = clock()
            if not exec_id:
                await self._cleanup(task, kill_shim=True)
        log.debug("task %s/%s delete %s: runtime %.0f ms, cleanup %.0f ms", namespace, task_id,
                  exec_id, 1000 * (deleted - started), 1000 * (clock() - deleted))
        stamp = timestamp_pb2.Timestamp()
        stamp.FromNanoseconds(int(result.get("exited_at") or 0))
        self._publish(namespace, "/tasks/delete", ev.TaskDelete(
            container_id=task_id, pid=int(result.get("pid") or 0),
            exit_status=int(result.get("exit_status") or 0), exited_at=stamp,
            id=exec_id or task_id))
        return result

    def _dead_state(self, task: Task) -> dict:
        record = read_exit(task.bundle) or {}
        return {"id": task.id, "exec_id": "", "pid": task.pid, "status": "stopped",
                "exit_status": int(record.get("exit_status", 255)),
                "exited_at": int(record.get("exited_at") or 0), "stdin": "", "stdout": "",
                "stderr": "", "terminal": False}

    async def state(self, namespace: str, task_id: str, exec_id: str = "") -> dict:
        task = self.get(namespace, task_id)
        if task.dead:
            if exec_id:
                raise errdefs.NotFound(f"process {exec_id} in task {task_id}")
            return self._dead_state(task)
        try:
            return await self.call(task, "state", exec_id=exec_id)
        except errdefs.Unavailable:
            return self._dead_state(task)

    async def kill(self, namespace: str, task_id: str, sig: int, exec_id: str = "",
                   all_processes: bool = False) -> None:
        task = self.get(namespace, task_id)
        await self.call(task, "kill", exec_id=exec_id, signal=sig or signal.SIGTERM,
                        all=all_processes)

    async def exec(self, namespace: str, task_id: str, exec_id: str, process: dict, *,
                   stdin: str, stdout: str, stderr: str, terminal: bool) -> None:
        from dockyard.containerd.api.events import task_pb2 as ev
        task = self.get(namespace, task_id)
        await self.call(task, "exec", exec_id=exec_id, process=process, stdin=stdin,
                        stdout=stdout, stderr=stderr, terminal=terminal)
        self._publish(namespace, "/tasks/exec-added", ev.TaskExecAdded(
            container_id=task_id, exec_id=exec_id))

    async def wait(self, namespace: str, task_id: str, exec_id: str = "") -> dict:
        task = self.get(namespace, task_id)
        if task.dead:
            return self._dead_state(task)
        # Its own connection: a long wait must not hold up other calls' replies.
        client = await AsyncShimClient(task.address).connect()
        try:
            return await client.call("wait", exec_id=exec_id)
        finally:
            await client.close()

    async def pause(self, namespace: str, task_id: str) -> None:
        from dockyard.containerd.api.events import task_pb2 as ev
        await self.call(self.get(namespace, task_id), "pause")
        self._publish(namespace, "/tasks/paused", ev.TaskPaused(container_id=task_id))

    async def resume(self, namespace: str, task_id: str) -> None:
        from dockyard.containerd.api.events import task_pb2 as ev
        await self.call(self.get(namespace, task_id), "resume")
        self._publish(namespace, "/tasks/resumed", ev.TaskResumed(container_id=task_id))

    async def simple(self, namespace: str, task_id: str, method: str, **params):
        """pids, stats, resize, close_io, update: straight to the shim."""
        return await self.call(self.get(namespace, task_id), method, **params)

    # ----------------------------------------------------------- spare shim

    async def _adopt(self, task: Task, spare: tuple[int, str, str], runtime_root: str) -> bool:
        """Make the spare shim this task's; False (and the spare dropped) if it is gone."""
        pid, address, spare_dir = spare
        try:
            client = await AsyncShimClient(address).connect()
            await client.call("adopt", namespace=task.namespace, id=task.id,
                              bundle=task.bundle, state_dir=task.bundle,
                              runtime_root=runtime_root)
        except errdefs.DockyardError as exc:
            log.warning("spare shim %s unusable (%s); starting a new one", pid, exc)
            shutil.rmtree(spare_dir, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(address)
            return False
        task.client, task.shim_pid, task.address = client, pid, address
        task.save()
        shutil.rmtree(spare_dir, ignore_errors=True)
        return True

    async def _take_spare(self) -> tuple[int, str, str] | None:
        if self._spare is None and self._spare_task is not None \
                and not self._spare_task.done():
            # One already on its way is nearer to ready than a shim started now.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._spare_task)
        spare, self._spare = self._spare, None
        return spare

    def _refill_spare(self) -> None:
        if not self.use_spare or self._spare is not None or (
                self._spare_task is not None and not self._spare_task.done()):
            return
        self._spare_task = asyncio.create_task(self._launch_spare())

    async def _launch_spare(self) -> None:
        import uuid
        name = uuid.uuid4().hex[:16]
        directory = os.path.join(self.spare_dir, name)
        os.makedirs(directory, mode=0o711, exist_ok=True)
        address = os.path.join(self.socket_dir, f"spare-{name}.sock")
        try:
            pid = await launch_async(ShimConfig(
                namespace="-", id=f"spare-{name}", bundle=directory, state_dir=directory,
                address=address, runtime="builtin",
                runtime_root=os.path.join(self.state_dir, "runtime", "-")))
        except errdefs.DockyardError as exc:
            log.warning("spare shim: %s", exc)
            shutil.rmtree(directory, ignore_errors=True)
            return
        self._spare = (pid, address, directory)

    async def _drop_spares(self) -> None:
        """Shut down spare shims (ours, or a previous daemon's)."""
        if self._spare_task is not None:
            with contextlib.suppress(BaseException):
                await self._spare_task
        self._spare = None
        try:
            names = os.listdir(self.spare_dir)
        except FileNotFoundError:
            return
        for name in names:
            directory = os.path.join(self.spare_dir, name)
            try:
                with open(os.path.join(directory, "shim.json"), "rb") as f:
                    record = json.load(f)
                client = await AsyncShimClient(record["address"]).connect()
                try:
                    await client.call("shutdown", force=True)
                finally:
                    await client.close()
                await _wait_gone(int(record["pid"]))
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(record["address"])
            except (OSError, ValueError, KeyError, errdefs.DockyardError):
                pass
            shutil.rmtree(directory, ignore_errors=True)

    # -------------------------------------------------------------- restart

    async def restore(self) -> None:
        """Find every task's shim again; the dead ones are kept, stopped."""
        await self._drop_spares()
        self._refill_spare()
        try:
            namespaces = sorted(os.listdir(self.tasks_root))
        except FileNotFoundError:
            return
        for namespace in namespaces:
            ns_dir = os.path.join(self.tasks_root, namespace)
            for task_id in sorted(os.listdir(ns_dir)):
                bundle = os.path.join(ns_dir, task_id)
                try:
                    with open(os.path.join(bundle, "task.json"), "rb") as f:
                        record = json.load(f)
                except (FileNotFoundError, ValueError):
                    log.warning("task dir %s has no task record; removing it", bundle)
                    await self._cleanup(Task(namespace, task_id, bundle, "", ""),
                                        kill_shim=False)
                    continue
                task = Task(namespace=namespace, id=task_id, bundle=bundle,
                            address=record["address"], runtime=record["runtime"],
                            shim_pid=record.get("shim_pid", 0), pid=record.get("pid", 0),
                            rootfs_mounted=record.get("rootfs_mounted", False))
                self.tasks[(namespace, task_id)] = task
                try:
                    await self._client(task)
                    task.watcher = asyncio.create_task(self._watch(task))
                except errdefs.Unavailable:
                    log.info("task %s/%s: shim gone, reported stopped", namespace, task_id)

    async def close(self) -> None:
        """Daemon shutdown: drop connections; shims and containers keep running."""
        await self._drop_spares()
        for task in list(self.tasks.values()):
            if task.watcher is not None:
                task.watcher.cancel()
            if task.client is not None:
                await task.client.close()
                task.client = None


def _force_runtime_delete(task: Task, state: str) -> None:
    """The shim is gone: remove the container's runtime state ourselves."""
    root = os.path.join(state, "runtime", task.namespace)
    try:
        if task.runtime == "builtin":
            from dockyard.runtime.container import Runtime
            Runtime(root).delete(task.id, force=True)
        else:
            import subprocess
            subprocess.run([task.runtime, "--root", root, "delete", "--force", task.id],
                           capture_output=True, timeout=30)
    except (errdefs.DockyardError, OSError) as exc:
        log.warning("runtime delete of %s: %s", task.id, exc)


async def _wait_gone(pid: int, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    await _pidfd_exited(pid, timeout)
    while loop.time() < deadline:
        try:
            # Our child only when we are its subreaper; reap it then.
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
        except ChildProcessError:
            if not os.path.exists(f"/proc/{pid}"):
                return
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                        return
            except OSError:
                return
        await asyncio.sleep(0.01)


async def _pidfd_exited(pid: int, timeout: float) -> None:
    """Wake when pid exits (a pidfd turns readable) rather than on the next poll tick."""
    try:
        pidfd = os.pidfd_open(pid)
    except (OSError, AttributeError):
        return  # gone already, or no pidfd: the caller's polling decides
    loop = asyncio.get_running_loop()
    exited = loop.create_future()
    loop.add_reader(pidfd, lambda: exited.done() or exited.set_result(None))
    try:
        await asyncio.wait_for(exited, timeout)
    except TimeoutError:
        pass
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
