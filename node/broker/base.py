"""Engine interfaces: the Broker (PUB/SUB fan-out between nodes plus history streams) and the PresenceManager.

History lives inside the Broker because saving a publication to the channel's stream and publishing it to
subscribers must be one atomic step per channel: offsets then arrive at every node in stream order.
"""

from __future__ import annotations

import asyncio
import random
import string
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol, TypeVar

from node import models

# Kinds of PUB/SUB failure a broker reports (handle_pubsub_error); the metric has one series per kind.
PUBSUB_ERRORS: Final = ("connection_lost", "reconnect_failed", "subscribe_failed")


class BrokerEventHandler(Protocol):
    """Implemented by the Node. Called on the broker's reader; must not await (it only enqueues)."""

    def handle_publication(self, channel: str, pub: models.Publication, sp: models.StreamPosition) -> None: ...

    def handle_publications(self, items: Sequence[tuple[str, models.Publication, models.StreamPosition]]) -> None:
        """Several publications at once, in order (a batch, or one read of PUB/SUB messages): as many calls of
        ``handle_publication``, with the per-call bookkeeping done once."""

    def handle_join(self, channel: str, info: models.ClientInfo) -> None: ...

    def handle_leave(self, channel: str, info: models.ClientInfo) -> None: ...

    def handle_control(self, data: bytes) -> None: ...

    def handle_resubscribed(self, channels: list[str]) -> None:
        """PUB/SUB for these channels was re-established after a failure: publications may have been missed."""

    def handle_pubsub_error(self, kind: str) -> None:
        """A PUB/SUB connection failed, or re-establishing it did (counted for monitoring)."""


# Gets a publish's result or its exception (``Broker.publish_then``).
PublishDone = Callable[[models.PublishResult | BaseException], None]

_T = TypeVar("_T")


def settle_then(aw: Awaitable[_T], done: Callable[[_T | BaseException], None]) -> None:
    """Run ``aw`` in a task; ``done`` gets its result or its exception (a CancelledError if the task is
    cancelled): the callback form of a call that has no cheaper one."""

    def settled(task: asyncio.Future[_T]) -> None:
        if task.cancelled():
            done(asyncio.CancelledError())
        else:
            done(task.exception() or task.result())

    asyncio.ensure_future(aw).add_done_callback(settled)


def publish_future(broker: Broker, channel: str, data: bytes,
                   opts: models.PublishOptions) -> asyncio.Future[models.PublishResult]:
    """``broker.publish_then`` as a future (for callers that await; the API fast path takes the callback)."""
    fut: asyncio.Future[models.PublishResult] = asyncio.get_running_loop().create_future()

    def done(outcome: models.PublishResult | BaseException) -> None:
        if fut.done():
            return
        if isinstance(outcome, asyncio.CancelledError):
            fut.cancel()
        elif isinstance(outcome, BaseException):
            fut.set_exception(outcome)
        else:
            fut.set_result(outcome)

    broker.publish_then(channel, data, opts, done)
    return fut


class Broker(Protocol):
    """Delivers every publication of a subscribed channel to ``handler`` exactly in stream order."""

    async def start(self, handler: BrokerEventHandler) -> None: ...

    async def close(self) -> None: ...

    async def subscribe(self, *channels: str) -> None:
        """Start receiving the channels' publications on this node (idempotent)."""

    async def unsubscribe(self, *channels: str) -> None: ...

    async def publish(self, channel: str, data: bytes, opts: models.PublishOptions) -> models.PublishResult:
        """Append to history (when ``opts.history_size``) and publish, atomically per channel."""

    async def publish_many(
        self, items: Sequence[tuple[str, bytes, models.PublishOptions]]
    ) -> list[models.PublishResult | Exception]:
        """``publish`` for each (channel, data, options), in order: each item gets its result or its own error.
        Publications of one channel keep their order. Brokers override this to send them together."""
        results: list[models.PublishResult | Exception] = []
        for channel, data, opts in items:
            try:
                results.append(await self.publish(channel, data, opts))
            except Exception as e:
                results.append(e)
        return results

    def publish_then(self, channel: str, data: bytes, opts: models.PublishOptions, done: PublishDone) -> None:
        """``publish`` started now, without a coroutine of the caller's: ``done`` gets its result or its
        exception, once, maybe before this returns. Brokers whose publish completes in a callback (or at once)
        override this to spare a task and a future per call."""
        settle_then(self.publish(channel, data, opts), done)

    def publish_soon(
        self, channel: str, data: bytes, opts: models.PublishOptions
    ) -> asyncio.Future[models.PublishResult]:
        """``publish_then`` as a future."""
        return publish_future(self, channel, data, opts)

    async def publish_join(self, channel: str, info: models.ClientInfo) -> None: ...

    async def publish_leave(self, channel: str, info: models.ClientInfo) -> None: ...

    async def publish_control(self, data: bytes, node_id: str = "") -> None:
        """Send a control message to one node, or to every node when ``node_id`` is empty."""

    async def history(self, channel: str, opts: models.HistoryOptions) -> models.HistoryResult: ...

    async def remove_history(self, channel: str) -> None: ...

    def healthy(self) -> bool:
        """False while PUB/SUB to some part of the engine is down (the node's /health reports it)."""


class PresenceManager(Protocol):
    """Presence entries expire unless re-added within the presence TTL; a live connection re-adds its own."""

    async def presence(self, channel: str) -> dict[str, models.ClientInfo]: ...

    async def presence_stats(self, channel: str) -> models.PresenceStats: ...

    async def add_presence(self, channel: str, client_id: str, info: models.ClientInfo) -> None: ...

    async def remove_presence(self, channel: str, client_id: str, user_id: str) -> None: ...

    async def close(self) -> None: ...


def new_epoch() -> str:
    """A stream epoch: 8 random letters, as Centrifugo generates them."""
    return "".join(random.choices(string.ascii_letters, k=8))


@dataclass(frozen=True, slots=True)
class Engine:
    """The broker and presence manager a node runs with (built by ``broker.factory``). ``map_broker`` is where
    map channels live when ``map_broker`` puts them apart from the engine's broker (``broker`` then routes them
    there, node/broker/routed.py); None keeps them next to the engine's streams."""

    broker: Broker
    presence: PresenceManager
    map_broker: Broker | None = None
