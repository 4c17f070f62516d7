"""The connections API (Centrifugo PRO's ``connections``): every node describes its matching connections in
answer to a control-channel survey, and the node asked merges the answers into one map by client id."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any, Final, Protocol, TypeVar

from node.models import Identity
from node.transport import Transport

SURVEY: Final = "connections"


class Described(Identity, Protocol):
    """A connection as the connections API describes it (the node's ``Connection`` is one)."""

    transport: Transport
    protocol: str
    app_name: str
    app_version: str
    meta: bytes | None
    conn_info: bytes | None
    connected_at: float

    @property
    def channels(self) -> Collection[str]: ...  # read-only, so the client's dict of channel states fits


D = TypeVar("D", bound=Described)


def describe(client: Described, node_id: str) -> dict[str, Any]:
    """One connection as a ``ConnectionInfo`` JSON object; ``info`` and ``meta`` stay raw JSON bytes."""
    state: dict[str, Any] = {"channels": {ch: {} for ch in client.channels}}
    if client.meta is not None:
        state["meta"] = client.meta
    return {"app_name": client.app_name, "app_version": client.app_version, "transport": client.transport.name,
            "protocol": client.protocol, "user": client.user, "state": state,
            "connected_at_ms": int(client.connected_at * 1000), "info": client.conn_info, "node": node_id}


def matching(clients: Iterable[D], user: str, channel: str) -> Iterable[D]:
    for client in clients:
        if (not user or client.user == user) and (not channel or channel in client.channels):
            yield client
