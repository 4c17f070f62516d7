"""Shared poll messages in a connection's protocol: the subscribe result (type 4 with the channel's epoch), a
key's update or removal as a Publication (``key``, ``version``, ``removed``) and the track reply."""

from __future__ import annotations

from typing import Final

import orjson

from node.protocol import client_pb2 as pb
from node.protocol import codec

TYPE_SHARED_POLL: Final = 4


def subscribe_result(protocol: str, epoch: str, ttl: int | None, delta: bool = False) -> bytes:
    """``ttl`` None: the subscription does not expire. ``delta``: fossil delta was negotiated."""
    if protocol == "protobuf":
        res = pb.SubscribeResult(type=TYPE_SHARED_POLL, epoch=epoch, delta=delta)
        if ttl is not None:
            res.expires, res.ttl = True, ttl
        return res.SerializeToString()
    fields: dict[str, object] = {"type": TYPE_SHARED_POLL, "epoch": epoch, "delta": delta}
    if ttl is not None:
        fields["expires"], fields["ttl"] = True, ttl
    return codec.result_object(fields)


def publication(protocol: str, key: str, version: int, data: bytes, epoch: str = "", *,
                as_string: bool = False, patch: bool = False) -> bytes:
    """A key's new data at ``version`` (``epoch``: a shared_poll_publish's, which centrifuge passes on).
    ``as_string``: a JSON delta subscriber's form, the payload as a JSON string (the SDK keeps its exact bytes
    as the key's delta base); ``patch``: ``data`` is a fossil delta against that base (``"delta":true``)."""
    if protocol == "protobuf":
        return pb.Publication(key=key, version=version, data=data, epoch=epoch, delta=patch).SerializeToString()
    body = codec.json_string(data) if as_string or patch else codec.payload(data)
    out = b'{"data":' + body + (b',"delta":true' if patch else b"") + b',"key":' + orjson.dumps(key)
    if epoch:
        out += b',"epoch":' + orjson.dumps(epoch)
    if version:
        out += b',"version":%d' % version
    return out + b"}"


def removal(protocol: str, key: str) -> bytes:
    """A key's removal: centrifuge's Publication{Key, Removed} and nothing else (no data, no version)."""
    if protocol == "protobuf":
        return pb.Publication(key=key, removed=True).SerializeToString()
    return b'{"key":%s,"removed":true}' % orjson.dumps(key)


def track_result(protocol: str, ttl: int | None) -> bytes:
    """The reply to a track request: whether the signatures expire and the seconds left to the first expiry.
    Data arrives as publications after the reply (Fugato keeps no data cache: PRO's ``keep_latest_data``)."""
    if protocol == "protobuf":
        res = pb.SubRefreshResult()
        if ttl is not None:
            res.expires, res.ttl = True, ttl
        return res.SerializeToString()
    return codec.result_object({"expires": True, "ttl": ttl} if ttl is not None else {})
