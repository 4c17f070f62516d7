"""Server-side actions on a user's connections wherever they are connected (the server API's subscribe,
unsubscribe, disconnect and refresh, behind ``Node``'s methods of those names). Each is broadcast on the control
channel and run by every node, this one first, on its own matching connections: all of the user's, or the one
``client_id`` (of that user, when both are given)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Collection
from typing import Any, Generic, Protocol, TypeVar

from node.control import Controller
from node.errors import DISCONNECT_EXPIRED, UNSUBSCRIBE_SERVER, Disconnect, Unsubscribe
from node.hub import Hub
from node.models import ClientState, StreamPosition, SubscribeOptions
from node.subscriptions import Receiver, Subscribable, SubscribeSteps

# The control channel's action names (every node registers the same).
SUBSCRIBE, UNSUBSCRIBE, DISCONNECT, REFRESH = "subscribe", "unsubscribe", "disconnect", "refresh"


class Target(Receiver, Subscribable, Protocol):
    """A connection as these actions reach it."""

    conn_info: bytes | None

    def set_expire_at(self, expire_at: int) -> None: ...

    async def unsubscribe(self, channel: str, unsub: Unsubscribe) -> None: ...

    async def close(self, disconnect: Disconnect) -> None: ...


C = TypeVar("C", bound=Target)


def _ttl(expire_at: int) -> int:
    """Seconds left until ``expire_at`` (0 when it never expires)."""
    return max(int(expire_at - time.time()), 0) if expire_at else 0


class UserActions(Generic[C]):
    """The actions of one node: ``hub`` finds its connections, ``steps`` (the node) subscribes one of them."""

    def __init__(self, controller: Controller, hub: Hub[C], steps: SubscribeSteps[C]) -> None:
        self._controller = controller
        self._hub = hub
        self._steps = steps
        controller.on_action(SUBSCRIBE, self._on_subscribe)
        controller.on_action(UNSUBSCRIBE, self._on_unsubscribe)
        controller.on_action(DISCONNECT, self._on_disconnect)
        controller.on_action(REFRESH, self._on_refresh)

    # --- the actions, sent to every node -------------------------------------------------------------------

    async def subscribe(self, user: str, channel: str, opts: SubscribeOptions, *, client_id: str = "") -> None:
        await self._controller.broadcast(SUBSCRIBE, {"user": user, "channel": channel, "client": client_id,
                                                     "opts": dataclasses.asdict(opts)})

    async def unsubscribe(self, user: str, channel: str, *, client_id: str = "") -> None:
        await self._controller.broadcast(UNSUBSCRIBE, {"user": user, "channel": channel, "client": client_id})

    async def disconnect(self, user: str, disconnect: Disconnect, *, client_id: str = "",
                         whitelist: Collection[str] = ()) -> None:
        await self._controller.broadcast(DISCONNECT, {"user": user, "client": client_id, "whitelist": list(whitelist),
                                                      "code": disconnect.code, "reason": disconnect.reason})

    async def refresh(self, user: str, *, client_id: str = "", expired: bool = False, expire_at: int = 0,
                      info: bytes | None = None) -> None:
        await self._controller.broadcast(REFRESH, {"user": user, "client": client_id, "expired": expired,
                                                   "expire_at": expire_at, "info": info})

    # --- run on each node, on its own connections ------------------------------------------------------------

    def _targets(self, user: str, client_id: str) -> list[C]:
        if client_id:
            client = self._hub.client(client_id)
            if client is None or (user and client.user != user):
                return []
            return [client]
        return [c for c in self._hub.user_clients(user) if c.state is ClientState.CONNECTED]

    async def _on_subscribe(self, p: dict[str, Any]) -> None:
        raw = dict(p["opts"])
        since = raw.pop("recover_since", None)
        opts = SubscribeOptions(**raw, recover_since=StreamPosition(**since) if since else None)
        channel, steps = p["channel"], self._steps
        for client in self._targets(p["user"], p["client"]):
            if channel in client.channels or channel in client.subscribing:
                continue
            client.start_subscribing(channel)
            try:
                start = await steps.subscribe_client(client, channel, opts, server_side=True, since=opts.recover_since)
            finally:
                client.done_subscribing(channel)
            out = client.codec
            client.enqueue(out.push(out.push_subscribe(channel, opts, start, _ttl(opts.expire_at)),
                                    client.unidirectional))
            steps.start_delivery(client, channel, start)
            await steps.after_subscribe(client, channel, opts)

    async def _on_unsubscribe(self, p: dict[str, Any]) -> None:
        for client in self._targets(p["user"], p["client"]):
            await client.unsubscribe(p["channel"], UNSUBSCRIBE_SERVER)

    async def _on_disconnect(self, p: dict[str, Any]) -> None:
        keep = set(p["whitelist"])
        disconnect = Disconnect(p["code"], p["reason"])
        for client in self._targets(p["user"], p["client"]):
            if client.id not in keep:
                await client.close(disconnect)

    async def _on_refresh(self, p: dict[str, Any]) -> None:
        expire_at: int = p["expire_at"]
        info: bytes | None = p["info"]
        for client in self._targets(p["user"], p["client"]):
            if p["expired"]:
                await client.close(DISCONNECT_EXPIRED)
                continue
            if info is not None:
                client.conn_info = info
            client.set_expire_at(expire_at)
            out = client.codec
            client.enqueue(out.push(out.push_refresh(bool(expire_at), _ttl(expire_at)), client.unidirectional))
