"""The hub: which clients are connected and which are subscribed to what, and synchronous fan-out to them.

No I/O and no awaits here. A broadcast encodes the push once per kind of subscriber (bidirectional frames are
wrapped in ``{"push": ...}``, unidirectional ones are not) and hands the same bytes to every client queue.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING

from node.models import ClientInfo, Publication, StreamPosition
from node.protocol import codec

if TYPE_CHECKING:
    from node.client import Client


class Subscriber:
    """One client's subscription to one channel, as the fan-out loop needs it."""

    __slots__ = ("client", "push_join_leave", "unidirectional")

    def __init__(self, client: Client, *, push_join_leave: bool) -> None:
        self.client = client
        self.unidirectional = client.unidirectional
        self.push_join_leave = push_join_leave


class Hub:
    __slots__ = ("_clients", "_subs", "_users")

    def __init__(self) -> None:
        self._clients: dict[str, Client] = {}
        self._users: dict[str, dict[str, Client]] = {}
        self._subs: dict[str, dict[str, Subscriber]] = {}

    # --- connections ------------------------------------------------------------------------------------

    def add(self, client: Client) -> None:
        self._clients[client.id] = client
        self._users.setdefault(client.user, {})[client.id] = client

    def remove(self, client: Client) -> None:
        self._clients.pop(client.id, None)
        users = self._users.get(client.user)
        if users is not None:
            users.pop(client.id, None)
            if not users:
                del self._users[client.user]

    def clients(self) -> Collection[Client]:
        return self._clients.values()

    def user_clients(self, user: str) -> Collection[Client]:
        return tuple(self._users.get(user, {}).values())

    def num_clients(self) -> int:
        return len(self._clients)

    def num_users(self) -> int:
        return len(self._users)

    def num_user_connections(self, user: str) -> int:
        return len(self._users.get(user, ()))

    # --- subscriptions ----------------------------------------------------------------------------------

    def add_sub(self, channel: str, client: Client, *, push_join_leave: bool = False) -> bool:
        """Register the subscription; True when it is the channel's first local subscriber."""
        subs = self._subs.get(channel)
        first = subs is None
        if subs is None:
            subs = self._subs[channel] = {}
        subs[client.id] = Subscriber(client, push_join_leave=push_join_leave)
        return first

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

    def num_subscribers(self, channel: str) -> int:
        return len(self._subs.get(channel, ()))

    def num_channels(self) -> int:
        return len(self._subs)

    def num_subscriptions(self) -> int:
        return sum(len(s) for s in self._subs.values())

    def channels(self) -> Iterator[tuple[str, int]]:
        for channel, subs in self._subs.items():
            yield channel, len(subs)

    # --- fan-out (hot path) -----------------------------------------------------------------------------

    def broadcast_publication(self, channel: str, pub: Publication, sp: StreamPosition) -> None:
        subs = self._subs.get(channel)
        if not subs:
            return
        push = codec.push_publication(channel, codec.encode_publication(pub))
        bidi: bytes | None = None
        for sub in subs.values():
            if sub.unidirectional:
                sub.client.enqueue(push)
            else:
                if bidi is None:
                    bidi = codec.wrap_push(push, False)
                sub.client.enqueue(bidi)

    def broadcast_join(self, channel: str, info: ClientInfo) -> None:
        self._broadcast_join_leave(channel, codec.push_join(channel, info))

    def broadcast_leave(self, channel: str, info: ClientInfo) -> None:
        self._broadcast_join_leave(channel, codec.push_leave(channel, info))

    def _broadcast_join_leave(self, channel: str, push: bytes) -> None:
        subs = self._subs.get(channel)
        if not subs:
            return
        bidi = codec.wrap_push(push, False)
        for sub in subs.values():
            if sub.push_join_leave:
                sub.client.enqueue(push if sub.unidirectional else bidi)
