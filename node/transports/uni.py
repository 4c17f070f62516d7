"""The connect of a unidirectional client (uni WebSocket, uni SSE, uni HTTP-stream, uni GRPC): a connect
request in, a ``connect`` push out, or a ``disconnect`` push when it is refused (there is no reply to carry an
error)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

from node import commands
from node.client import Client
from node.config import ClientConfig
from node.errors import (
    DISCONNECT_BAD_REQUEST,
    DISCONNECT_EXPIRED,
    DISCONNECT_PERMISSION_DENIED,
    DISCONNECT_SERVER_ERROR,
    DISCONNECT_TOO_MANY_REQUESTS,
    Disconnect,
    DisconnectError,
    ReplyError,
)
from node.protocol import codec, proto, rawjson

logger = logging.getLogger(__name__)


def disconnect_message(protocol: str, disconnect: Disconnect, unidirectional: bool) -> bytes:
    """The ``disconnect`` push a streaming transport sends before it ends, in its protocol."""
    out = proto.CODECS[protocol]
    return out.push(out.push_disconnect(disconnect), unidirectional)


# Centrifugo's default mapping of connect error codes to the disconnect a unidirectional client gets (it has no
# reply to carry an error): expired -> reconnect with a fresh token; rate limited -> reconnect later; permission
# denied -> terminal; anything else -> reconnect.
_UNI_CONNECT_ERRORS: Final[Mapping[int, Disconnect]] = {
    109: DISCONNECT_EXPIRED,
    110: DISCONNECT_EXPIRED,
    111: DISCONNECT_TOO_MANY_REQUESTS,
    103: DISCONNECT_PERMISSION_DENIED,
}


def uni_connect_disconnect(cfg: ClientConfig, code: int) -> Disconnect:
    """The disconnect a unidirectional client gets for connect error ``code``: a configured transform
    (``client.connect_code_to_unidirectional_disconnect``) or Centrifugo's default mapping."""
    transforms = cfg.connect_code_to_unidirectional_disconnect
    if transforms.enabled:
        for t in transforms.transforms:
            if t.code == code:
                return Disconnect(t.to.code, t.to.reason)
    return _UNI_CONNECT_ERRORS.get(code, DISCONNECT_SERVER_ERROR)


def parse_connect_request(data: bytes | str) -> dict[str, Any] | None:
    """A unidirectional ConnectRequest (``token``, ``data``, ``subs``, ``name``, ``version``); None if malformed.
    An empty body is an empty request (e.g. anonymous access)."""
    if not data:
        return {}
    raw = data.encode() if isinstance(data, str) else data
    req = rawjson.load_object(raw)
    if req is None:
        return None
    if req.get("data") is not None:
        req["data"] = rawjson.span(raw, ("data",))  # the payload as sent (a connect proxy forwards it)
    return req


async def connect_unidirectional(client: Client, request: dict[str, Any] | None) -> bool:
    """Run the connect of a unidirectional client: on success the ``connect`` push is queued (server-side
    subscriptions from the token included); on failure the client is closed with a disconnect push. True when
    connected."""
    return await connect_unidirectional_code(client, request) == 0


async def connect_unidirectional_code(client: Client, request: dict[str, Any] | None) -> int:
    """``connect_unidirectional``, telling why a connect failed: 0 when connected, else the connect's error or
    disconnect code (before any mapping), which ``connect_code_to_http_response`` transforms match on."""
    if request is None:
        await client.close(DISCONNECT_BAD_REQUEST)
        return DISCONNECT_BAD_REQUEST.code
    try:
        await commands.connect(client, codec.Command(0, "connect", request))
    except ReplyError as e:
        client.node.metrics.reply_error("connect", e.error.code)
        await client.close(uni_connect_disconnect(client.node.config.client, e.error.code))
        return e.error.code
    except DisconnectError as e:
        await client.close(e.disconnect)
        return e.disconnect.code
    except Exception:
        logger.exception("client %s: unidirectional connect failed", client.id)
        await client.close(DISCONNECT_SERVER_ERROR)
        return DISCONNECT_SERVER_ERROR.code
    return 0
