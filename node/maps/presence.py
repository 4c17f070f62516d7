"""Map presence (Centrifugo 6.8's ``map_clients`` / ``map_users``): a subscriber of channel C, of any
subscription type, appears in the map channels its namespace names by prefix.

* ``map_clients_presence_channel_prefix`` P: key = the client id in channel P + C, its ClientInfo attached. The
  key is removed when the subscription ends; its ``key_ttl`` cleans up after a node that died.
* ``map_users_presence_channel_prefix`` P: key = the user id in P + C (anonymous connections are not listed).
  Never removed on unsubscribe (the user may have other connections): it expires ``key_ttl`` after the last
  refresh, which also rides out quick reconnects.

Joining and the periodic refresh are one operation: an entry already there only has its TTL prolonged (no
stream entry, nothing sent to the presence map's subscribers); a missing one is published, which subscribers
see as a join. Removals (and expiries) reach them as removed keys, as on any map channel."""

from __future__ import annotations

from typing import Any, Protocol

from node.errors import ReplyError
from node.maps.host import MapHost
from node.maps.service import MapService
from node.models import ClientInfo


class Member(Protocol):
    """A subscriber as its presence entries name it."""

    @property
    def id(self) -> str: ...

    @property
    def user(self) -> str: ...


class MapPresence:
    __slots__ = ("_maps", "_node")

    def __init__(self, node: MapHost[Any], maps: MapService[Any]) -> None:
        self._node = node  # for its policy, which a config reload replaces
        self._maps = maps

    def _channels(self, channel: str) -> tuple[str, str]:
        """The (clients, users) presence channels of ``channel``; "" where its namespace names none."""
        try:
            ns = self._node.policy.namespace(channel)
        except ReplyError:
            return "", ""  # its namespace went away in a config reload
        clients, users = ns.map_clients_presence_channel_prefix, ns.map_users_presence_channel_prefix
        return (clients + channel if clients else "", users + channel if users else "")

    async def present(self, client: Member, channel: str, info: ClientInfo) -> None:
        """On subscribe and on every presence refresh of the subscription."""
        clients, users = self._channels(channel)
        if clients:
            await self._keep(clients, client.id, info)
        if users and client.user:
            await self._keep(users, client.user, None)

    def leaves_entries(self, channel: str) -> bool:
        """Whether a subscription to ``channel`` leaves map entries behind to remove when it ends: its map
        client presence, or its own key of a map with ``remove_client_on_unsubscribe``."""
        try:
            ns = self._node.policy.namespace(channel)
        except ReplyError:
            return False
        return bool(ns.map_clients_presence_channel_prefix) or \
            (ns.subscription_type == "map" and ns.map.remove_client_on_unsubscribe)

    async def gone(self, client: Member, channel: str) -> None:
        """The subscription ended: its client entry goes now; the user entry is left to its TTL."""
        clients, _ = self._channels(channel)
        if clients:
            await self._maps.remove(clients, client.id)

    async def _keep(self, channel: str, key: str, info: ClientInfo | None) -> None:
        maps = self._maps
        if not await maps.store.touch(channel, key, maps.options(channel).key_ttl):
            await maps.publish(channel, key, b"", info=info)
