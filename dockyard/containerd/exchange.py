"""The events exchange: services publish, Events.Subscribe streams fan out.

`publish(namespace, topic, message)` may be called from the event loop or from any
thread (the task manager's reaper threads); delivery always happens on the loop.
Each subscriber has a bounded queue: a subscriber that stops reading loses its oldest
events rather than growing memory or slowing publishers.

Envelopes carry the event as google.protobuf.Any whose type URL is the message's full
protobuf name without the "type.googleapis.com/" prefix -- what containerd's typeurl
writes for its event types ("containerd.events.TaskExit"), and what ctr looks up.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Iterable

from google.protobuf import any_pb2, timestamp_pb2
from google.protobuf.message import Message

from dockyard import errdefs
from dockyard.containerd import filters
from dockyard.containerd.api.events import (  # noqa: F401 -- registers event types
    container_pb2,
    content_pb2,
    image_pb2,
    namespace_pb2,
    snapshot_pb2,
    task_pb2,
)
from dockyard.containerd.api.services.events.v1 import events_pb2

log = logging.getLogger(__name__)

QUEUE_LIMIT = 1024
# containerd's topic rule: "/"-separated identifiers-ish components
_TOPIC = re.compile(r"^(/[A-Za-z0-9_.\-]+)+$")


def pack_any(message: Message) -> any_pb2.Any:
    return any_pb2.Any(type_url=message.DESCRIPTOR.full_name,
                       value=message.SerializeToString())


def validate_topic(topic: str) -> None:
    if not topic:
        raise errdefs.InvalidArgument("must not be empty for event")
    if not topic.startswith("/"):
        raise errdefs.InvalidArgument(f'must start with "/" for event topic "{topic}"')
    if not _TOPIC.match(topic):
        raise errdefs.InvalidArgument(f'invalid topic "{topic}"')


def _now() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(time.time_ns())
    return ts


def envelope_adaptor(env: events_pb2.Envelope) -> filters.Adaptor:
    """Fields a subscription filter can test: namespace, topic, event.<fieldpath>."""
    decoded: list[Message | None] = []

    def adapt(path):  # type: ignore[no-untyped-def]
        if not path:
            return "", False
        head = path[0]
        if head == "namespace":
            return env.namespace, bool(env.namespace)
        if head == "topic":
            return env.topic, bool(env.topic)
        if head == "event":
            if not decoded:
                decoded.append(_decode(env.event))
            if decoded[0] is None:
                return "", False
            return filters.message_adaptor(decoded[0])(path[1:])
        return "", False

    return adapt


def _decode(event: any_pb2.Any) -> Message | None:
    from google.protobuf import symbol_database

    name = event.type_url.rsplit("/", 1)[-1]
    try:
        cls = symbol_database.Default().GetSymbol(name)
    except KeyError:
        return None
    msg = cls()
    try:
        msg.ParseFromString(event.value)
    except Exception:  # noqa: BLE001 -- an undecodable event simply has no fields
        return None
    return msg


class Subscription:
    def __init__(self, exchange: Exchange, filterset: filters.FilterSet) -> None:
        self._exchange = exchange
        self.filterset = filterset
        self.queue: asyncio.Queue[events_pb2.Envelope | None] = asyncio.Queue(QUEUE_LIMIT)

    def offer(self, env: events_pb2.Envelope) -> None:
        if not self.filterset.match(envelope_adaptor(env)):
            return
        if self.queue.full():
            self.queue.get_nowait()  # drop the oldest; see module docstring
            log.warning("event subscriber too slow: dropped an event")
        self.queue.put_nowait(env)

    def close(self) -> None:
        self._exchange._remove(self)
        if self.queue.full():
            self.queue.get_nowait()
        self.queue.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[events_pb2.Envelope]:
        while True:
            env = await self.queue.get()
            if env is None:
                return
            yield env


class Exchange:
    """Broadcast of envelopes to subscribers, on one asyncio loop."""

    def __init__(self) -> None:
        self._subs: set[Subscription] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Set the loop deliveries run on (the server's)."""
        self._loop = loop

    # -- publishing ---------------------------------------------------------

    def publish(self, namespace: str, topic: str, message: Message) -> None:
        """Publish a containerd event message (e.g. events.task_pb2.TaskExit)."""
        validate_topic(topic)
        env = events_pb2.Envelope(timestamp=_now(), namespace=namespace, topic=topic,
                                  event=pack_any(message))
        self.forward(env)

    def publish_any(self, namespace: str, topic: str, event: any_pb2.Any) -> None:
        """Publish an event a client already packed (Events.Publish)."""
        validate_topic(topic)
        self.forward(events_pb2.Envelope(timestamp=_now(), namespace=namespace, topic=topic,
                                         event=event))

    def forward(self, env: events_pb2.Envelope) -> None:
        """Deliver a complete envelope as-is (Events.Forward, and publish)."""
        log.debug("event %s ns=%s %s", env.topic, env.namespace, env.event.type_url)
        loop = self._loop
        if loop is None or loop.is_closed():
            return  # no server running: nobody can be subscribed
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._deliver(env)
        else:
            loop.call_soon_threadsafe(self._deliver, env)

    def _deliver(self, env: events_pb2.Envelope) -> None:
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            sub.offer(env)

    # -- subscribing --------------------------------------------------------

    def subscribe(self, filter_texts: Iterable[str] = ()) -> Subscription:
        """A subscription receiving envelopes published from now on; close() it."""
        sub = Subscription(self, filters.parse_all(filter_texts))
        with self._lock:
            self._subs.add(sub)
        return sub

    def _remove(self, sub: Subscription) -> None:
        with self._lock:
            self._subs.discard(sub)

    def close(self) -> None:
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            sub.close()
