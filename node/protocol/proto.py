"""Protocol v2 over protobuf: varint-length-delimited ``Command`` messages in, ``Reply`` messages out.

The node builds every outgoing message as JSON (``codec``), so protobuf is a translation at the edge: inbound
commands become the same ``Command`` values the JSON decoder yields, and an outgoing JSON message becomes the
equivalent protobuf message. Translating replies costs a parse per reply, which is not on the hot path; a
publication is translated once per broadcast (the hub caches frames per framing), not once per subscriber.

Payload fields (``data``, ``conn_info``, ``chan_info``) are ``bytes`` in protobuf and raw JSON in the JSON
protocol. Fugato stores payloads as JSON so that both kinds of client can receive every publication, so a
protobuf client's payloads must be JSON; anything else is a bad request (disconnect 3501).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Final

import orjson
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.protobuf.message import Message

from node.models import Publication
from node.protocol import client_pb2 as pb
from node.protocol.codec import MAX_COMMAND_ID, METHODS, Command, DecodeError
from node.protocol.pbjson import fill, is_map, map_value

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
            return Command(cmd.id, method, to_dict(getattr(cmd, method)))
    return Command(cmd.id, "", _EMPTY)  # nothing set: the client's pong


def to_dict(msg: Message) -> dict[str, Any]:
    """The JSON-shaped params of a request message: only fields that are set, payloads parsed from JSON."""
    out: dict[str, Any] = {}
    for field, value in msg.ListFields():
        out[field.name] = _value_to_json(field, value)
    return out


def _value_to_json(field: Any, value: Any) -> Any:
    if is_map(field):
        if map_value(field).type == FieldDescriptor.TYPE_MESSAGE:
            return {k: to_dict(v) for k, v in value.items()}
        return dict(value)
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        if field.is_repeated:
            return [to_dict(v) for v in value]
        return to_dict(value)
    if field.type == FieldDescriptor.TYPE_BYTES:
        try:
            return orjson.loads(value) if value else None
        except orjson.JSONDecodeError:
            raise DecodeError(f"{field.name} is not JSON") from None
    return value


# --- outbound ---------------------------------------------------------------------------------------------


def encode_message(message: bytes, *, push: bool = False) -> bytes:
    """A JSON Reply (``{"id":..,"<method>":..}``, ``{"push":..}`` or the ``{}`` ping) as protobuf bytes; with
    ``push``, a bare Push (what unidirectional clients get)."""
    try:
        obj = orjson.loads(message)
    except orjson.JSONDecodeError as e:  # the node built it: a bug, not bad input
        raise ValueError(f"not a JSON message: {e}") from None
    out: Message = pb.Push() if push else pb.Reply()
    fill(out, obj)
    return out.SerializeToString()


def delimited(message: bytes, *, push: bool = False) -> bytes:
    """One JSON message as a length-prefixed protobuf message (what a binary frame or a stream carries)."""
    body = encode_message(message, push=push)
    return varint(len(body)) + body


def publication(channel: str, pub: Publication, unidirectional: bool) -> bytes:
    """A publication push built straight from the Publication (length-prefixed): the hot path's encoder, and
    the only one that can carry a payload that is not JSON (published with ``b64data`` or over GRPC)."""
    push = pb.Push(channel=channel)
    out = push.pub
    out.data = pub.data
    if pub.offset:
        out.offset = pub.offset
    if pub.tags:
        out.tags.update(pub.tags)
    if pub.channel:
        out.channel = pub.channel
    if pub.info is not None:
        info = out.info
        info.user, info.client = pub.info.user, pub.info.client
        if pub.info.conn_info:
            info.conn_info = pub.info.conn_info
        if pub.info.chan_info:
            info.chan_info = pub.info.chan_info
    body = push.SerializeToString() if unidirectional else pb.Reply(push=push).SerializeToString()
    return varint(len(body)) + body
