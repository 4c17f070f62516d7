"""The msgpack wire format between nodes (PUB/SUB messages and history entries).

A channel message is a sequence of msgpack objects: ``VERSION``, a kind, then kind-specific fields. The Lua
publish script writes the head (version, kind, offset, epoch) itself with ``cmsgpack`` and appends the body
the node encoded, so offsets assigned atomically in Redis travel in the same message. A receiver that sees
another version drops the message and logs it: mixed-version clusters are detected, never misparsed.

Publication body (also the history entry): ``[data, info, tags, time_ms]`` where info is
``[client, user, conn_info, chan_info]`` or nil. Publication message: version, PUB, offset, epoch, the body
object, and for delta publishing the previous entry's offset and body object.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, replace
from typing import Any, Final

import msgpack

from node.models import ClientInfo, Publication, StreamPosition

VERSION: Final = 1
PUB: Final = 0
JOIN: Final = 1
LEAVE: Final = 2


class WireError(ValueError):
    """A message this node cannot read (garbage, or another wire version)."""


# One packer for every body: packb builds a Packer per call, most of its cost (~0.5 µs of ~0.65 µs). The node
# encodes on its event loop's thread only, so nothing packs with it concurrently.
_packer: Final = msgpack.Packer(use_bin_type=True)


def encode_info(info: ClientInfo | None) -> Any:
    if info is None:
        return None
    return [info.client, info.user, info.conn_info, info.chan_info]


def decode_info(raw: Any) -> ClientInfo | None:
    if raw is None:
        return None
    client, user, conn_info, chan_info = raw
    return ClientInfo(client=client, user=user, conn_info=conn_info, chan_info=chan_info)


def encode_body(data: bytes, info: ClientInfo | None, tags: Any, time_ms: int, key: str = "",
                removed: bool = False) -> bytes:
    """A map channel's change (node/maps/) also carries its key and whether it removed it."""
    fields = [data, encode_info(info), dict(tags) if tags else None, time_ms]
    body: bytes = _packer.pack([*fields, key, removed] if key else fields)
    return body


def decode_body(body: bytes | list[Any], offset: int = 0) -> Publication:
    """A publication from its body, given as bytes (a history entry) or already unpacked (inside a message)."""
    fields = msgpack.unpackb(body, raw=False) if isinstance(body, bytes) else body
    data, info, tags, time_ms = fields[:4]
    key, removed = (fields[4], fields[5]) if len(fields) > 4 else ("", False)
    return Publication(data=data, offset=offset, info=decode_info(info), tags=tags, time_ms=time_ms, key=key,
                       removed=removed)


def encode_publication_message(body: bytes, offset: int = 0, epoch: str = "") -> bytes:
    """A publication message; offset 0 and no epoch for one that keeps no history. (Redis's Lua script builds
    the head of history-keeping messages itself; the JetStream broker passes its offset and epoch here.)"""
    return b"".join(msgpack.packb(x, use_bin_type=True) for x in (VERSION, PUB, offset, epoch)) + body


def encode_join_leave(kind: int, info: ClientInfo) -> bytes:
    return b"".join(msgpack.packb(x, use_bin_type=True) for x in (VERSION, kind, encode_info(info)))


@dataclass(frozen=True, slots=True)
class Message:
    kind: int
    publication: Publication | None = None
    position: StreamPosition = StreamPosition()
    info: ClientInfo | None = None


# A message is a sequence of msgpack objects whose count its kind fixes (a publication: 5, or 7 with the previous
# entry for delta; join/leave: 3), so it is read as one array by prefixing an array header: one unpackb call,
# ~1 µs, where a streaming Unpacker per message cost several.
_ARRAY_HEADS: Final = {PUB: (b"\x95", b"\x97"), JOIN: (b"\x93",), LEAVE: (b"\x93",)}


def _objects(message: bytes) -> list[Any]:
    if message[:1] != b"\x01":  # VERSION as a msgpack positive fixint
        version = msgpack.unpackb(message, raw=False) if len(message) == 1 else \
            next(iter(msgpack.Unpacker(io.BytesIO(message), raw=False)), None)
        raise WireError(f"wire version {version!r}, this node speaks {VERSION}")
    heads = _ARRAY_HEADS.get(message[1] if len(message) > 1 else -1)
    if heads is None:
        raise WireError(f"unknown message kind {message[1:2]!r}")
    for head in heads[:-1]:
        with contextlib.suppress(msgpack.ExtraData):
            objects: list[Any] = msgpack.unpackb(head + message, raw=False)
            return objects
    objects = msgpack.unpackb(heads[-1] + message, raw=False)
    return objects


def decode(message: bytes) -> Message:
    """Decode one channel message; raises WireError on anything unexpected."""
    try:
        items = _objects(message)
        kind = items[1]
        if kind == PUB:
            offset, epoch, body = items[2], items[3], items[4]
            pub = decode_body(body, offset)
            if len(items) == 7:
                # A map key's previous value is its delta base wherever it is in the stream; a stream's previous
                # entry only when it is the one right before.
                prev_offset, prev_body = items[5], items[6]
                prev = decode_body(prev_body).data if pub.key or (offset and prev_offset == offset - 1) else None
                pub = replace(pub, delta=True, prev_data=prev)
            return Message(PUB, publication=pub, position=StreamPosition(offset, epoch))
        return Message(kind, info=decode_info(items[2]))
    except WireError:
        raise
    except (ValueError, TypeError, IndexError, StopIteration, msgpack.UnpackException) as e:
        raise WireError(f"undecodable message: {e}") from None
