"""The hub: which clients are connected and which are subscribed to what, and synchronous fan-out to them.

No I/O and no awaits here. A broadcast encodes and frames each kind of message at most once (bidirectional
messages are wrapped in ``{"push": ...}``, unidirectional ones are not; delta subscribers get the payload as a
JSON string or a fossil patch; each transport framing gets its own bytes) and hands the same bytes object to
every matching client queue.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING

import orjson

from node.delta import fossil
from node.errors import DISCONNECT_INAPPROPRIATE_PROTOCOL
from node.models import ClientInfo, Publication, StreamPosition
from node.protocol import codec, proto

if TYPE_CHECKING:
    from node.client import Client

# Frame kinds of one broadcast; the cache key is (kind, unidirectional, framing).
_PLAIN, _DELTA_FULL, _DELTA_PATCH = 0, 1, 2
_FrameCache = dict[tuple[int, bool, str], bytes]
# The framing of most connections (bidirectional JSON over WebSocket): its subscribers take the fast path.
COMMON_FRAMING = "ws-text"


class Subscriber:
    """One client's subscription to one channel, as the fan-out loop needs it.

    While ``buffer`` is a list the subscription is being set up (its reply is not queued yet): publications are
    held there and released by ``Hub.release`` in order, so none is lost or delivered before the reply.
    A positioned subscriber tracks the last offset it got; a gap or an epoch change breaks the subscription
    (the client is told "insufficient state" and recovers on resubscribe).
    """

    __slots__ = ("broken", "buffer", "client", "common", "delta", "delta_ready", "epoch", "offset", "positioned",
                 "push_join_leave", "unidirectional")

    def __init__(self, client: Client, *, push_join_leave: bool, positioned: bool, delta: bool) -> None:
        self.client = client
        self.unidirectional = client.unidirectional
        self.push_join_leave = push_join_leave
        self.positioned = positioned
        self.delta = delta
        self.delta_ready = False  # the client holds the previous payload, so it can apply a patch
        self.offset = 0
        self.epoch = ""
        self.broken = False
        self.buffer: list[tuple[Publication, StreamPosition]] | None = []
        # Needs nothing but the shared plain frame: no position, no delta, bidirectional, common framing.
        self.common = not (positioned or delta or client.unidirectional) and client.framing == COMMON_FRAMING

    def accept(self, pub: Publication, sp: StreamPosition, channel: str) -> bool:
        """Position check for one live publication: False drops it (duplicate, or the subscription broke)."""
        if self.broken:
            return False
        if not self.positioned or not pub.offset:
            return True
        if sp.epoch != self.epoch or pub.offset > self.offset + 1:
            self.broken = True
            self.client.insufficient_state(channel)
            return False
        if pub.offset <= self.offset:
            return False
        self.offset = pub.offset
        return True


class Hub:
    __slots__ = ("_clients", "_subs", "_users")

    def __init__(self) -> None:
        self._clients: dict[str, Client] = {}
        # user -> the connection, or {client id: connection} for a user with several: most users have one, and a
        # dict per connection would cost ~200 bytes of each idle connection's memory.
        self._users: dict[str, Client | dict[str, Client]] = {}
        self._subs: dict[str, dict[str, Subscriber]] = {}

    # --- connections ------------------------------------------------------------------------------------

    def add(self, client: Client) -> None:
        self._clients[client.id] = client
        present = self._users.get(client.user)
        if present is None:
            self._users[client.user] = client
        elif isinstance(present, dict):
            present[client.id] = client
        elif present is not client:
            self._users[client.user] = {present.id: present, client.id: client}

    def remove(self, client: Client) -> None:
        self._clients.pop(client.id, None)
        present = self._users.get(client.user)
        if present is client:
            del self._users[client.user]
        elif isinstance(present, dict):
            present.pop(client.id, None)
            if len(present) == 1:
                self._users[client.user] = next(iter(present.values()))
            elif not present:
                del self._users[client.user]

    def clients(self) -> Collection[Client]:
        return self._clients.values()

    def client(self, client_id: str) -> Client | None:
        return self._clients.get(client_id)

    def user_clients(self, user: str) -> Collection[Client]:
        present = self._users.get(user)
        if present is None:
            return ()
        return tuple(present.values()) if isinstance(present, dict) else (present,)

    def num_clients(self) -> int:
        return len(self._clients)

    def num_users(self) -> int:
        return len(self._users)

    def num_user_connections(self, user: str) -> int:
        present = self._users.get(user)
        if present is None:
            return 0
        return len(present) if isinstance(present, dict) else 1

    # --- subscriptions ----------------------------------------------------------------------------------

    def add_sub(self, channel: str, client: Client, *, push_join_leave: bool = False, positioned: bool = False,
                delta: bool = False) -> bool:
        """Register the subscription in buffering mode; True when it is the channel's first local subscriber."""
        subs = self._subs.get(channel)
        first = subs is None
        if subs is None:
            subs = self._subs[channel] = {}
        subs[client.id] = Subscriber(client, push_join_leave=push_join_leave, positioned=positioned, delta=delta)
        return first

    def release(self, channel: str, client: Client, position: StreamPosition | None, *,
                delta_ready: bool = False) -> None:
        """End buffering: from ``position`` on, deliver what arrived meanwhile and then everything live.

        Call right after the subscribe reply is queued, with the position the reply told the client."""
        sub = self._subs.get(channel, {}).get(client.id)
        if sub is None or sub.buffer is None:
            return
        buffered, sub.buffer = sub.buffer, None
        if position is not None:
            sub.offset, sub.epoch = position.offset, position.epoch
        sub.delta_ready = delta_ready
        for pub, sp in buffered:
            if sub.accept(pub, sp, channel):
                frame = self._frame(channel, pub, sub, {})
                if not frame:
                    client.schedule_close(DISCONNECT_INAPPROPRIATE_PROTOCOL)
                    return
                client.enqueue_framed(frame)

    def remove_sub(self, channel: str, client: Client) -> bool:
        """Drop the subscription; True when the channel has no local subscribers left."""
        subs = self._subs.get(channel)
        if subs is None:
            return False
        subs.pop(client.id, None)
        if subs:
            return False
        del self._subs[channel]
        return True

    def subscribers(self, channel: str) -> list[Client]:
        return [sub.client for sub in self._subs.get(channel, {}).values()]

    def num_subscribers(self, channel: str) -> int:
        return len(self._subs.get(channel, ()))

    def num_channels(self) -> int:
        return len(self._subs)

    def num_subscriptions(self) -> int:
        return sum(len(s) for s in self._subs.values())

    def channels(self) -> Iterator[tuple[str, int]]:
        for channel, subs in self._subs.items():
            yield channel, len(subs)

    def position(self, channel: str, client: Client) -> StreamPosition | None:
        sub = self._subs.get(channel, {}).get(client.id)
        if sub is None or not sub.positioned or sub.buffer is not None:
            return None
        return StreamPosition(sub.offset, sub.epoch)

    # --- fan-out (hot path) -----------------------------------------------------------------------------

    def broadcast_publication(self, channel: str, pub: Publication, sp: StreamPosition) -> None:
        subs = self._subs.get(channel)
        if not subs:
            return
        cache: _FrameCache = {}
        common: bytes | None = None
        for sub in subs.values():
            if sub.common and sub.buffer is None:
                # The usual case, kept free of the lookups below.
                if common is None:
                    common = self._frame(channel, pub, sub, cache)
                if common:
                    sub.client.enqueue_framed(common)
                else:
                    sub.client.schedule_close(DISCONNECT_INAPPROPRIATE_PROTOCOL)
            elif sub.buffer is not None:
                sub.buffer.append((pub, sp))
            elif sub.accept(pub, sp, channel):
                frame = self._frame(channel, pub, sub, cache)
                if frame:
                    sub.client.enqueue_framed(frame)
                else:
                    sub.client.schedule_close(DISCONNECT_INAPPROPRIATE_PROTOCOL)

    def _frame(self, channel: str, pub: Publication, sub: Subscriber, cache: _FrameCache) -> bytes:
        """The subscriber's frame of ``pub``, built once per kind; b"" when a JSON client cannot be sent it."""
        client = sub.client
        kind = _PLAIN
        if sub.delta:
            kind = _DELTA_PATCH if sub.delta_ready and pub.delta and pub.prev_data is not None else _DELTA_FULL
            sub.delta_ready = True
        key = (kind, sub.unidirectional, client.framing)
        frame = cache.get(key)
        if frame is None:
            frame_encoded = getattr(client.transport, "frame_encoded", None)
            if frame_encoded is not None:  # protobuf: encoded from the Publication itself (no delta)
                frame = frame_encoded(proto.publication(channel, pub, sub.unidirectional))
            elif not _is_json(pub.data):
                # A binary payload (published with b64data or over GRPC): a JSON client cannot receive it, and
                # Centrifugo closes such a client with 3506 rather than break its stream.
                frame = b""
            else:
                frame = client.frame(
                    codec.wrap_push(codec.push_publication(channel, _pub_object(pub, kind)), sub.unidirectional))
            cache[key] = frame
        return frame

    def broadcast_join(self, channel: str, info: ClientInfo) -> None:
        self._broadcast_join_leave(channel, codec.push_join(channel, info))

    def broadcast_leave(self, channel: str, info: ClientInfo) -> None:
        self._broadcast_join_leave(channel, codec.push_leave(channel, info))

    def _broadcast_join_leave(self, channel: str, push: bytes) -> None:
        subs = self._subs.get(channel)
        if not subs:
            return
        cache: dict[tuple[bool, str], bytes] = {}
        for sub in subs.values():
            if sub.push_join_leave and sub.buffer is None:
                client = sub.client
                key = (sub.unidirectional, client.framing)
                frame = cache.get(key)
                if frame is None:
                    frame = cache[key] = client.frame(codec.wrap_push(push, sub.unidirectional))
                client.enqueue_framed(frame)


def _is_json(data: bytes) -> bool:
    """Checked once per JSON frame kind of a broadcast (payloads published as JSON always are)."""
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return True


def _pub_object(pub: Publication, kind: int) -> bytes:
    if kind == _PLAIN:
        return codec.encode_publication(pub)
    if kind == _DELTA_PATCH and pub.prev_data is not None:
        patch = fossil.create(pub.prev_data, pub.data)
        if len(patch) < len(pub.data):
            return codec.encode_publication(pub, data=orjson.dumps(patch.decode()), delta=True)
    return codec.encode_publication(pub, data=orjson.dumps(pub.data.decode()))
