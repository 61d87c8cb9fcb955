"""containerd's filter syntax (dockyard.containerd.filters) and the event exchange."""

from __future__ import annotations

import asyncio

import pytest

from dockyard import errdefs
from dockyard.containerd import filters
from dockyard.containerd.api.events import namespace_pb2, task_pb2
from dockyard.containerd.api.services.containers.v1 import containers_pb2
from dockyard.containerd.exchange import Exchange


def container(**labels: str) -> containers_pb2.Container:
    c = containers_pb2.Container(id="web", image="docker.io/library/busybox:latest",
                                 labels=labels)
    c.runtime.name = "io.containerd.runc.v2"
    return c


@pytest.mark.parametrize(("text", "expected"), [
    ("id==web", True),
    ("id==db", False),
    ("id!=db", True),
    ("id~=^w.b$", True),
    ("id~=/^d/", False),
    ('image=="docker.io/library/busybox:latest"', True),
    ("runtime.name==io.containerd.runc.v2", True),
    ("labels.app==shop", True),
    ('labels."com.example.tier"==front', True),
    ("labels.com.example.tier==front", True),  # the rest of the path is the key
    ("labels.app", True),  # presence
    ("labels.missing", False),
    ("labels.missing!=x", True),  # != matches absent fields, as in containerd
    ("id==web,labels.app==shop", True),
    ("id==web, labels.app==other", False),
    ("nosuchfield==x", False),
    ("snapshotter", False),  # empty string field is not present
])
def test_container_filters(text: str, expected: bool) -> None:
    c = container(app="shop", **{"com.example.tier": "front"})
    assert filters.parse(text).match(filters.message_adaptor(c)) is expected


def test_filter_set_ors_filters_and_empty_matches_all() -> None:
    adaptor = filters.message_adaptor(container())
    assert filters.parse_all([]).match(adaptor)
    assert filters.parse_all(["id==x", "id==web"]).match(adaptor)
    assert not filters.parse_all(["id==x", "id==y"]).match(adaptor)


@pytest.mark.parametrize("bad", ["id==", "==x", "id==x,", "id=x", 'id=="open', "id~=/(/"])
def test_parse_errors_are_invalid_argument(bad: str) -> None:
    with pytest.raises(errdefs.InvalidArgument, match="filters: parse error"):
        filters.parse(bad)


def test_exchange_delivers_filtered_envelopes() -> None:
    async def scenario() -> list:
        ex = Exchange()
        ex.bind(asyncio.get_running_loop())
        sub = ex.subscribe(['topic=="/tasks/exit",namespace==a', 'event.name=="ns1"'])
        ex.publish("a", "/tasks/exit", task_pb2.TaskExit(container_id="c1", exit_status=3))
        ex.publish("b", "/tasks/exit", task_pb2.TaskExit(container_id="c2"))
        ex.publish("b", "/namespaces/create", namespace_pb2.NamespaceCreate(name="ns1"))
        ex.publish("b", "/namespaces/create", namespace_pb2.NamespaceCreate(name="ns2"))
        sub.close()
        return [env async for env in sub]

    got = asyncio.run(scenario())
    assert [(e.namespace, e.topic) for e in got] == [("a", "/tasks/exit"),
                                                     ("b", "/namespaces/create")]
    assert got[0].event.type_url == "containerd.events.TaskExit"
    assert task_pb2.TaskExit.FromString(got[0].event.value).exit_status == 3


def test_publish_rejects_bad_topics() -> None:
    ex = Exchange()
    for topic in ("", "tasks/exit", "/tasks//exit"):
        with pytest.raises(errdefs.InvalidArgument):
            ex.publish("a", topic, task_pb2.TaskOOM(container_id="x"))
