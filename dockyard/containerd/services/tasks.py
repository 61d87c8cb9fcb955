"""containerd.services.tasks.v1.Tasks over dockyard's TaskManager (context.tasks).

Only conversion lives here: protobuf in, TaskManager call, protobuf out.
"""

from __future__ import annotations

import json

import grpc
from google.protobuf import any_pb2, empty_pb2, timestamp_pb2

from dockyard import errdefs
from dockyard.containerd.api.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from dockyard.containerd.api.types import metrics_pb2
from dockyard.containerd.api.types.task import task_pb2
from dockyard.containerd.grpcerrors import namespace_of, rpc
from dockyard.image.core import Mount

_STATUS = {"created": task_pb2.CREATED, "running": task_pb2.RUNNING,
           "stopped": task_pb2.STOPPED, "paused": task_pb2.PAUSED,
           "pausing": task_pb2.PAUSING}
CGROUPS_V2_METRICS = "io.containerd.cgroups.v2.Metrics"


def _timestamp(nanos: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(nanos or 0))
    return stamp


def _process(state: dict, container_id: str) -> task_pb2.Process:
    return task_pb2.Process(
        container_id=container_id, id=state.get("exec_id") or container_id,
        pid=int(state.get("pid") or 0), status=_STATUS.get(state.get("status"), task_pb2.UNKNOWN),
        stdin=state.get("stdin", ""), stdout=state.get("stdout", ""),
        stderr=state.get("stderr", ""), terminal=bool(state.get("terminal")),
        exit_status=int(state.get("exit_status") or 0),
        exited_at=_timestamp(state.get("exited_at") or 0))


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _message(fields: list[tuple[int, int]]) -> bytes:
    return b"".join(_varint(number << 3) + _varint(value) for number, value in fields if value)


def _submessage(number: int, body: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(body)) + body


def encode_v2_metrics(data: dict) -> bytes:
    """A minimal io.containerd.cgroups.v2.Metrics: pids (1), cpu (2), memory (4),
    encoded by field number (containerd/cgroups v2 stats.proto)."""
    pids = data.get("pids") or {}
    cpu = data.get("cpu") or {}
    usage = cpu.get("usage") or {}
    memory = data.get("memory") or {}
    body = _submessage(1, _message([(1, int(pids.get("current") or 0)),
                                    (2, int(pids.get("limit") or 0))]))
    body += _submessage(2, _message([
        (1, int(cpu.get("usage_usec") or (usage.get("total") or 0) // 1000)),
        (2, int(cpu.get("user_usec") or (usage.get("user") or 0) // 1000)),
        (3, int(cpu.get("system_usec") or (usage.get("kernel") or 0) // 1000))]))
    mem_usage = memory.get("usage")
    if isinstance(mem_usage, dict):
        mem_usage = mem_usage.get("usage")
    body += _submessage(4, _message([(31, int(mem_usage or 0))]))
    return body


class TasksService(tasks_pb2_grpc.TasksServicer):
    def __init__(self, context) -> None:
        self.ctx = context

    @property
    def tasks(self):
        if self.ctx.tasks is None:
            raise errdefs.Unavailable("the task manager failed to start; see the daemon log")
        return self.ctx.tasks

    @rpc
    async def Create(self, request, context):  # noqa: N802
        ns = namespace_of(context)
        if not request.container_id:
            raise errdefs.InvalidArgument("container id must not be empty")
        if request.HasField("checkpoint") and request.checkpoint.digest:
            raise errdefs.NotImplementedFeature("restoring a task from a checkpoint is not "
                                                "supported by dockyard-containerd")
        rootfs = [Mount(type=m.type, source=m.source, options=tuple(m.options), target=m.target)
                  for m in request.rootfs]
        task = await self.tasks.create(
            ns, request.container_id, rootfs=rootfs, stdin=request.stdin,
            stdout=request.stdout, stderr=request.stderr, terminal=request.terminal,
            options=request.options.value if request.HasField("options") else None,
            runtime_path=request.runtime_path)
        return tasks_pb2.CreateTaskResponse(container_id=request.container_id, pid=task.pid)

    @rpc
    async def Start(self, request, context):  # noqa: N802
        ns = namespace_of(context)
        pid = await self.tasks.start(ns, request.container_id, request.exec_id)
        return tasks_pb2.StartResponse(pid=pid)

    @rpc
    async def Delete(self, request, context):  # noqa: N802
        ns = namespace_of(context)
        result = await self.tasks.delete(ns, request.container_id)
        return tasks_pb2.DeleteResponse(
            id=request.container_id, pid=int(result.get("pid") or 0),
            exit_status=int(result.get("exit_status") or 0),
            exited_at=_timestamp(result.get("exited_at") or 0))

    @rpc
    async def DeleteProcess(self, request, context):  # noqa: N802
        ns = namespace_of(context)
        if not request.exec_id:
            raise errdefs.InvalidArgument("exec id must not be empty")
        result = await self.tasks.delete(ns, request.container_id, request.exec_id)
        return tasks_pb2.DeleteResponse(
            id=request.exec_id, pid=int(result.get("pid") or 0),
            exit_status=int(result.get("exit_status") or 0),
            exited_at=_timestamp(result.get("exited_at") or 0))

    @rpc
    async def Get(self, request, context):  # noqa: N802
        ns = namespace_of(context)
        state = await self.tasks.state(ns, request.container_id, request.exec_id)
        return tasks_pb2.GetResponse(process=_process(state, request.container_id))

    @rpc
    async def List(self, request, context):  # noqa: N802
        ns = namespace_of(context)
        out = []
        for task in self.tasks.list(ns):
            try:
                state = await self.tasks.state(ns, task.id)
            except errdefs.NotFound:
                continue
            out.append(_process(state, task.id))
        return tasks_pb2.ListTasksResponse(tasks=out)

    @rpc
    async def Kill(self, request, context):  # noqa: N802
        ns = namespace_of(context)
        await self.tasks.kill(ns, request.container_id, request.signal, request.exec_id,
                              request.all)
        return empty_pb2.Empty()

    @rpc
    async def Exec(self, request, context):  # noqa: N802
        ns = namespace_of(context)
        if not request.exec_id:
            raise errdefs.InvalidArgument("exec id must not be empty")
        try:
            process = json.loads(request.spec.value)
        except ValueError as exc:
            raise errdefs.InvalidArgument(f"exec {request.exec_id}: process spec is not "
                                          "valid JSON") from exc
        await self.tasks.exec(ns, request.container_id, request.exec_id, process,
                              stdin=request.stdin, stdout=request.stdout,
                              stderr=request.stderr, terminal=request.terminal)
        return empty_pb2.Empty()

    @rpc
    async def ResizePty(self, request, context):  # noqa: N802
        ns = namespace_of(context)
        await self.tasks.simple(ns, request.container_id, "resize", exec_id=request.exec_id,
                                width=request.width, height=request.height)
        return empty_pb2.Empty()

    @rpc
    async def CloseIO(self, request, context):  # noqa: N802
        ns = namespace_of(context)
        if request.stdin:
            await self.tasks.simple(ns, request.container_id, "close_io",
                                    exec_id=request.exec_id)
        return empty_pb2.Empty()

    @rpc
    async def Pause(self, request, context):  # noqa: N802
        await self.tasks.pause(namespace_of(context), request.container_id)
        return empty_pb2.Empty()

    @rpc
    async def Resume(self, request, context):  # noqa: N802
        await self.tasks.resume(namespace_of(context), request.container_id)
        return empty_pb2.Empty()

    @rpc
    async def ListPids(self, request, context):  # noqa: N802
        ns = namespace_of(context)
        pids = await self.tasks.simple(ns, request.container_id, "pids")
        # containerd's runc shim reports the exec id in a ProcessDetails Any; the
        # pid alone is what `ctr tasks ps` needs.
        return tasks_pb2.ListPidsResponse(processes=[
            task_pb2.ProcessInfo(pid=int(p["pid"])) for p in pids])

    @rpc
    async def Checkpoint(self, request, context):  # noqa: N802
        raise errdefs.NotImplementedFeature(
            "checkpoint is not supported by dockyard-containerd (no CRIU integration)")

    @rpc
    async def Update(self, request, context):  # noqa: N802
        ns = namespace_of(context)
        resources = {}
        if request.HasField("resources") and request.resources.value:
            try:
                resources = json.loads(request.resources.value)
            except ValueError as exc:
                raise errdefs.InvalidArgument("update: resources must be an OCI "
                                              "LinuxResources JSON document") from exc
        await self.tasks.simple(ns, request.container_id, "update", resources=resources)
        return empty_pb2.Empty()

    @rpc
    async def Metrics(self, request, context):  # noqa: N802
        ns = namespace_of(context)
        wanted = set()
        for text in request.filters:
            for clause in text.split(","):
                key, _, value = clause.partition("==")
                if key.strip() in ("id", "container_id"):
                    wanted.add(value.strip().strip('"'))
        out = []
        for task in self.tasks.list(ns):
            if wanted and task.id not in wanted:
                continue
            try:
                stats = await self.tasks.simple(ns, task.id, "stats")
            except errdefs.DockyardError:
                continue
            data = any_pb2.Any(type_url=CGROUPS_V2_METRICS,
                               value=encode_v2_metrics((stats or {}).get("data") or {}))
            stamp = timestamp_pb2.Timestamp()
            stamp.GetCurrentTime()
            out.append(metrics_pb2.Metric(timestamp=stamp, id=task.id, data=data))
        return tasks_pb2.MetricsResponse(metrics=out)

    @rpc
    async def Wait(self, request, context):  # noqa: N802
        ns = namespace_of(context)
        result = await self.tasks.wait(ns, request.container_id, request.exec_id)
        return tasks_pb2.WaitResponse(exit_status=int(result.get("exit_status") or 0),
                                      exited_at=_timestamp(result.get("exited_at") or 0))


def register(server: grpc.aio.Server, context) -> None:
    tasks_pb2_grpc.add_TasksServicer_to_server(TasksService(context), server)
