"""ctr (containerd 1.6's own client) against dockyard-containerd and real containerd:
version, namespaces, containers, leases, events, plugins. Every test runs on both
backends; a difference in behaviour is a dockyard bug."""

from __future__ import annotations

import json
import os
import select
import threading
import time
import uuid

import grpc
import pytest
from google.protobuf import any_pb2, empty_pb2, field_mask_pb2

from dockyard.containerd.api.events import namespace_pb2 as ns_events
from dockyard.containerd.api.services.containers.v1 import containers_pb2, containers_pb2_grpc
from dockyard.containerd.api.services.events.v1 import events_pb2, events_pb2_grpc
from dockyard.containerd.api.services.introspection.v1 import (
    introspection_pb2,
    introspection_pb2_grpc,
)
from dockyard.containerd.api.services.leases.v1 import leases_pb2, leases_pb2_grpc
from dockyard.containerd.api.services.namespaces.v1 import namespace_pb2, namespace_pb2_grpc

pytestmark = [pytest.mark.compat, pytest.mark.integration, pytest.mark.requires_root]

SPEC_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
RUNTIME = "io.containerd.runc.v2"


def unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def md(ns: str) -> tuple[tuple[str, str], ...]:
    return (("containerd-namespace", ns),)


def spec_any(**extra: object) -> any_pb2.Any:
    spec = {"ociVersion": "1.0.2", "process": {"args": ["true"], "cwd": "/"},
            "root": {"path": "rootfs"}, **extra}
    return any_pb2.Any(type_url=SPEC_URL, value=json.dumps(spec).encode())


def new_container(cid: str, **labels: str) -> containers_pb2.Container:
    c = containers_pb2.Container(id=cid, labels=labels, image="docker.io/library/busybox:latest",
                                 spec=spec_any())
    c.runtime.name = RUNTIME
    return c


@pytest.fixture
def ns(backend):  # noqa: ANN001, ANN201
    """A fresh namespace name; removed (with its containers) afterwards."""
    name = unique("dyt-ns")
    yield name
    r = backend.ctr("containers", "ls", "-q", ns=name)
    for cid in r.stdout.split():
        backend.ctr("containers", "rm", cid, ns=name)
    backend.ctr("leases", "ls", "-q", ns=name)
    for lid in backend.ctr("leases", "ls", "-q", ns=name).stdout.split():
        backend.ctr("leases", "rm", lid, ns=name)
    backend.ctr("namespaces", "rm", name, ns=None)


@pytest.fixture
def channel(backend):  # noqa: ANN001, ANN201
    ch = backend.channel()
    yield ch
    ch.close()


# ---------------------------------------------------------------- version


def test_version(backend):  # noqa: ANN001
    r = backend.ctr("version", ns=None)
    assert r.returncode == 0, r.stderr
    server = r.stdout.split("Server:", 1)[1]
    assert "Version:" in server and "UUID:" in server
    uuid_line = [ln for ln in server.splitlines() if "UUID:" in ln][0]
    # the uuid is persisted: a second call reports the same one
    again = backend.ctr("version", ns=None).stdout.split("Server:", 1)[1]
    assert uuid_line in again


def test_introspection_server(backend, channel):  # noqa: ANN001
    stub = introspection_pb2_grpc.IntrospectionStub(channel)
    first = stub.Server(empty_pb2.Empty(), timeout=10)
    uuid.UUID(first.uuid)
    assert stub.Server(empty_pb2.Empty(), timeout=10).uuid == first.uuid
    plugins = stub.Plugins(introspection_pb2.PluginsRequest(
        filters=['type=="io.containerd.grpc.v1"']), timeout=10).plugins
    ids = {p.id for p in plugins}
    assert {"containers", "namespaces", "leases", "events", "introspection", "version"} <= ids
    assert all(p.type == "io.containerd.grpc.v1" for p in plugins)


def test_plugins_ls(backend):  # noqa: ANN001
    r = backend.ctr("plugins", "ls", ns=None)
    assert r.returncode == 0, r.stderr
    assert "io.containerd.grpc.v1" in r.stdout and "namespaces" in r.stdout
    r = backend.ctr("plugins", "ls", "id==leases", ns=None)
    assert r.returncode == 0, r.stderr
    rows = r.stdout.splitlines()[1:]
    assert rows and all("leases" in row for row in rows)


# ------------------------------------------------------------- namespaces


def test_namespaces_create_ls_label_rm(backend, ns):  # noqa: ANN001
    assert backend.ctr("namespaces", "create", ns, "team=red", ns=None).returncode == 0
    r = backend.ctr("namespaces", "ls", ns=None)
    assert r.returncode == 0
    row = [ln for ln in r.stdout.splitlines() if ln.split()[:1] == [ns]]
    assert row and "team=red" in row[0]
    assert ns in backend.ctr("namespaces", "ls", "-q", ns=None).stdout.split()

    assert backend.ctr("namespaces", "label", ns, "tier=gold", ns=None).returncode == 0
    row = [ln for ln in backend.ctr("namespaces", "ls", ns=None).stdout.splitlines()
           if ln.split()[:1] == [ns]][0]
    assert "team=red" in row and "tier=gold" in row
    # an empty value removes the label
    assert backend.ctr("namespaces", "label", ns, "team=", ns=None).returncode == 0
    row = [ln for ln in backend.ctr("namespaces", "ls", ns=None).stdout.splitlines()
           if ln.split()[:1] == [ns]][0]
    assert "team" not in row and "tier=gold" in row

    r = backend.ctr("namespaces", "create", ns, ns=None)
    assert r.returncode != 0 and "already exists" in r.stderr

    r = backend.ctr("namespaces", "rm", ns, ns=None)
    assert r.returncode == 0 and r.stdout.split() == [ns]
    assert ns not in backend.ctr("namespaces", "ls", "-q", ns=None).stdout.split()


def test_namespace_grpc_edge_cases(backend, channel):  # noqa: ANN001
    stub = namespace_pb2_grpc.NamespacesStub(channel)
    missing = unique("dyt-missing")
    # containerd 1.6 answers Get of an unknown namespace with empty labels
    got = stub.Get(namespace_pb2.GetNamespaceRequest(name=missing), metadata=md("default"))
    assert got.namespace.name == missing and not got.namespace.labels
    with pytest.raises(grpc.RpcError) as err:
        stub.Delete(namespace_pb2.DeleteNamespaceRequest(name=missing), metadata=md("default"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert f'namespace "{missing}"' in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.Create(namespace_pb2.CreateNamespaceRequest(
            namespace=namespace_pb2.Namespace(name="Bad Name!")), metadata=md("default"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert 'identifier "Bad Name!" must match' in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.Update(namespace_pb2.UpdateNamespaceRequest(
            namespace=namespace_pb2.Namespace(name=missing, labels={"a": "b"}),
            update_mask=field_mask_pb2.FieldMask(paths=["labels"])), metadata=md("default"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # setting labels on an unknown namespace creates it
    stub.Update(namespace_pb2.UpdateNamespaceRequest(
        namespace=namespace_pb2.Namespace(name=missing, labels={"a": "b"}),
        update_mask=field_mask_pb2.FieldMask(paths=["labels.a"])), metadata=md("default"))
    try:
        got = stub.Get(namespace_pb2.GetNamespaceRequest(name=missing), metadata=md("default"))
        assert dict(got.namespace.labels) == {"a": "b"}
        assert missing in backend.ctr("namespaces", "ls", "-q", ns=None).stdout.split()
    finally:
        stub.Delete(namespace_pb2.DeleteNamespaceRequest(name=missing), metadata=md("default"))


def test_namespace_with_containers_cannot_be_removed(backend, ns, channel):  # noqa: ANN001
    stub = containers_pb2_grpc.ContainersStub(channel)
    stub.Create(containers_pb2.CreateContainerRequest(container=new_container("c1")),
                metadata=md(ns), timeout=10)
    # creating an object in a namespace creates the namespace implicitly
    assert ns in backend.ctr("namespaces", "ls", "-q", ns=None).stdout.split()
    r = backend.ctr("namespaces", "rm", ns, ns=None)
    assert f'namespace "{ns}" must be empty, but it still has containers' in r.stderr
    assert ns in backend.ctr("namespaces", "ls", "-q", ns=None).stdout.split()
    ns_stub = namespace_pb2_grpc.NamespacesStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        ns_stub.Delete(namespace_pb2.DeleteNamespaceRequest(name=ns), metadata=md(ns))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert backend.ctr("containers", "rm", "c1", ns=ns).returncode == 0
    assert backend.ctr("namespaces", "rm", ns, ns=None).returncode == 0


# ------------------------------------------------------------- containers


def test_containers_lifecycle(backend, ns, channel):  # noqa: ANN001
    stub = containers_pb2_grpc.ContainersStub(channel)
    created = stub.Create(containers_pb2.CreateContainerRequest(
        container=new_container("web", app="shop", tier="front")), metadata=md(ns)).container
    assert created.id == "web" and created.created_at.seconds > 0
    assert created.spec.type_url == SPEC_URL
    stub.Create(containers_pb2.CreateContainerRequest(
        container=new_container("db", app="shop", tier="back")), metadata=md(ns))

    got = stub.Get(containers_pb2.GetContainerRequest(id="web"), metadata=md(ns)).container
    assert got.spec.value == created.spec.value and dict(got.labels) == {"app": "shop",
                                                                         "tier": "front"}
    assert got.runtime.name == RUNTIME

    def ids(*filters: str) -> list[str]:
        resp = stub.List(containers_pb2.ListContainersRequest(filters=list(filters)),
                         metadata=md(ns))
        return sorted(c.id for c in resp.containers)

    assert ids() == ["db", "web"]
    assert ids("id==web") == ["web"]
    assert ids("labels.tier==back") == ["db"]
    assert ids("labels.tier!=back") == ["web"]
    assert ids("labels.app==shop,labels.tier==front") == ["web"]
    assert ids("id==web", "id==db") == ["db", "web"]  # several filters are OR-ed
    assert ids(f"runtime.name=={RUNTIME}") == ["db", "web"]
    assert ids('image=="docker.io/library/busybox:latest"') == ["db", "web"]
    assert ids("id~=^w") == ["web"]
    streamed = [m.container.id for m in stub.ListStream(
        containers_pb2.ListContainersRequest(filters=["labels.app==shop"]), metadata=md(ns))]
    assert sorted(streamed) == ["db", "web"]

    # ctr sees the records
    r = backend.ctr("containers", "ls", "-q", ns=ns)
    assert sorted(r.stdout.split()) == ["db", "web"]
    r = backend.ctr("containers", "ls", "labels.tier==front", ns=ns)
    assert r.returncode == 0 and "web" in r.stdout and "db" not in r.stdout
    info = json.loads(backend.ctr("containers", "info", "web", ns=ns).stdout)
    assert info["ID"] == "web" and info["Labels"] == {"app": "shop", "tier": "front"}
    assert info["Spec"]["process"]["args"] == ["true"]
    assert info["Runtime"]["Name"] == RUNTIME

    # update through a field mask: one label, then the image
    upd = containers_pb2.Container(id="web", labels={"tier": "edge", "ignored": "x"})
    out = stub.Update(containers_pb2.UpdateContainerRequest(
        container=upd, update_mask=field_mask_pb2.FieldMask(paths=["labels.tier"])),
        metadata=md(ns)).container
    assert dict(out.labels) == {"app": "shop", "tier": "edge"}
    assert out.updated_at.ToNanoseconds() >= out.created_at.ToNanoseconds()
    upd = containers_pb2.Container(id="web", image="docker.io/library/alpine:latest")
    out = stub.Update(containers_pb2.UpdateContainerRequest(
        container=upd, update_mask=field_mask_pb2.FieldMask(paths=["image"])),
        metadata=md(ns)).container
    assert out.image == "docker.io/library/alpine:latest" and out.labels["tier"] == "edge"

    # ctr containers label: set and remove
    assert backend.ctr("containers", "label", "web", "color=blue", ns=ns).returncode == 0
    info = json.loads(backend.ctr("containers", "info", "web", ns=ns).stdout)
    assert info["Labels"]["color"] == "blue"
    assert backend.ctr("containers", "label", "web", "color=", ns=ns).returncode == 0
    info = json.loads(backend.ctr("containers", "info", "web", ns=ns).stdout)
    assert "color" not in info["Labels"]

    r = backend.ctr("containers", "rm", "web", "db", ns=ns)
    assert r.returncode == 0, r.stderr
    assert backend.ctr("containers", "ls", "-q", ns=ns).stdout.split() == []


def test_containers_bad_input(backend, ns, channel):  # noqa: ANN001
    stub = containers_pb2_grpc.ContainersStub(channel)
    stub.Create(containers_pb2.CreateContainerRequest(container=new_container("dup")),
                metadata=md(ns))

    def code(call, request, metadata=md(ns)):  # noqa: ANN001, ANN202
        with pytest.raises(grpc.RpcError) as err:
            call(request, metadata=metadata, timeout=10)
        return err.value.code(), err.value.details()

    c, msg = code(stub.Create, containers_pb2.CreateContainerRequest(
        container=new_container("dup")))
    assert c == grpc.StatusCode.ALREADY_EXISTS and "dup" in msg
    c, msg = code(stub.Get, containers_pb2.GetContainerRequest(id="nope"))
    assert c == grpc.StatusCode.NOT_FOUND
    assert f'container "nope" in namespace "{ns}"' in msg
    c, _ = code(stub.Delete, containers_pb2.DeleteContainerRequest(id="nope"))
    assert c == grpc.StatusCode.NOT_FOUND
    c, msg = code(stub.List, containers_pb2.ListContainersRequest(), metadata=())
    assert c == grpc.StatusCode.FAILED_PRECONDITION and "namespace is required" in msg
    c, _ = code(stub.Create, containers_pb2.CreateContainerRequest(
        container=new_container("bad/id")))
    assert c == grpc.StatusCode.INVALID_ARGUMENT
    no_runtime = new_container("noruntime")
    no_runtime.runtime.name = ""
    c, msg = code(stub.Create, containers_pb2.CreateContainerRequest(container=no_runtime))
    assert c == grpc.StatusCode.INVALID_ARGUMENT and "Runtime.Name" in msg
    no_spec = new_container("nospec")
    no_spec.ClearField("spec")
    c, msg = code(stub.Create, containers_pb2.CreateContainerRequest(container=no_spec))
    assert c == grpc.StatusCode.INVALID_ARGUMENT and "Spec" in msg
    c, _ = code(stub.List, containers_pb2.ListContainersRequest(filters=["id=="]))
    assert c == grpc.StatusCode.INVALID_ARGUMENT
    for path in ("nosuchfield", "snapshotter", "runtime"):
        c, msg = code(stub.Update, containers_pb2.UpdateContainerRequest(
            container=containers_pb2.Container(id="dup", snapshotter="native"),
            update_mask=field_mask_pb2.FieldMask(paths=[path])))
        assert c == grpc.StatusCode.INVALID_ARGUMENT and f'cannot update "{path}"' in msg
    c, msg = code(stub.Update, containers_pb2.UpdateContainerRequest(
        container=containers_pb2.Container(id="dup")))
    assert c == grpc.StatusCode.INVALID_ARGUMENT and "immutable" in msg
    c, _ = code(stub.Update, containers_pb2.UpdateContainerRequest(
        container=containers_pb2.Container(id="nope"),
        update_mask=field_mask_pb2.FieldMask(paths=["image"])))
    assert c == grpc.StatusCode.NOT_FOUND
    # nothing changed by the failures
    got = stub.Get(containers_pb2.GetContainerRequest(id="dup"), metadata=md(ns)).container
    assert got.runtime.name == RUNTIME
    assert sorted(c.id for c in stub.List(containers_pb2.ListContainersRequest(),
                                          metadata=md(ns)).containers) == ["dup"]
    r = backend.ctr("containers", "info", "nope", ns=ns)
    assert r.returncode != 0 and "not found" in r.stderr


# ------------------------------------------------------------------ leases


def test_leases(backend, ns, channel):  # noqa: ANN001
    r = backend.ctr("leases", "create", "--id", "hold", "owner=test", ns=ns)
    assert r.returncode == 0, r.stderr
    r = backend.ctr("leases", "ls", ns=ns)
    assert "hold" in r.stdout and "owner=test" in r.stdout
    # leases are per namespace
    assert "hold" not in backend.ctr("leases", "ls", "-q", ns="default").stdout.split()

    stub = leases_pb2_grpc.LeasesStub(channel)
    res = leases_pb2.Resource(id="sha256:" + "ab" * 32, type="content")
    stub.AddResource(leases_pb2.AddResourceRequest(id="hold", resource=res), metadata=md(ns))
    listed = stub.ListResources(leases_pb2.ListResourcesRequest(id="hold"),
                                metadata=md(ns)).resources
    assert [(x.type, x.id) for x in listed] == [("content", res.id)]
    stub.DeleteResource(leases_pb2.DeleteResourceRequest(id="hold", resource=res),
                        metadata=md(ns))
    assert not stub.ListResources(leases_pb2.ListResourcesRequest(id="hold"),
                                  metadata=md(ns)).resources
    generated = stub.Create(leases_pb2.CreateRequest(), metadata=md(ns)).lease.id
    assert generated
    with pytest.raises(grpc.RpcError) as err:
        stub.Create(leases_pb2.CreateRequest(id="hold"), metadata=md(ns))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.RpcError) as err:
        stub.ListResources(leases_pb2.ListResourcesRequest(id="nolease"), metadata=md(ns))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    for bad, expected in ((leases_pb2.Resource(id="x", type="content"),
                           grpc.StatusCode.INVALID_ARGUMENT),
                          (leases_pb2.Resource(id="x", type="weird"),
                           grpc.StatusCode.UNIMPLEMENTED)):
        with pytest.raises(grpc.RpcError) as err:
            stub.AddResource(leases_pb2.AddResourceRequest(id="hold", resource=bad),
                             metadata=md(ns))
        assert err.value.code() == expected
    stub.AddResource(leases_pb2.AddResourceRequest(
        id="hold", resource=leases_pb2.Resource(id="k1", type="snapshots/overlayfs")),
        metadata=md(ns))
    assert [x.id for x in stub.List(leases_pb2.ListRequest(filters=["id==hold"]),
                                    metadata=md(ns)).leases] == ["hold"]

    r = backend.ctr("leases", "rm", "--sync", "hold", generated, ns=ns)
    assert r.returncode == 0, r.stderr
    assert backend.ctr("leases", "ls", "-q", ns=ns).stdout.split() == []
    r = backend.ctr("leases", "rm", "hold", ns=ns)
    assert r.returncode != 0 and "not found" in r.stderr


# ------------------------------------------------------------------ events


def _read_line(proc, timeout: float) -> str:  # noqa: ANN001
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline() if ready else ""


def test_ctr_events_sees_namespace_create(backend, ns):  # noqa: ANN001
    proc = backend.ctr_popen("events", ns=None)
    try:
        line = ""
        deadline = time.monotonic() + 15
        # ctr subscribes asynchronously: keep creating until the first event arrives
        attempt = 0
        while not line and time.monotonic() < deadline:
            name = f"{ns}-{attempt}" if attempt else ns
            backend.ctr("namespaces", "create", name, "k=v", ns=None)
            line = _read_line(proc, 1.0)
            attempt += 1
        for extra in range(1, attempt):
            backend.ctr("namespaces", "rm", f"{ns}-{extra}", ns=None)
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    assert "/namespaces/create" in line
    payload = json.loads(line[line.index("{"):])
    assert payload["name"].startswith(ns) and payload["labels"] == {"k": "v"}


def test_subscribe_filters(backend, ns, channel):  # noqa: ANN001
    stub = events_pb2_grpc.EventsStub(channel)
    stream = stub.Subscribe(events_pb2.SubscribeRequest(filters=[
        f'topic=="/containers/create",namespace=="{ns}"',
        f'topic~="/namespaces/d.*",event.name=="{ns}"',
    ]))
    got: list[events_pb2.Envelope] = []

    def reader() -> None:
        try:
            for env in stream:
                got.append(env)
                if len(got) == 2:
                    return
        except grpc.RpcError:
            pass

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    cstub = containers_pb2_grpc.ContainersStub(channel)
    ns_stub = namespace_pb2_grpc.NamespacesStub(channel)
    try:
        time.sleep(0.5)  # let the subscription reach the server
        other = unique("dyt-other")
        ns_stub.Create(namespace_pb2.CreateNamespaceRequest(
            namespace=namespace_pb2.Namespace(name=other)), metadata=md(other))
        ns_stub.Delete(namespace_pb2.DeleteNamespaceRequest(name=other), metadata=md(other))
        cstub.Create(containers_pb2.CreateContainerRequest(container=new_container("ev")),
                     metadata=md(unique("dyt-elsewhere")))  # wrong namespace: filtered
        cstub.Create(containers_pb2.CreateContainerRequest(container=new_container("ev")),
                     metadata=md(ns))
        cstub.Delete(containers_pb2.DeleteContainerRequest(id="ev"), metadata=md(ns))
        ns_stub.Delete(namespace_pb2.DeleteNamespaceRequest(name=ns), metadata=md(ns))
        thread.join(10)
    finally:
        stream.cancel()
    assert [e.topic for e in got] == ["/containers/create", "/namespaces/delete"]
    assert got[0].namespace == ns and got[0].event.type_url == "containerd.events.ContainerCreate"
    deleted = ns_events.NamespaceDelete.FromString(got[1].event.value)
    assert deleted.name == ns and got[1].event.type_url == "containerd.events.NamespaceDelete"


def test_publish_and_forward(backend, ns, channel):  # noqa: ANN001
    stub = events_pb2_grpc.EventsStub(channel)
    stream = stub.Subscribe(events_pb2.SubscribeRequest(filters=[f'namespace=="{ns}"']))
    got: list[events_pb2.Envelope] = []

    def reader() -> None:
        try:
            for env in stream:
                got.append(env)
                if len(got) == 2:
                    return
        except grpc.RpcError:
            pass

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)
        event = ns_events.NamespaceUpdate(name=ns, labels={"a": "b"})
        packed = any_pb2.Any(type_url="containerd.events.NamespaceUpdate",
                             value=event.SerializeToString())
        stub.Publish(events_pb2.PublishRequest(topic="/dyt/published", event=packed),
                     metadata=md(ns))
        env = events_pb2.Envelope(namespace=ns, topic="/dyt/forwarded", event=packed)
        env.timestamp.FromSeconds(1_700_000_000)
        stub.Forward(events_pb2.ForwardRequest(envelope=env), metadata=md(ns))
        with pytest.raises(grpc.RpcError) as err:
            stub.Publish(events_pb2.PublishRequest(topic="no-slash", event=packed),
                         metadata=md(ns))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        thread.join(10)
    finally:
        stream.cancel()
    assert [e.topic for e in got] == ["/dyt/published", "/dyt/forwarded"]
    assert got[0].event.value == packed.value
    assert got[1].timestamp.seconds == 1_700_000_000


# ------------------------------------------------------------------ health


def test_health_check(backend, channel):  # noqa: ANN001
    from dockyard.containerd.api.grpc.health.v1 import health_pb2, health_pb2_grpc

    resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                     timeout=10)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


# ------------------------------------------------- dockyard daemon lifecycle


def test_daemon_config_pidfile_restart(session_env, tmp_path):  # noqa: ANN001
    """dockyard only: --config, pid file, refusing a live socket, orderly SIGTERM,
    and records + server uuid surviving a restart."""
    import signal
    import subprocess

    from tests.fixtures.containerd import _dockyard_argv, _start, _stop, start_dockyard

    base = os.path.join(session_env.base, unique("lifecycle"))
    d = start_dockyard(base)
    try:
        pidfile = os.path.join(d.state, "containerd.pid")
        assert int(open(pidfile).read()) == d.proc.pid
        uuid_before = d.ctr("version", ns=None).stdout.split("UUID:")[1].split()[0]
        with d.channel() as ch:
            containers_pb2_grpc.ContainersStub(ch).Create(
                containers_pb2.CreateContainerRequest(container=new_container("keep")),
                metadata=md("life"))
        # a second daemon on the same socket refuses to start and leaves it alone
        second = subprocess.run(_dockyard_argv() + ["--root", os.path.join(base, "r2"),
                                                    "--state", os.path.join(base, "s2"),
                                                    "--address", d.address],
                                capture_output=True, text=True, timeout=30)
        assert second.returncode != 0 and "in use" in second.stderr
        assert d.ctr("version", ns=None).returncode == 0

        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(timeout=15) == 0
        assert not os.path.exists(d.address) and not os.path.exists(pidfile)

        # restart from a TOML config naming the same directories
        config = tmp_path / "config.toml"
        config.write_text(f'root = "{d.root}"\nstate = "{d.state}"\n'
                          f'[grpc]\naddress = "{d.address}"\n[debug]\nlevel = "info"\n')
        d = _start(d, _dockyard_argv() + ["--config", str(config)])
        assert d.ctr("version", ns=None).stdout.split("UUID:")[1].split()[0] == uuid_before
        assert d.ctr("containers", "ls", "-q", ns="life").stdout.split() == ["keep"]
        assert d.ctr("containers", "rm", "keep", ns="life").returncode == 0
    finally:
        _stop(d)
        import shutil

        shutil.rmtree(base, ignore_errors=True)
