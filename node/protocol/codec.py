"""Protocol v2 JSON codec: inbound command frames to ``Command`` values, outbound replies and pushes to bytes.

Payloads (publication ``data``, ``conn_info``, ``chan_info``) are opaque bytes, spliced into output as they
were published. A command's ``data`` is the exact span of the JSON value the client sent (``rawjson``), never
a re-serialisation. As in centrifuge, raw newlines are dropped from a payload when it is written (they can only
be whitespace between JSON tokens, and a newline separates messages in a frame). Zero values are omitted as
Centrifugo's easyjson encoder does, except the fields the spec lists as always present.

``JsonCodec`` bundles the outbound builders behind the ``Codec`` protocol, which the protobuf codec
(``proto.ProtobufCodec``) implements too: a connection picks one by its protocol and builds every message it
sends with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import orjson

from node.errors import DISCONNECT_BAD_REQUEST, DISCONNECT_INAPPROPRIATE_PROTOCOL, Disconnect, DisconnectError, Error
from node.models import ClientInfo, PresenceStats, Publication, StreamPosition, StreamStart, SubscribeOptions
from node.protocol import rawjson

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
    """One client command. ``method`` is "" for an empty command, which is the client's pong. ``data`` is the
    request's payload as the client sent it (the exact JSON span, or protobuf bytes), None if it has none."""

    id: int
    method: str
    params: Mapping[str, Any]
    data: bytes | None = None


_EMPTY: Final[Mapping[str, Any]] = {}


def param(params: Mapping[str, Any], key: str, kind: type, default: Any) -> Any:
    """A request field of the given type (null or absent: ``default``); another type is a bad request (3501)."""
    value = params.get(key, default)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise DisconnectError(DISCONNECT_BAD_REQUEST)
    return value


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
            data = None
            if value.get("data") is not None:
                # The payload as sent, also in the params (a proxy hook forwards it): never re-serialised.
                value["data"] = data = rawjson.span(line, (key, "data"))
            return Command(cmd_id, key, value, data)
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


def payload(data: bytes) -> bytes:
    """A raw JSON payload as it goes into a message: newlines dropped (centrifuge does the same), since they
    separate messages; in valid JSON they are only whitespace between tokens."""
    return data.replace(b"\n", b"") if b"\n" in data else data


def encode_client_info(info: ClientInfo) -> bytes:
    out = b'{"user":%s,"client":%s' % (orjson.dumps(info.user), orjson.dumps(info.client))
    if info.conn_info:
        out += b',"conn_info":' + payload(info.conn_info)
    if info.chan_info:
        out += b',"chan_info":' + payload(info.chan_info)
    return out + b"}"


def encode_publication(pub: Publication, data: bytes | None = None, *, delta: bool = False) -> bytes:
    """A Publication object; ``data`` replaces the payload (delta subscribers get a JSON string)."""
    body = payload(pub.data) if data is None else data
    # An empty payload (a map removal, a presence map entry that carries only its ClientInfo) has no data field,
    # as centrifuge's encoder omits empty bytes. A delta subscriber's is the JSON string "" (not empty).
    out = b'{"data":' + body if body else b"{"
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
    if pub.key:
        out += b',"key":' + orjson.dumps(pub.key) + (b',"removed":true' if pub.removed else b"")
    if not body:
        out = b"{" + out[2:]  # the comma of the first field that follows no data
    return out + b"}"


def encode_publications(pubs: Iterable[Publication], *, as_strings: bool = False) -> bytes:
    """A JSON array of publications; ``as_strings``: payloads as JSON strings (a delta subscriber's full values)."""
    if as_strings:
        return b"[" + b",".join(encode_publication(p, data=json_string(p.data)) for p in pubs) + b"]"
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
    raw_fields: dict[str, bytes | None] = {"data": payload(opts.data) if opts.data else None}
    fields["publish_debounce"] = opts.publish_debounce
    if start is not None:
        fields["recoverable"] = opts.enable_recovery
        fields["epoch"] = start.top.epoch
        fields["offset"] = start.reply_offset
        fields["positioned"] = True
        fields["recovered"] = start.recovered
        fields["was_recovering"] = start.was_recovering
        fields["delta"] = opts.delta
        if start.publications:
            check_json(start.publications)
            raw_fields["publications"] = encode_publications(start.publications, as_strings=opts.delta)
    return result_object(fields, raw_fields)


def is_json(data: bytes) -> bool:
    """Whether a payload can go into a JSON message (an empty one is written as null)."""
    if not data:
        return True
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return True


def json_string(data: bytes) -> bytes:
    """Bytes as a JSON string: how a delta subscriber gets a payload or a fossil patch."""
    return orjson.dumps(data.decode("utf-8", "replace"))


def check_json(pubs: Iterable[Publication]) -> None:
    """A reply holding a binary payload cannot be written as JSON: centrifuge closes such a client with 3506."""
    if not all(is_json(p.data) for p in pubs):
        raise DisconnectError(DISCONNECT_INAPPROPRIATE_PROTOCOL)


# --- the codec interface ----------------------------------------------------------------------------------


class Codec(Protocol):
    """Builds every message a connection sends, in its protocol. Results and pushes are built first and then
    wrapped (``reply``, ``push``), so their bytes can be shared, as a broadcast does per protocol."""

    @property
    def ping(self) -> bytes: ...  # the server's ping message

    @property
    def empty(self) -> bytes: ...  # an empty result object

    def reply(self, cmd_id: int, method: str, result: bytes) -> bytes: ...
    def error_reply(self, cmd_id: int, error: Error) -> bytes: ...
    def push(self, push: bytes, unidirectional: bool) -> bytes: ...
    def carries(self, data: bytes) -> bool: ...  # whether a payload can be written in this protocol
    def delta_data(self, data: bytes) -> bytes: ...  # a delta subscriber's payload or patch
    def publication(self, pub: Publication, data: bytes | None = None, *, delta: bool = False) -> bytes: ...
    def push_publication(self, channel: str, pub: bytes) -> bytes: ...
    def push_join(self, channel: str, info: ClientInfo) -> bytes: ...
    def push_leave(self, channel: str, info: ClientInfo) -> bytes: ...
    def push_unsubscribe(self, channel: str, code: int, reason: str) -> bytes: ...
    def push_subscribe(self, channel: str, opts: SubscribeOptions, start: StreamStart | None, ttl: int) -> bytes: ...
    def push_refresh(self, expires: bool, ttl: int) -> bytes: ...
    def push_disconnect(self, disconnect: Disconnect) -> bytes: ...
    def connect_result(self, fields: Mapping[str, Any], data: bytes | None,
                       subs: Sequence[tuple[str, bytes]], *, push: bool) -> bytes: ...
    def subscribe_result(self, opts: SubscribeOptions, start: StreamStart | None, ttl: int) -> bytes: ...
    def refresh_result(self, client: str, expires: bool, ttl: int) -> bytes: ...
    def sub_refresh_result(self, expires: bool, ttl: int) -> bytes: ...
    def presence_result(self, entries: Mapping[str, ClientInfo]) -> bytes: ...
    def presence_stats_result(self, stats: PresenceStats) -> bytes: ...
    def history_result(self, pubs: Sequence[Publication], position: StreamPosition) -> bytes: ...
    def rpc_result(self, data: bytes | None) -> bytes: ...


class JsonCodec:
    """The JSON protocol: results are JSON objects, replies ``{"id":N,"<method>":result}``."""

    __slots__ = ()
    ping: Final = PING_BIDI
    empty: Final = b"{}"

    # The module's builders, as the interface names them.
    reply, error_reply, push = staticmethod(reply), staticmethod(error_reply), staticmethod(wrap_push)
    carries, delta_data = staticmethod(is_json), staticmethod(json_string)
    publication, push_publication = staticmethod(encode_publication), staticmethod(push_publication)
    push_join, push_leave = staticmethod(push_join), staticmethod(push_leave)
    push_unsubscribe, push_refresh = staticmethod(push_unsubscribe), staticmethod(push_refresh)
    subscribe_result = staticmethod(encode_subscribe_result)

    @staticmethod
    def push_subscribe(channel: str, opts: SubscribeOptions, start: StreamStart | None, ttl: int) -> bytes:
        return push_subscribe(channel, encode_subscribe_result(opts, start, ttl))

    @staticmethod
    def push_disconnect(disconnect: Disconnect) -> bytes:
        return b'{"disconnect":{"code":%d,"reason":%s}}' % (disconnect.code, orjson.dumps(disconnect.reason))

    @staticmethod
    def connect_result(fields: Mapping[str, Any], data: bytes | None, subs: Sequence[tuple[str, bytes]], *,
                       push: bool) -> bytes:
        raw_fields = {"data": payload(data) if data else None}
        if subs:
            raw_fields["subs"] = b"{" + b",".join(orjson.dumps(ch) + b":" + sub for ch, sub in subs) + b"}"
        result = result_object(fields, raw_fields)
        return b'{"connect":' + result + b"}" if push else result

    @staticmethod
    def refresh_result(client: str, expires: bool, ttl: int) -> bytes:
        return result_object({"client": client, "expires": expires, "ttl": ttl})

    @staticmethod
    def sub_refresh_result(expires: bool, ttl: int) -> bytes:
        return result_object({"expires": expires, "ttl": ttl})

    @staticmethod
    def presence_result(entries: Mapping[str, ClientInfo]) -> bytes:
        body = b",".join(orjson.dumps(cid) + b":" + encode_client_info(info) for cid, info in entries.items())
        return b'{"presence":{' + body + b"}}"

    @staticmethod
    def presence_stats_result(stats: PresenceStats) -> bytes:
        return b'{"num_clients":%d,"num_users":%d}' % (stats.num_clients, stats.num_users)

    @staticmethod
    def history_result(pubs: Sequence[Publication], position: StreamPosition) -> bytes:
        check_json(pubs)
        return b'{"publications":%s,"epoch":%s,"offset":%d}' % (
            encode_publications(pubs), orjson.dumps(position.epoch), position.offset)

    @staticmethod
    def rpc_result(data: bytes | None) -> bytes:
        return b'{"data":' + payload(data) + b"}" if data else b"{}"


JSON: Final = JsonCodec()
