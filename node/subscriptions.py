"""Subscriptions: which local connections are subscribed to each channel, and the engine subscription that
serves them (one per channel while it has local subscribers, dropped lazily once it has none).

The map is read by the hub's fan-out (``by_channel`` is the very dict it iterates); changing it is this
module's job. Engine calls come in as two callables, so only the node holds the engine itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

from node.models import ClientInfo, ClientState, Identity, Publication, StreamPosition, StreamStart, SubscribeOptions
from node.protocol.codec import Codec
from node.tagsfilter import TagsFilter
from node.transport import Transport

logger = logging.getLogger(__name__)

# Absorbs subscribe/unsubscribe churn: the engine unsubscribe of an emptied channel waits this long.
LAZY_UNSUBSCRIBE_DELAY: Final = 1.0
# Sees every publication of a channel this node receives, besides the hub's subscribers (the admin UI's live tail).
Observer = Callable[[str, Publication, StreamPosition], None]
# The framing of most connections (bidirectional JSON over WebSocket): its subscribers take the fast path.
COMMON_FRAMING: Final = "ws-text"


class Receiver(Identity, Protocol):
    """A connection as the fan-out sees it (the client session implements it)."""

    unidirectional: bool
    framing: str
    transport: Transport
    codec: Codec  # builds the messages in the connection's protocol

    def frame(self, message: bytes) -> bytes:
        """One protocol message in this connection's transport framing."""

    def enqueue_framed(self, frame: bytes) -> None:
        """Queue bytes already framed for this connection's ``framing``; O(1), never awaits."""

    def schedule_close(self, disconnect: Any) -> None:
        """Close from synchronous code."""

    def insufficient_state(self, channel: str) -> None:
        """The connection missed publications of a positioned channel."""


class Subscribable(Identity, Protocol):
    """A connection as the node's subscribe steps and their callers see it (the client session implements it)."""

    codec: Codec

    @property
    def state(self) -> ClientState: ...

    @property
    def channels(self) -> Collection[str]: ...

    @property
    def subscribing(self) -> AbstractSet[str]: ...

    def enqueue(self, message: bytes) -> None: ...

    def start_subscribing(self, channel: str) -> None: ...

    def done_subscribing(self, channel: str) -> None: ...


S_contra = TypeVar("S_contra", bound=Subscribable, contravariant=True)


class SubscribeSteps(Protocol[S_contra]):
    """The node's steps that make a connection a live subscriber (``node.Node`` implements them): subscribe
    (engine, hub, stream position), then release what arrived meanwhile, then the after-subscribe hooks. A
    caller other than the client's own subscribe command (map subscriptions, server-side subscribe) walks them
    itself. ``S_contra`` is the node's connection type."""

    async def subscribe_client(self, client: S_contra, channel: str, opts: SubscribeOptions, *, server_side: bool,
                               since: StreamPosition | None = None,
                               reject_unrecovered: bool = False) -> StreamStart | None: ...

    def start_delivery(self, client: S_contra, channel: str, start: StreamStart | None) -> None: ...

    async def after_subscribe(self, client: S_contra, channel: str, opts: SubscribeOptions) -> None: ...


@dataclass(slots=True)
class ChannelState:
    """What a connection holds for one of its subscriptions."""

    opts: SubscribeOptions
    server_side: bool
    expire_at: int  # unix seconds, 0 = never
    info: ClientInfo



# How a live subscriber takes a broadcast, decided once where it is set up (``Subscriber.lane``): the shared
# plain frame of the common framing with nothing to check; the same frame when the publication is the next of
# the subscriber's position (map subscribers, positioned streams); or the general way (buffering, delta, tags
# filter, another framing, an unidirectional client, a broken position). The fan-out tells them apart by
# identity, the cheapest comparison there is.
LANE_OTHER: Final = "other"
LANE_SHARED: Final = "shared"
LANE_SEQUENCED: Final = "sequenced"
# The frames a publication has, per kind of subscriber: plain, and a delta subscriber's full payload or patch.
FRAME_PLAIN: Final = 0
FRAME_DELTA_FULL: Final = 1
FRAME_DELTA_PATCH: Final = 2


class Cursor:
    """A positioned subscription's place in the channel's stream: the last offset it got, in ``epoch``. The
    sequenced subscribers that are in step share one (the fan-out checks and moves it once per publication)."""

    __slots__ = ("epoch", "offset")

    def __init__(self, offset: int = 0, epoch: str = "") -> None:
        self.offset = offset
        self.epoch = epoch


_NO_POSITION: Final = Cursor()  # the cursor of every unpositioned subscriber: never moved
# (unidirectional, framing) -> the frame cache keys of that kind of subscriber, shared by all of its kind.
_FRAME_KEYS: dict[tuple[bool, str], tuple[str, ...]] = {}


def frame_keys(unidirectional: bool, framing: str) -> tuple[str, ...]:
    """A broadcast's frame cache keys for a kind of subscriber, indexed by FRAME_*: strings, whose hash Python
    keeps, so a delivery builds no key; one tuple per kind, so a subscription holds no strings of its own."""
    keys = _FRAME_KEYS.get((unidirectional, framing))
    if keys is None:
        kind = f"{'uni' if unidirectional else 'bidi'}/{framing}"
        keys = _FRAME_KEYS[unidirectional, framing] = tuple(
            f"{frame}/{kind}" for frame in (FRAME_PLAIN, FRAME_DELTA_FULL, FRAME_DELTA_PATCH))
    return keys


class Subscriber:
    """One client's subscription to one channel, as the fan-out loop needs it.

    While ``buffer`` is a list the subscription is being set up (its reply is not queued yet): publications are
    held there and released by ``Hub.release`` in order, so none is lost or delivered before the reply.
    A positioned subscriber tracks the last offset it got; a gap or an epoch change breaks the subscription
    (the client is told "insufficient state" and recovers on resubscribe).
    """

    __slots__ = ("_live_lane", "broken", "buffer", "client", "cursor", "delta", "delta_ready", "frame_keys", "lane",
                 "positioned", "push_join_leave", "tags_filter", "unidirectional")

    def __init__(self, client: Receiver, *, push_join_leave: bool, positioned: bool, delta: bool,
                 tags_filter: TagsFilter | None = None) -> None:
        self.client = client
        self.unidirectional = client.unidirectional
        self.push_join_leave = push_join_leave
        self.positioned = positioned
        self.delta = delta
        self.delta_ready = False  # the client holds the previous payload, so it can apply a patch
        self.cursor = Cursor() if positioned else _NO_POSITION
        self.broken = False
        self.buffer: list[tuple[Publication, StreamPosition]] | None = []
        # Publications it does not match are skipped (their offsets still count). A delta subscriber gets them all,
        # as centrifuge sends them: its patches build on every previous value, so a skipped one would corrupt
        # the next.
        self.tags_filter = None if delta else tags_filter
        self.frame_keys = frame_keys(client.unidirectional, client.framing)
        # The shared plain frame fits it: no delta, no filter, bidirectional, the common framing.
        common = not (delta or tags_filter or client.unidirectional) and client.framing == COMMON_FRAMING
        self._live_lane = (LANE_SEQUENCED if positioned else LANE_SHARED) if common else LANE_OTHER
        self.lane = LANE_OTHER  # until it is live

    def go_live(self, position: StreamPosition | None) -> list[tuple[Publication, StreamPosition]]:
        """End buffering from ``position`` on (a positioned subscriber's last offset); returns what was held."""
        buffered, self.buffer = self.buffer or [], None
        if position is not None:
            self.cursor = Cursor(position.offset, position.epoch)  # its own until the fan-out finds it in step
        self.lane = self._live_lane
        return buffered

    @property
    def offset(self) -> int:
        return self.cursor.offset

    @property
    def epoch(self) -> str:
        return self.cursor.epoch

    def accept(self, pub: Publication, sp: StreamPosition, channel: str) -> bool:
        """Position check for one live publication: False drops it (duplicate, or the subscription broke)."""
        if self.broken:
            return False
        if not self.positioned or not pub.offset:
            return True
        cursor = self.cursor
        if sp.epoch != cursor.epoch or pub.offset > cursor.offset + 1:
            self.broken = True
            self.lane = LANE_OTHER  # where ``broken`` is checked
            self.client.insufficient_state(channel)
            return False
        if pub.offset <= cursor.offset:
            return False
        # The cursor is the subscriber's own here: only subscribers of the sequenced lane share cursors, and the
        # fan-out moves theirs itself (the next publication of their epoch is the one that gets this far).
        cursor.offset = pub.offset
        return True


class Subscriptions:
    """channel -> {client id: Subscriber} for this node, and the engine subscription of each channel.

    ``engage`` subscribes the engine before a channel's first local subscriber is added (a per-channel lock
    makes a second subscriber wait for it); ``remove`` of the last subscriber schedules the engine unsubscribe
    ``LAZY_UNSUBSCRIBE_DELAY`` later, and only if the channel is still empty then. Observers (``observe``) keep
    a channel engaged like subscribers, but are no connections: the node calls them after the hub's fan-out."""

    __slots__ = ("_engaged", "_handles", "_locks", "_subscribe", "_tasks", "_unsubscribe", "by_channel", "observers")

    def __init__(self, subscribe: Callable[[str], Awaitable[None]],
                 unsubscribe: Callable[[str], Awaitable[None]]) -> None:
        self.by_channel: dict[str, dict[str, Subscriber]] = {}
        self.observers: dict[str, list[Observer]] = {}
        self._subscribe = subscribe
        self._unsubscribe = unsubscribe
        self._engaged: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._handles: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def _lock(self, channel: str) -> asyncio.Lock:
        lock = self._locks.get(channel)
        if lock is None:
            lock = self._locks[channel] = asyncio.Lock()
        return lock

    async def engage(self, channel: str) -> None:
        """Make sure the engine delivers ``channel``'s publications here."""
        async with self._lock(channel):
            if channel not in self._engaged:
                await self._subscribe(channel)
                self._engaged.add(channel)

    def add(self, channel: str, client: Receiver, *, push_join_leave: bool = False, positioned: bool = False,
            delta: bool = False, tags_filter: TagsFilter | None = None) -> bool:
        """Register the subscription in buffering mode; True when it is the channel's first local subscriber."""
        subs = self.by_channel.get(channel)
        first = subs is None
        if subs is None:
            subs = self.by_channel[channel] = {}
        subs[client.id] = Subscriber(client, push_join_leave=push_join_leave, positioned=positioned, delta=delta,
                                     tags_filter=tags_filter)
        return first

    def remove(self, channel: str, client: Receiver) -> bool:
        """Drop the subscription; True when the channel has no local subscribers left (its engine subscription
        then ends ``LAZY_UNSUBSCRIBE_DELAY`` later unless someone subscribes meanwhile)."""
        subs = self.by_channel.get(channel)
        if subs is None:
            return False
        subs.pop(client.id, None)
        if subs:
            return False
        del self.by_channel[channel]
        self._release_later(channel)
        return True

    async def observe(self, channel: str, observer: Observer) -> None:
        """Call ``observer`` (synchronously, on the broker's reader: it must not block) with each publication of
        ``channel`` from now on, whichever node it was published on."""
        self.observers.setdefault(channel, []).append(observer)
        try:
            await self.engage(channel)
        except BaseException:
            self.unobserve(channel, observer)
            raise

    def unobserve(self, channel: str, observer: Observer) -> None:
        observers = self.observers.get(channel)
        if observers is None or observer not in observers:
            return
        observers.remove(observer)
        if not observers:
            del self.observers[channel]
            self._release_later(channel)

    def _unused(self, channel: str) -> bool:
        return channel not in self.by_channel and channel not in self.observers

    def _release_later(self, channel: str) -> None:
        if self._unused(channel) and channel in self._engaged and channel not in self._handles:
            loop = asyncio.get_running_loop()
            self._handles[channel] = loop.call_later(LAZY_UNSUBSCRIBE_DELAY, self._maybe_unsubscribe, channel)

    def _maybe_unsubscribe(self, channel: str) -> None:
        self._handles.pop(channel, None)
        if self._unused(channel) and channel in self._engaged:
            self._spawn(self._disengage(channel))

    async def _disengage(self, channel: str) -> None:
        async with self._lock(channel):
            if self._unused(channel) and channel in self._engaged:
                self._engaged.discard(channel)
                self._locks.pop(channel, None)
                try:
                    await self._unsubscribe(channel)
                except Exception as e:
                    logger.info("unsubscribing %s: %s", channel, e)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Cancel the pending engine unsubscribes and wait for those under way (the engine closes next)."""
        for handle in self._handles.values():
            handle.cancel()
        self._handles.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def get(self, channel: str, client_id: str) -> Subscriber | None:
        subs = self.by_channel.get(channel)
        return subs.get(client_id) if subs is not None else None

    def subscribers(self, channel: str) -> list[Receiver]:
        return [sub.client for sub in self.by_channel.get(channel, {}).values()]

    def num_subscribers(self, channel: str) -> int:
        return len(self.by_channel.get(channel, ()))

    def num_channels(self) -> int:
        return len(self.by_channel)

    def num_subscriptions(self) -> int:
        return sum(len(s) for s in self.by_channel.values())

    def channels(self) -> Iterator[tuple[str, int]]:
        for channel, subs in self.by_channel.items():
            yield channel, len(subs)

    def position(self, channel: str, client: Receiver) -> StreamPosition | None:
        sub = self.get(channel, client.id)
        if sub is None or not sub.positioned or sub.buffer is not None:
            return None
        return StreamPosition(sub.offset, sub.epoch)
