"""Subscription streams: Centrifugo's ``subscribe_stream`` proxy (GRPC only).

A namespace with ``subscribe_stream_proxy_enabled`` answers a client's subscribe by opening a GRPC stream to the
backend (``SubscribeUnidirectional``, or ``SubscribeBidirectional`` with
``subscribe_stream_proxy_bidirectional``). The stream's first message is the subscribe answer (result, error or
disconnect, as the subscribe proxy's); every later one carries a publication that goes to this one client
only, with no offset (no history, positioning or recovery for such subscriptions). In a bidirectional stream
the client's publishes to the channel go into the stream instead of the broker.

The stream ends with the subscription: an unsubscribe or a disconnect cancels it. When the backend ends it,
the client is unsubscribed: 2000 "server unsubscribe" for a clean end, 2500 "insufficient state" (the SDK
resubscribes) when the stream broke.

An application embedding Fugato streams in-process instead (``Handlers.on_subscribe_stream``, an async generator;
``python_stream.py``), with the same semantics.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import grpc

from node.errors import (
    DISCONNECT_INAPPROPRIATE_PROTOCOL,
    ERROR_INTERNAL,
    ERROR_NOT_AVAILABLE,
    UNSUBSCRIBE_INSUFFICIENT_STATE,
    UNSUBSCRIBE_SERVER,
    Disconnect,
    ReplyError,
    Unsubscribe,
)
from node.models import Publication
from node.proxy import types as pt
from node.proxy.grpc import GrpcProxy
from node.proxy.hooks import payload, token
from node.proxy.proto import proxy_pb2 as pb
from node.proxy.python import PythonProxy
from node.proxy.python_stream import StreamBroken

if TYPE_CHECKING:
    from node.protocol.codec import Codec
    from node.proxy.manager import Proxy, ProxyClient

logger = logging.getLogger(__name__)


class StreamClient(Protocol):
    """What a stream needs of the connection it feeds (``client.Client``)."""

    @property
    def id(self) -> str: ...
    @property
    def codec(self) -> Codec: ...
    @property
    def unidirectional(self) -> bool: ...

    def enqueue(self, message: bytes) -> None: ...
    def schedule_close(self, disconnect: Disconnect) -> None: ...
    async def unsubscribe(self, channel: str, unsub: Unsubscribe) -> None: ...


class _Stream:
    __slots__ = ("bidirectional", "call", "reader")

    def __init__(self, call: Any, bidirectional: bool) -> None:
        self.call = call
        self.bidirectional = bidirectional
        self.reader: asyncio.Task[None] | None = None


class Streams:
    """The open subscription streams of this node's connections, by (client id, channel)."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, str], _Stream] = {}

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._open

    async def open(self, client: ProxyClient, proxy: Proxy, channel: str, params: Mapping[str, Any],
                   bidirectional: bool) -> pt.SubscribeResult:
        """Open the stream of a subscription being made and return the backend's subscribe answer; publications
        flow once ``start`` is called (after the subscribe reply is queued)."""
        backend = proxy.backend
        if not isinstance(backend, GrpcProxy | PythonProxy):  # HTTP ones are refused at start too
            raise ReplyError(ERROR_NOT_AVAILABLE)
        req = pt.SubscribeRequest(**proxy.request_fields(client), channel=channel, token=token(params),
                                  data=payload(params))

        async def call(r: pt.SubscribeRequest) -> tuple[Any, pt.SubscribeResult]:
            return await backend.open_stream(r, bidirectional)

        stream_call, result = await proxy.call("subscribe_stream", call, req)
        self._open[client.id, channel] = _Stream(stream_call, bidirectional)
        return result

    def start(self, client: StreamClient, channel: str) -> None:
        stream = self._open.get((client.id, channel))
        if stream is not None and stream.reader is None:
            stream.reader = asyncio.get_running_loop().create_task(self._read(client, channel, stream))

    def close(self, client_id: str, channel: str) -> None:
        """The subscription ended (unsubscribe, disconnect, a failed subscribe): cancel its stream."""
        if not self._open:
            return
        stream = self._open.pop((client_id, channel), None)
        if stream is None:
            return
        stream.call.cancel()
        if stream.reader is not None and stream.reader is not asyncio.current_task():
            stream.reader.cancel()

    async def publish(self, client_id: str, channel: str, data: bytes) -> None:
        """A client's publish into its bidirectional stream; 108 without one."""
        stream = self._open.get((client_id, channel))
        if stream is None or not stream.bidirectional:
            raise ReplyError(ERROR_NOT_AVAILABLE)
        try:
            await stream.call.write(pb.StreamSubscribeRequest(publication=pb.Publication(data=data)))
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as e:
            logger.error("publish into the subscription stream of %s in %s failed: %s", client_id, channel, e)
            raise ReplyError(ERROR_INTERNAL) from None

    async def _read(self, client: StreamClient, channel: str, stream: _Stream) -> None:
        unsub = UNSUBSCRIBE_INSUFFICIENT_STATE
        try:
            while True:
                msg = await stream.call.read()
                if msg is grpc.aio.EOF:
                    unsub = UNSUBSCRIBE_SERVER
                    break
                if msg.HasField("publication"):
                    _deliver(client, channel, msg.publication)
        except grpc.aio.AioRpcError as e:
            logger.info("subscription stream of %s in %s ended: %s %s", client.id, channel, e.code().name,
                        e.details())
        except StreamBroken as e:
            logger.error("in-process subscription stream of %s in %s broke: %s", client.id, channel, e)
        if self._open.get((client.id, channel)) is stream:  # the backend ended it: the subscription ends too
            del self._open[client.id, channel]
            try:
                await client.unsubscribe(channel, unsub)
            except Exception as e:  # the engine's presence/leave work failed: the local state is gone anyway
                logger.warning("unsubscribing %s from %s after its stream ended: %s", client.id, channel, e)


def _deliver(client: StreamClient, channel: str, pub: Any) -> None:
    out = client.codec
    data = pub.data
    if not out.carries(data):
        # As for any binary payload: a JSON client cannot be sent it, and is closed with 3506 (as centrifuge).
        client.schedule_close(DISCONNECT_INAPPROPRIATE_PROTOCOL)
        return
    publication = Publication(data=data, tags=dict(pub.tags) or None)
    client.enqueue(out.push(out.push_publication(channel, out.publication(publication)), client.unidirectional))
