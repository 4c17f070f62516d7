"""The connections API (Centrifugo PRO's ``connections``): every node describes its matching connections in
answer to a control-channel survey, and the node asked merges the answers into one map by client id."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from node.node import Connection

SURVEY: Final = "connections"


def describe(client: Connection, node_id: str) -> dict[str, Any]:
    """One connection as a ``ConnectionInfo`` JSON object; ``info`` and ``meta`` stay raw JSON bytes."""
    state: dict[str, Any] = {"channels": {ch: {} for ch in client.channels}}
    if client.meta is not None:
        state["meta"] = client.meta
    return {"app_name": client.app_name, "app_version": client.app_version, "transport": client.transport.name,
            "protocol": client.protocol, "user": client.user, "state": state,
            "connected_at_ms": int(client.connected_at * 1000), "info": client.conn_info, "node": node_id}


def matching(clients: Iterable[Connection], user: str, channel: str) -> Iterable[Connection]:
    for client in clients:
        if (not user or client.user == user) and (not channel or channel in client.channels):
            yield client
