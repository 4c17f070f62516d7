"""Protocol v2 over protobuf: varint-length-delimited ``Command`` messages in, ``Reply`` messages out.

Inbound commands become the same ``Command`` values the JSON decoder yields; ``bytes`` fields (``data``) stay
bytes, since a protobuf client's payloads are opaque (binary or not). Outbound, ``ProtobufCodec`` builds each
message natively from the node's values, so payloads go out byte for byte as they were published. Results are
serialised messages and envelopes (``Reply``, ``Push``) are spliced around them by field number, the same way
the JSON codec splices raw JSON, so a broadcast encodes a publication once per protocol.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Final

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.protobuf.message import Message

from node.errors import Disconnect, Error
from node.models import ClientInfo, PresenceStats, Publication, StreamPosition, StreamStart, SubscribeOptions
from node.protocol import client_pb2 as pb
from node.protocol.codec import JSON, MAX_COMMAND_ID, METHODS, Codec, Command, DecodeError
from node.protocol.pbjson import is_map, map_value

_EMPTY: Final[Mapping[str, Any]] = {}
_MAX_VARINT_BYTES: Final = 10


# --- varint framing -------------------------------------------------------------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def split_delimited(data: bytes) -> Iterator[bytes]:
    """The messages of a frame, each prefixed with its length as an unsigned varint."""
    pos, end = 0, len(data)
    while pos < end:
        length, shift = 0, 0
        while True:
            if pos >= end or shift >= 7 * _MAX_VARINT_BYTES:
                raise DecodeError("truncated length prefix")
            byte = data[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if pos + length > end:
            raise DecodeError("truncated message")
        yield data[pos:pos + length]
        pos += length


# --- inbound ----------------------------------------------------------------------------------------------


def decode_frame(data: bytes | str) -> list[Command]:
    """Split a binary frame into commands (at least one)."""
    if isinstance(data, str):
        raise DecodeError("protobuf clients send binary frames")
    if not data:
        raise DecodeError("empty frame")
    return [_decode_command(chunk) for chunk in split_delimited(data)]


def _decode_command(chunk: bytes) -> Command:
    cmd = pb.Command()
    try:
        cmd.ParseFromString(chunk)
    except ProtobufDecodeError as e:
        raise DecodeError(f"invalid protobuf: {e}") from None
    if cmd.id > MAX_COMMAND_ID:
        raise DecodeError("invalid command id")
    for method in METHODS:
        if cmd.HasField(method):
            request = getattr(cmd, method)
            data = getattr(request, "data", b"") or None  # proto3: empty bytes are "not set"
            return Command(cmd.id, method, to_dict(request), data)
    return Command(cmd.id, "", _EMPTY)  # nothing set: the client's pong


def to_dict(msg: Message) -> dict[str, Any]:
    """The JSON-shaped params of a request message: only fields that are set; bytes stay bytes."""
    out: dict[str, Any] = {}
    for field, value in msg.ListFields():
        out[field.name] = _value(field, value)
    return out


def _value(field: Any, value: Any) -> Any:
    if is_map(field):
        if map_value(field).type == FieldDescriptor.TYPE_MESSAGE:
            return {k: to_dict(v) for k, v in value.items()}
        return dict(value)
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        if field.is_repeated:
            return [to_dict(v) for v in value]
        return to_dict(value)
    if field.is_repeated:
        return list(value)  # a list, as the JSON decoder gives (shared poll's untrack keys)
    return value


# --- outbound ---------------------------------------------------------------------------------------------

# Wire types of the protobuf encoding: a field's key is (number << 3) | wire type.
_VARINT, _LEN = 0, 2
# Reply's field numbers by the command each result answers (client.proto).
_REPLY_FIELDS: Final = {
    "connect": 5, "subscribe": 6, "unsubscribe": 7, "publish": 8, "presence": 9, "presence_stats": 10,
    "history": 11, "ping": 12, "rpc": 13, "refresh": 14, "sub_refresh": 15,
}


def delimit(message: bytes) -> bytes:
    """A message prefixed with its length, as frames and streams carry them."""
    return varint(len(message)) + message


def _field(number: int, value: bytes) -> bytes:
    """A length-delimited field (a string, bytes or an embedded message already serialised)."""
    return varint(number << 3 | _LEN) + varint(len(value)) + value


def _client_info(out: Any, info: ClientInfo) -> None:
    out.user, out.client = info.user, info.client
    if info.conn_info:
        out.conn_info = info.conn_info
    if info.chan_info:
        out.chan_info = info.chan_info


def _fill_publication(out: pb.Publication, pub: Publication, data: bytes | None = None, delta: bool = False) -> None:
    out.data = pub.data if data is None else data
    if pub.offset:
        out.offset = pub.offset
    if pub.tags:
        out.tags.update(pub.tags)
    if pub.channel:
        out.channel = pub.channel
    if pub.info is not None:
        _client_info(out.info, pub.info)
    if delta:
        out.delta = True
    if pub.key:
        out.key, out.removed = pub.key, pub.removed


def fill_publications(out: Any, pubs: Iterable[Publication]) -> None:
    # A delta subscriber's recovered publications are full payloads too (the SDK's base for later patches).
    for p in pubs:
        _fill_publication(out.add(), p)


def _subscribe_result(opts: SubscribeOptions, start: StreamStart | None, ttl: int) -> pb.SubscribeResult:
    res = pb.SubscribeResult()
    if opts.expire_at:
        res.expires, res.ttl = True, ttl
    if opts.data:
        res.data = opts.data
    res.publish_debounce = opts.publish_debounce
    if start is not None:
        res.recoverable = opts.enable_recovery
        res.epoch, res.offset = start.top.epoch, start.reply_offset
        res.positioned, res.recovered, res.was_recovering = True, start.recovered, start.was_recovering
        res.delta = opts.delta
        fill_publications(res.publications, start.publications)
    return res


class ProtobufCodec:
    """The protobuf protocol: results are serialised result messages, replies serialised ``Reply`` messages."""

    __slots__ = ()
    ping: Final = b""  # an empty Reply (on the wire: its length, the single byte 0)
    empty: Final = b""

    @staticmethod
    def reply(cmd_id: int, method: str, result: bytes) -> bytes:
        return varint(1 << 3 | _VARINT) + varint(cmd_id) + _field(_REPLY_FIELDS[method], result)

    @staticmethod
    def error_reply(cmd_id: int, error: Error) -> bytes:
        err = pb.Error(code=error.code, message=error.message, temporary=error.temporary)
        return varint(1 << 3 | _VARINT) + varint(cmd_id) + _field(2, err.SerializeToString())

    @staticmethod
    def push(push: bytes, unidirectional: bool) -> bytes:
        return push if unidirectional else _field(4, push)

    @staticmethod
    def carries(data: bytes) -> bool:
        return True

    @staticmethod
    def delta_data(data: bytes) -> bytes:
        return data  # patches and payloads are bytes as they are

    @staticmethod
    def publication(pub: Publication, data: bytes | None = None, *, delta: bool = False) -> bytes:
        out = pb.Publication()
        _fill_publication(out, pub, data, delta)
        return out.SerializeToString()

    @staticmethod
    def push_publication(channel: str, pub: bytes) -> bytes:
        return _field(2, channel.encode()) + _field(4, pub)

    @staticmethod
    def push_join(channel: str, info: ClientInfo) -> bytes:
        push = pb.Push(channel=channel)
        _client_info(push.join.info, info)
        return push.SerializeToString()

    @staticmethod
    def push_leave(channel: str, info: ClientInfo) -> bytes:
        push = pb.Push(channel=channel)
        _client_info(push.leave.info, info)
        return push.SerializeToString()

    @staticmethod
    def push_unsubscribe(channel: str, code: int, reason: str) -> bytes:
        return pb.Push(channel=channel, unsubscribe=pb.Unsubscribe(code=code, reason=reason)).SerializeToString()

    @staticmethod
    def push_subscribe(channel: str, opts: SubscribeOptions, start: StreamStart | None, ttl: int) -> bytes:
        push = pb.Push(channel=channel)
        sub = push.subscribe
        sub.SetInParent()
        if opts.data:
            sub.data = opts.data
        if start is not None:
            sub.recoverable, sub.positioned = opts.enable_recovery, True
            sub.epoch, sub.offset = start.top.epoch, start.reply_offset
        return push.SerializeToString()

    @staticmethod
    def push_refresh(expires: bool, ttl: int) -> bytes:
        return pb.Push(refresh=pb.Refresh(expires=expires, ttl=ttl)).SerializeToString()

    @staticmethod
    def push_disconnect(disconnect: Disconnect) -> bytes:
        return pb.Push(disconnect=pb.Disconnect(code=disconnect.code, reason=disconnect.reason)).SerializeToString()

    @staticmethod
    def connect_result(fields: Mapping[str, Any], data: bytes | None, subs: Sequence[tuple[str, bytes]], *,
                       push: bool) -> bytes:
        # ConnectResult (a reply) and Connect (a unidirectional client's push) number their fields differently.
        res: Message = pb.Connect() if push else pb.ConnectResult()
        for key, value in fields.items():
            if value:
                setattr(res, key, value)
        if data:
            setattr(res, "data", data)  # noqa: B010  (either message type)
        out = res.SerializeToString()
        subs_field = 4 if push else 6
        for channel, sub in subs:  # map<string, SubscribeResult>: entries are {key = 1, value = 2} messages
            out += _field(subs_field, _field(1, channel.encode()) + _field(2, sub))
        return _field(10, out) if push else out

    @staticmethod
    def subscribe_result(opts: SubscribeOptions, start: StreamStart | None, ttl: int) -> bytes:
        return _subscribe_result(opts, start, ttl).SerializeToString()

    @staticmethod
    def refresh_result(client: str, expires: bool, ttl: int) -> bytes:
        return pb.RefreshResult(client=client, expires=expires, ttl=ttl).SerializeToString()

    @staticmethod
    def sub_refresh_result(expires: bool, ttl: int) -> bytes:
        return pb.SubRefreshResult(expires=expires, ttl=ttl).SerializeToString()

    @staticmethod
    def presence_result(entries: Mapping[str, ClientInfo]) -> bytes:
        res = pb.PresenceResult()
        for cid, info in entries.items():
            _client_info(res.presence[cid], info)
        return res.SerializeToString()

    @staticmethod
    def presence_stats_result(stats: PresenceStats) -> bytes:
        return pb.PresenceStatsResult(num_clients=stats.num_clients, num_users=stats.num_users).SerializeToString()

    @staticmethod
    def history_result(pubs: Sequence[Publication], position: StreamPosition) -> bytes:
        res = pb.HistoryResult(epoch=position.epoch, offset=position.offset)
        fill_publications(res.publications, pubs)
        return res.SerializeToString()

    @staticmethod
    def rpc_result(data: bytes | None) -> bytes:
        return pb.RPCResult(data=data or b"").SerializeToString()


PROTOBUF: Final = ProtobufCodec()
CODECS: Final[Mapping[str, Codec]] = {"json": JSON, "protobuf": PROTOBUF}  # by a transport's ``protocol``
