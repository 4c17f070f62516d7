"""SubscribeResult pages of a map subscribe (STATE and STREAM phases) in the connection's protocol, and the
server API's map reads. The LIVE reply is an ordinary subscribe result (node/protocol/)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from node.maps.state import Entry
from node.models import Publication, StreamPosition
from node.protocol import client_pb2 as pb
from node.protocol import codec, proto

PHASE_STREAM = 1
PHASE_STATE = 2


def _entry_publication(key: str, entry: Entry) -> Publication:
    return Publication(data=entry.data, offset=entry.offset, info=entry.info, tags=entry.tags, key=key)


def _page(protocol: str, fields: dict[str, object], name: str, pubs: Sequence[Publication], delta: bool) -> bytes:
    """A page in the connection's protocol. With delta negotiated, JSON values travel as JSON strings: the SDK
    keeps their exact bytes as each key's delta base (protobuf values are bytes anyway)."""
    if protocol == "protobuf":
        res = pb.SubscribeResult(**fields)  # type: ignore[arg-type]
        proto.fill_publications(getattr(res, name), pubs)
        return res.SerializeToString()
    codec.check_json(pubs)
    return codec.result_object(fields, {name: codec.encode_publications(pubs, as_strings=delta) if pubs else None})


def state_page(protocol: str, epoch: str, offset: int, entries: Sequence[tuple[str, Entry]], cursor: str, *,
               delta: bool = False) -> bytes:
    pubs = [_entry_publication(k, e) for k, e in entries]
    fields: dict[str, object] = {"epoch": epoch, "offset": offset, "phase": PHASE_STATE, "cursor": cursor}
    return _page(protocol, fields, "state", pubs, delta)


def stream_page(protocol: str, epoch: str, offset: int, pubs: Sequence[Publication], *, delta: bool = False) -> bytes:
    fields: dict[str, object] = {"epoch": epoch, "offset": offset, "phase": PHASE_STREAM}
    return _page(protocol, fields, "publications", pubs, delta)


def _api_entry(pub: Publication) -> bytes:
    """A MapEntry of Centrifugo's server API (key, data, tags, offset, removed, time; zero values omitted)."""
    fields: dict[str, object] = {"key": pub.key, "tags": dict(pub.tags) if pub.tags else None,
                                 "offset": pub.offset, "removed": pub.removed, "time": pub.time_ms}
    return codec.result_object(fields, {"data": codec.payload(pub.data)})  # a removal has none


@dataclass(frozen=True, slots=True)
class MapRead:
    """A ``map_read_state`` / ``map_read_stream`` answer as values: entries (or changes) as publications
    carrying their key, the stream position (the state's is read before the state) and, for state, the next
    page's cursor. The HTTP API writes it as JSON (``api_read``); GRPC fills its messages from it."""

    publications: tuple[Publication, ...]
    position: StreamPosition
    cursor: str = ""


def api_read(read: MapRead) -> bytes:
    """MapReadStateResult / MapReadStreamResult as JSON."""
    entries = b"[" + b",".join(_api_entry(p) for p in read.publications) + b"]"
    return codec.result_object({"epoch": read.position.epoch, "cursor": read.cursor},
                               {"entries": entries, "offset": b"%d" % read.position.offset})


def state_read(position: StreamPosition, entries: Sequence[tuple[str, Entry]], cursor: str) -> MapRead:
    return MapRead(tuple(_entry_publication(k, e) for k, e in entries), position, cursor)
