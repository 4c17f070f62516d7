"""Protocol v2 JSON codec: inbound command frames to ``Command`` values, outbound replies and pushes to bytes.

Raw JSON payloads (publication ``data``, ``conn_info``, ``chan_info``) are spliced into output bytes as they
are; they are compact orjson output by construction (the node re-serialises every inbound payload once), so
they never contain a newline that would break the newline-delimited framing. Zero values are omitted as
Centrifugo's easyjson encoder does, except the fields the spec lists as always present.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from node.errors import Error
from node.models import ClientInfo, Publication, StreamStart, SubscribeOptions

# Command fields in protobuf field order: the first one present wins, as in centrifuge's dispatcher.
METHODS: Final = (
    "connect", "subscribe", "unsubscribe", "publish", "presence", "presence_stats", "history",
    "ping", "send", "rpc", "refresh", "sub_refresh",
)
_METHOD_SET: Final = frozenset(METHODS)
MAX_COMMAND_ID: Final = 2**32 - 1


class DecodeError(ValueError):
    """The frame is not a valid sequence of protocol commands (the client gets 3501)."""


@dataclass(frozen=True, slots=True)
class Command:
    """One client command. ``method`` is "" for an empty command, which is the client's pong."""

    id: int
    method: str
    params: Mapping[str, Any]


_EMPTY: Final[Mapping[str, Any]] = {}


def decode_frame(data: bytes | str) -> list[Command]:
    """Split a text frame into commands; one trailing newline is allowed, empty lines are not."""
    if isinstance(data, str):
        data = data.encode()
    if data.endswith(b"\n"):
        data = data[:-1]
    if not data:
        raise DecodeError("empty frame")
    return [_decode_command(line) for line in data.split(b"\n")]


def _decode_command(line: bytes) -> Command:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        raise DecodeError(f"invalid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise DecodeError("command is not a JSON object")
    cmd_id = obj.get("id", 0)
    if cmd_id is None:
        cmd_id = 0
    if not isinstance(cmd_id, int) or isinstance(cmd_id, bool) or not 0 <= cmd_id <= MAX_COMMAND_ID:
        raise DecodeError("invalid command id")
    for key, value in obj.items():
        if key in _METHOD_SET and value is not None:
            if not isinstance(value, dict):
                raise DecodeError(f"{key}: request is not an object")
            return Command(cmd_id, key, value)
    if len(obj) > (1 if "id" in obj else 0):
        # Fields we do not know: an unknown method. An id-less one is still a pong (see client.py).
        return Command(cmd_id, "?", _EMPTY)
    return Command(cmd_id, "", _EMPTY)


def raw(value: Any) -> bytes:
    """Serialise a parsed JSON value to the compact raw form the node stores and splices."""
    return orjson.dumps(value)


# --- outbound building blocks -------------------------------------------------------------------------


def encode_error(error: Error) -> bytes:
    if error.temporary:
        return b'{"code":%d,"message":%s,"temporary":true}' % (error.code, orjson.dumps(error.message))
    return b'{"code":%d,"message":%s}' % (error.code, orjson.dumps(error.message))


def encode_client_info(info: ClientInfo) -> bytes:
    out = b'{"user":%s,"client":%s' % (orjson.dumps(info.user), orjson.dumps(info.client))
    if info.conn_info:
        out += b',"conn_info":' + info.conn_info
    if info.chan_info:
        out += b',"chan_info":' + info.chan_info
    return out + b"}"


def encode_publication(pub: Publication, data: bytes | None = None, *, delta: bool = False) -> bytes:
    """A Publication object; ``data`` replaces the payload (delta subscribers get a JSON string)."""
    out = b'{"data":' + (pub.data if data is None else data)
    if pub.info is not None:
        out += b',"info":' + encode_client_info(pub.info)
    if pub.offset:
        out += b',"offset":%d' % pub.offset
    if pub.tags:
        out += b',"tags":' + orjson.dumps(pub.tags)
    if delta:
        out += b',"delta":true'
    if pub.channel:
        out += b',"channel":' + orjson.dumps(pub.channel)
    return out + b"}"


def encode_publications(pubs: Iterable[Publication]) -> bytes:
    return b"[" + b",".join(encode_publication(p) for p in pubs) + b"]"


def reply(cmd_id: int, method: str, result: bytes = b"{}") -> bytes:
    return b'{"id":%d,"%s":%s}' % (cmd_id, method.encode(), result)


def error_reply(cmd_id: int, error: Error) -> bytes:
    return b'{"id":%d,"error":%s}' % (cmd_id, encode_error(error))


def result_object(fields: Mapping[str, Any], raw_fields: Mapping[str, bytes | None] | None = None) -> bytes:
    """A result object from plain fields (zero values omitted) plus already-encoded raw fields."""
    parts = [b'"%s":%s' % (k.encode(), orjson.dumps(v)) for k, v in fields.items() if v]
    if raw_fields:
        parts.extend(b'"%s":%s' % (k.encode(), v) for k, v in raw_fields.items() if v)
    return b"{" + b",".join(parts) + b"}"


# --- pushes: ``wrap`` turns a Push object into the frame a kind of client receives --------------------

PING_BIDI: Final = b"{}"


def wrap_push(push: bytes, unidirectional: bool) -> bytes:
    """Bidirectional clients get ``{"push": Push}``; unidirectional ones the bare Push."""
    return push if unidirectional else b'{"push":' + push + b"}"


def push_publication(channel: str, pub_obj: bytes) -> bytes:
    return b'{"channel":%s,"pub":%s}' % (orjson.dumps(channel), pub_obj)


def push_join(channel: str, info: ClientInfo) -> bytes:
    return b'{"channel":%s,"join":{"info":%s}}' % (orjson.dumps(channel), encode_client_info(info))


def push_leave(channel: str, info: ClientInfo) -> bytes:
    return b'{"channel":%s,"leave":{"info":%s}}' % (orjson.dumps(channel), encode_client_info(info))


def push_unsubscribe(channel: str, code: int, reason: str) -> bytes:
    return b'{"channel":%s,"unsubscribe":{"code":%d,"reason":%s}}' % (
        orjson.dumps(channel), code, orjson.dumps(reason))


def push_subscribe(channel: str, result: bytes) -> bytes:
    return b'{"channel":%s,"subscribe":%s}' % (orjson.dumps(channel), result)


def push_refresh(expires: bool, ttl: int) -> bytes:
    return b'{"refresh":' + result_object({"expires": expires, "ttl": ttl}) + b"}"


def encode_subscribe_result(opts: SubscribeOptions, start: StreamStart | None, ttl: int) -> bytes:
    """SubscribeResult (reply, connect ``subs`` entry or ``subscribe`` push). Delta subscribers get recovered
    payloads as JSON strings, which their SDK expects once delta is negotiated."""
    fields: dict[str, Any] = {}
    if opts.expire_at:
        fields["expires"] = True
        fields["ttl"] = ttl
    raw_fields: dict[str, bytes | None] = {"data": opts.data}
    if start is not None:
        fields["recoverable"] = opts.enable_recovery
        fields["epoch"] = start.top.epoch
        fields["offset"] = start.reply_offset
        fields["positioned"] = True
        fields["recovered"] = start.recovered
        fields["was_recovering"] = start.was_recovering
        fields["delta"] = opts.delta
        if start.publications:
            if opts.delta:
                raw_fields["publications"] = b"[" + b",".join(
                    encode_publication(p, data=orjson.dumps(p.data.decode())) for p in start.publications) + b"]"
            else:
                raw_fields["publications"] = encode_publications(start.publications)
    return result_object(fields, raw_fields)
