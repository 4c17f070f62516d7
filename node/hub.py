"""The hub: which clients are connected, and synchronous fan-out to the subscribers of a channel (the map of
who is subscribed to what belongs to ``subscriptions.py``; the hub reads it).

No I/O and no awaits here. A broadcast encodes and frames each kind of message at most once (bidirectional
messages are wrapped in a Reply's ``push``, unidirectional ones are not; delta subscribers get the full payload
or a fossil patch; each transport framing, and so each protocol, gets its own bytes) and hands the same bytes object to
every matching client queue.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Generic, TypeVar

from node.delta import fossil
from node.errors import DISCONNECT_INAPPROPRIATE_PROTOCOL
from node.models import ClientInfo, Publication, StreamPosition
from node.protocol.codec import Codec
from node.subscriptions import (
    FRAME_DELTA_FULL,
    FRAME_DELTA_PATCH,
    FRAME_PLAIN,
    LANE_SEQUENCED,
    LANE_SHARED,
    Cursor,
    Receiver,
    Subscriber,
)

C = TypeVar("C", bound=Receiver)  # the node's connections: the hub hands back what it was given

# One broadcast's frames by ``Subscriber.frame_keys`` (frame kind, direction, framing).
_FrameCache = dict[str, bytes]


class Hub(Generic[C]):
    __slots__ = ("_clients", "_subs", "_users")

    def __init__(self, subscriptions: dict[str, dict[str, Subscriber]]) -> None:
        self._clients: dict[str, C] = {}
        # user -> the connection, or {client id: connection} for a user with several: most users have one, and a
        # dict per connection would cost ~200 bytes of each idle connection's memory.
        self._users: dict[str, C | dict[str, C]] = {}
        self._subs = subscriptions  # Subscriptions.by_channel, the same dict

    # --- connections ------------------------------------------------------------------------------------

    def add(self, client: C) -> None:
        self._clients[client.id] = client
        present = self._users.get(client.user)
        if present is None:
            self._users[client.user] = client
        elif isinstance(present, dict):
            present[client.id] = client
        elif present is not client:
            self._users[client.user] = {present.id: present, client.id: client}

    def remove(self, client: C) -> None:
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

    def clients(self) -> Collection[C]:
        return self._clients.values()

    def client(self, client_id: str) -> C | None:
        return self._clients.get(client_id)

    def user_clients(self, user: str) -> Collection[C]:
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

    def release(self, channel: str, client: Receiver, position: StreamPosition | None, *,
                delta_ready: bool = False) -> None:
        """End buffering: from ``position`` on, deliver what arrived meanwhile and then everything live.

        Call right after the subscribe reply is queued, with the position the reply told the client."""
        sub = self._subs.get(channel, {}).get(client.id)
        if sub is None or sub.buffer is None:
            return
        sub.delta_ready = delta_ready
        for pub, sp in sub.go_live(position):
            if sub.accept(pub, sp, channel) and (sub.tags_filter is None or sub.tags_filter.matches(pub.tags)):
                frame = self._frame(channel, pub, sub, {})
                if not frame:
                    client.schedule_close(DISCONNECT_INAPPROPRIATE_PROTOCOL)
                    return
                client.enqueue_framed(frame)

    # --- fan-out (hot path) -----------------------------------------------------------------------------

    def broadcast_publication(self, channel: str, pub: Publication, sp: StreamPosition) -> None:
        subs = self._subs.get(channel)
        if not subs:
            return
        cache: _FrameCache = {}
        shared: bytes | None = None  # the plain frame of the common framing
        matched: dict[str, bool] | None = None  # tags filter key -> whether this publication matches it
        # A sequenced subscriber whose cursor is at the previous offset of this epoch takes the shared frame at
        # once (no positioned publication has offset 0, so an unpositioned one never passes this way).
        offset, epoch = pub.offset, sp.epoch
        previous = offset - 1
        moved: Cursor | None = None  # the cursor moved to this publication, which the subscribers in step share
        shared_lane, sequenced_lane = LANE_SHARED, LANE_SEQUENCED  # locals: read per subscriber
        for sub in subs.values():
            if sub.lane is not shared_lane:
                if sub.lane is sequenced_lane:
                    cursor = sub.cursor
                    if cursor is not moved:
                        if cursor.offset == previous and cursor.epoch == epoch:
                            # In step: the first such cursor moves to this publication, and every other
                            # subscriber in step joins it, so the next publication is checked once for all of them.
                            if moved is None:
                                cursor.offset = offset
                                moved = cursor
                            else:
                                sub.cursor = moved
                        elif not sub.accept(pub, sp, channel):  # a duplicate, a gap, or one without offset
                            continue
                else:
                    if sub.buffer is not None:
                        sub.buffer.append((pub, sp))
                        continue
                    if not sub.accept(pub, sp, channel):
                        continue
                    tf = sub.tags_filter
                    if tf is not None:
                        # Evaluated once per distinct filter of the broadcast, however many subscribers share it.
                        if matched is None:
                            matched = {}
                        hit = matched.get(tf.key)
                        if hit is None:
                            hit = matched[tf.key] = tf.matches(pub.tags)
                        if not hit:
                            continue
                    frame = self._frame(channel, pub, sub, cache)
                    if frame:
                        sub.client.enqueue_framed(frame)
                    else:
                        sub.client.schedule_close(DISCONNECT_INAPPROPRIATE_PROTOCOL)
                    continue
            # The shared and sequenced lanes: the same bytes for all of them, built for the first.
            if shared is None:
                shared = self._frame(channel, pub, sub, cache)
            if shared:
                sub.client.enqueue_framed(shared)
            else:
                sub.client.schedule_close(DISCONNECT_INAPPROPRIATE_PROTOCOL)

    def _frame(self, channel: str, pub: Publication, sub: Subscriber, cache: _FrameCache) -> bytes:
        """The subscriber's frame of ``pub``, built once per kind; b"" when a JSON client cannot be sent it."""
        kind = FRAME_PLAIN
        if sub.delta:
            # A map subscriber holds every key's value since its state load, so a key's patch (against the key's
            # previous value) needs no earlier publication of this subscription.
            ready = sub.delta_ready or pub.key
            kind = FRAME_DELTA_PATCH if ready and pub.delta and pub.prev_data is not None else FRAME_DELTA_FULL
            sub.delta_ready = True
        key = sub.frame_keys[kind]
        frame = cache.get(key)
        if frame is None:
            client = sub.client
            out = client.codec
            if not out.carries(pub.data):
                # A binary payload (published by a protobuf client, with b64data or over GRPC): a JSON client
                # cannot receive it, and centrifuge closes such a client with 3506 rather than break its stream.
                # Checked once per frame kind of a broadcast.
                frame = b""
            else:
                frame = client.frame(out.push(out.push_publication(channel, _pub_object(out, pub, kind)),
                                              sub.unidirectional))
            cache[key] = frame
        return frame

    def broadcast_join(self, channel: str, info: ClientInfo) -> None:
        self._broadcast_join_leave(channel, info, join=True)

    def broadcast_leave(self, channel: str, info: ClientInfo) -> None:
        self._broadcast_join_leave(channel, info, join=False)

    def _broadcast_join_leave(self, channel: str, info: ClientInfo, *, join: bool) -> None:
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
                    out = client.codec
                    push = out.push_join(channel, info) if join else out.push_leave(channel, info)
                    frame = cache[key] = client.frame(out.push(push, sub.unidirectional))
                client.enqueue_framed(frame)


def _pub_object(out: Codec, pub: Publication, kind: int) -> bytes:
    """The Publication a kind of subscriber gets: delta subscribers a fossil patch against the previous payload
    when the publisher asked for delta and it is smaller, else the full payload (as a JSON string in JSON)."""
    if kind == FRAME_PLAIN:
        return out.publication(pub)
    if kind == FRAME_DELTA_PATCH and pub.prev_data is not None:
        patch = fossil.create(pub.prev_data, pub.data)
        if len(patch) < len(pub.data):
            return out.publication(pub, data=out.delta_data(patch), delta=True)
    return out.publication(pub, data=out.delta_data(pub.data))
