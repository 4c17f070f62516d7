"""Reliable disconnect and unsubscribe notifications (``fugato.leave_events``, a Fugato-only option: Centrifugo
OSS has no such hook).

Every way a connection leaves produces events: a close by either side, a ping timeout, an expiry, a node
shutdown, and the crash of its node. Events are POSTed to ``endpoint`` in batches, ``{"events": [...]}``;
anything but HTTP 200 is retried with exponential backoff (capped at ``max_retry_interval``), so each event is
delivered at least once. Each carries an ``id`` that is the same however often, and by whichever node, it is
sent (``disconnect:<client>``, ``unsubscribe:<client>:<channel>:<n>``): the backend drops repeats by it.

**Connection records** let peers report the connections of a node that died. Each node keeps one presence
entry per connection in the engine, in the channel ``__fugato.connections.<node id>``: the user, the connection
meta and the subscribed channels, refreshed while the connection lives and removed only once its disconnect
event is acknowledged (a channel leaves the record once its unsubscribe event is). When a node stops being
heard on the control channel (its announcements end, or it says it shuts down), the live node with the
smallest id reads that node's records and sends their events instead, with ``"node": <the dead node>``. With
the Redis engine the records outlive the node by ``engine.redis.presence_ttl`` after their last refresh, which
is longer than the control channel takes to notice the loss.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge

from node.errors import Disconnect, Unsubscribe
from node.models import ClientInfo
from node.proxy.config import LeaveEventsConfig

if TYPE_CHECKING:
    from node.broker.base import PresenceManager
    from node.proxy.manager import ProxyClient

logger = logging.getLogger(__name__)

RECORDS_PREFIX: Final = "__fugato.connections."
NODE_LOST: Final = Disconnect(3001, "node lost")  # what peers report for the connections of a dead node
UNSUBSCRIBE_CLIENT: Final = Unsubscribe(0, "client unsubscribed")
UNSUBSCRIBE_DISCONNECT: Final = Unsubscribe(1, "disconnect")


def records_channel(node_id: str) -> str:
    return RECORDS_PREFIX + node_id


class LeaveMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        events = Counter("leave_events", "Leave events by type and outcome (queued, delivered, retried, dropped).",
                         ["type", "outcome"], namespace="fugato", registry=registry)
        self.events = events
        self.pending = Gauge("leave_events_pending", "Leave events waiting for delivery.", namespace="fugato",
                             registry=registry, multiprocess_mode="livesum")
        self.claimed = Counter("leave_events_claimed_connections",
                               "Connections of dead nodes whose leave events this node sent.", namespace="fugato",
                               registry=registry)


class _Tracked:
    """What the node remembers of a local connection for its record."""

    __slots__ = ("channels", "meta", "seq", "user")

    def __init__(self, user: str, meta: bytes | None) -> None:
        self.user = user
        self.meta = meta
        self.channels: dict[str, int] = {}  # channel -> subscription number (part of the event id)
        self.seq = 0


class LeaveEvents:
    def __init__(self, config: LeaveEventsConfig, node_id: str, presence: PresenceManager,
                 registry: CollectorRegistry) -> None:
        self.config = config
        self.node_id = node_id
        self._presence = presence
        self.metrics = LeaveMetrics(registry)
        self._queue: deque[dict[str, Any]] = deque()
        self._wakeup = asyncio.Event()
        self._clients: dict[str, _Tracked] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._sender: asyncio.Task[None] | None = None
        self._refresher: asyncio.TimerHandle | None = None
        self._session: aiohttp.ClientSession | None = None
        self._closing = False

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.config.timeout))
        self._sender = asyncio.get_running_loop().create_task(self._send_loop())
        self._schedule_refresh()

    async def close(self, timeout: float) -> None:
        """Deliver what is queued within ``timeout``; what is left stays in the records for a peer to send."""
        self._closing = True
        if self._refresher is not None:
            self._refresher.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
        if self._queue:
            self._wakeup.set()
            deadline = time.monotonic() + timeout
            while self._queue and time.monotonic() < deadline and self._sender is not None \
                    and not self._sender.done():
                await asyncio.wait([self._sender], timeout=min(0.05, max(deadline - time.monotonic(), 0)))
        if self._sender is not None:
            self._sender.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._session is not None:
            await self._session.close()

    # --- what happens to connections -------------------------------------------------------------------

    def connected(self, client: ProxyClient) -> None:
        self._clients[client.id] = _Tracked(client.user, client.meta)
        self._write_record(client.id)

    def subscribed(self, client: ProxyClient, channel: str) -> None:
        tracked = self._clients.get(client.id)
        if tracked is None:
            return
        tracked.seq += 1
        tracked.channels[channel] = tracked.seq
        self._write_record(client.id)

    def unsubscribed(self, client: ProxyClient, channel: str, unsub: Unsubscribe) -> None:
        tracked = self._clients.get(client.id)
        if tracked is None or channel not in tracked.channels or not self.config.unsubscribe:
            return
        seq = tracked.channels[channel]
        self._push(_unsubscribe_event(self.node_id, client.id, tracked.user, channel, seq, unsub))

    def disconnected(self, client: ProxyClient, disconnect: Disconnect) -> None:
        tracked = self._clients.get(client.id)
        if tracked is None:
            return
        self._push(_disconnect_event(self.node_id, client.id, tracked.user, disconnect, tracked.meta))

    # --- peers -----------------------------------------------------------------------------------------

    def node_gone(self, node_id: str, live_nodes: list[str]) -> None:
        """A peer left (shut down, or not heard from): the live node with the smallest id sends its leftovers."""
        if self._closing or min([self.node_id, *live_nodes]) != self.node_id:
            return
        self._spawn(self._claim(node_id))

    async def _claim(self, node_id: str) -> None:
        records = await self._presence.presence(records_channel(node_id))
        for client_id, info in records.items():
            record = orjson.loads(info.chan_info or b"{}")
            channels: dict[str, int] = record.get("channels", {})
            meta = orjson.dumps(record["meta"]) if record.get("meta") is not None else None
            if self.config.unsubscribe:
                for channel, seq in channels.items():
                    self._push(_unsubscribe_event(node_id, client_id, info.user, channel, seq,
                                                  UNSUBSCRIBE_DISCONNECT))
            self._push(_disconnect_event(node_id, client_id, info.user, NODE_LOST, meta))
            self.metrics.claimed.inc()
        if records:
            logger.warning("sending the leave events of %d connections of lost node %s", len(records), node_id)

    # --- records ---------------------------------------------------------------------------------------

    def _record(self, tracked: _Tracked) -> bytes:
        return orjson.dumps({"channels": tracked.channels,
                             "meta": orjson.Fragment(tracked.meta) if tracked.meta is not None else None})

    def _write_record(self, client_id: str) -> None:
        tracked = self._clients.get(client_id)
        if tracked is not None:
            info = ClientInfo(client=client_id, user=tracked.user, chan_info=self._record(tracked))
            self._spawn(self._presence.add_presence(records_channel(self.node_id), client_id, info))

    def _schedule_refresh(self) -> None:
        interval = self.config.connection_record_ttl / 3
        self._refresher = asyncio.get_running_loop().call_later(interval, self._refresh)

    def _refresh(self) -> None:
        for client_id in list(self._clients):
            self._write_record(client_id)
        self._schedule_refresh()

    async def _acked(self, event: dict[str, Any]) -> None:
        """An event reached the backend: the record no longer needs to hold what it reported."""
        client_id = event["client"]
        channel = records_channel(event["node"])
        if event["type"] == "disconnect":
            if event["node"] == self.node_id:
                self._clients.pop(client_id, None)
            await self._presence.remove_presence(channel, client_id, event["user"])
            return
        tracked = self._clients.get(client_id) if event["node"] == self.node_id else None
        if tracked is not None and tracked.channels.get(event["channel"]) == event["seq"]:
            del tracked.channels[event["channel"]]
            self._write_record(client_id)

    # --- delivery --------------------------------------------------------------------------------------

    def _push(self, event: dict[str, Any]) -> None:
        if len(self._queue) >= self.config.max_queue_size:
            dropped = self._queue.popleft()  # memory is bounded; the record still holds what it reported
            self.metrics.events.labels(dropped["type"], "dropped").inc()
        self._queue.append(event)
        self.metrics.events.labels(event["type"], "queued").inc()
        self.metrics.pending.set(len(self._queue))
        self._wakeup.set()

    async def _send_loop(self) -> None:
        attempt = 0
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                if self.config.batch_interval > 0 and len(self._queue) < self.config.batch_size:
                    await asyncio.sleep(self.config.batch_interval)  # let a burst of leaves share one request
            batch = [self._queue[i] for i in range(min(len(self._queue), self.config.batch_size))]
            if await self._post(batch):
                attempt = 0
                for _ in batch:
                    self._queue.popleft()
                self.metrics.pending.set(len(self._queue))
                for event in batch:
                    self.metrics.events.labels(event["type"], "delivered").inc()
                    self._spawn(self._acked(event))
                continue
            attempt += 1
            for event in batch:
                self.metrics.events.labels(event["type"], "retried").inc()
            delay = min(self.config.max_retry_interval, 0.05 * 2 ** min(attempt, 16))
            await asyncio.sleep(delay * (0.5 + random.random() / 2))

    async def _post(self, batch: list[dict[str, Any]]) -> bool:
        assert self._session is not None
        body = orjson.dumps({"events": [{k: v for k, v in e.items() if k != "seq"} for e in batch]})
        headers = {**self.config.http_headers, "Content-Type": "application/json"}
        try:
            async with self._session.post(self.config.endpoint, data=body, headers=headers) as resp:
                await resp.read()
                if resp.status == 200:
                    return True
                logger.warning("leave events: backend answered HTTP %d, retrying", resp.status)
        except (aiohttp.ClientError, TimeoutError) as e:
            logger.warning("leave events: backend unavailable (%s), retrying", e or type(e).__name__)
        return False

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Engine writes run on their own: a record write that fails is retried by the next refresh."""
        task = asyncio.get_running_loop().create_task(_logged(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _logged(coro: Coroutine[Any, Any, None]) -> None:
    try:
        await coro
    except Exception as e:
        logger.warning("leave events: engine unavailable (%s)", e)


def _event(kind: str, node_id: str, key: str, client_id: str, user: str, code: int, reason: str,
           ) -> dict[str, Any]:
    return {"id": key, "type": kind, "node": node_id, "client": client_id, "user": user, "code": code,
            "reason": reason, "time_ms": int(time.time() * 1000)}


def _disconnect_event(node_id: str, client_id: str, user: str, disconnect: Disconnect, meta: bytes | None
                      ) -> dict[str, Any]:
    event = _event("disconnect", node_id, f"disconnect:{client_id}", client_id, user, disconnect.code,
                   disconnect.reason)
    if meta is not None:
        event["meta"] = orjson.Fragment(meta)
    return event


def _unsubscribe_event(node_id: str, client_id: str, user: str, channel: str, seq: int, unsub: Unsubscribe
                       ) -> dict[str, Any]:
    event = _event("unsubscribe", node_id, f"unsubscribe:{client_id}:{channel}:{seq}", client_id, user, unsub.code,
                   unsub.reason)
    event["channel"] = channel
    event["seq"] = seq
    return event

