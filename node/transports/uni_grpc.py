"""The unidirectional GRPC stream (Centrifugo's ``uni_grpc``): ``CentrifugoUniStream.Consume(ConnectRequest)``
answers with a stream of ``Push`` messages, the ``connect`` push first, then publications, joins, leaves and
empty pushes as pings; a disconnect is a ``disconnect`` push that ends the stream.

The node's flush writes synchronously, as to every transport; this one queues the serialized pushes and the
RPC's generator hands them to GRPC. Responses are yielded as already-serialized bytes (the method's response
serializer is the identity), so a broadcast's protobuf push is encoded once and never parsed again. A client
that does not read lets the queue grow until ``client.queue_max_size`` cuts it off with 3008, as elsewhere.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from typing import Any, ClassVar, Final

import grpc

from node.api.grpc_server import listen
from node.client import Client
from node.config import UniGrpcConfig
from node.errors import (
    DISCONNECT_CONNECTION_CLOSED,
    DISCONNECT_SHUTDOWN,
    Disconnect,
)
from node.models import RequestInfo
from node.node import Node
from node.protocol import client_pb2 as pb
from node.protocol import proto
from node.transports.uni import connect_unidirectional, disconnect_message

SERVICE: Final = "centrifugal.centrifugo.unistream.CentrifugoUniStream"


class UniGrpcTransport:
    """Serialized pushes waiting for the RPC's generator; ``ended`` once the server closed the stream."""

    __slots__ = ("_size", "_wakeup", "ended", "queue")

    name: ClassVar[str] = "uni_grpc"
    protocol: ClassVar[str] = "protobuf"
    framing: ClassVar[str] = "grpc-push"
    unidirectional: ClassVar[bool] = True
    session: ClassVar[str] = ""

    def __init__(self) -> None:
        self.queue: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._wakeup = asyncio.Event()
        self.ended = False

    @staticmethod
    def frame(message: bytes) -> bytes:
        return proto.delimit(message)

    def write(self, data: bytes) -> None:
        if self.ended:
            return
        for push in proto.split_delimited(data):
            self.queue.append(push)
            self._size += len(push)
        self._wakeup.set()

    def buffered(self) -> int:
        return self._size

    def take(self) -> bytes:
        push = self.queue.popleft()
        self._size -= len(push)
        return push

    async def wait(self) -> None:
        await self._wakeup.wait()
        self._wakeup.clear()

    @property
    def closed(self) -> bool:
        return self.ended

    async def close(self, disconnect: Disconnect) -> None:
        if self.ended:
            return
        if disconnect.code != DISCONNECT_CONNECTION_CLOSED.code:
            self.write(self.frame(disconnect_message(self.protocol, disconnect, True)))
        self.ended = True
        self._wakeup.set()


def _metadata(context: grpc.aio.ServicerContext[Any, Any]) -> dict[str, str]:
    """The call's text metadata (what ``grpc_metadata`` of a proxy may forward)."""
    return {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


class UniGrpcService:
    def __init__(self, node: Node) -> None:
        self.node = node

    async def consume(self, request: pb.ConnectRequest, context: grpc.aio.ServicerContext[Any, Any],
                      ) -> AsyncIterator[bytes]:
        transport = UniGrpcTransport()
        client = Client(self.node, transport, RequestInfo(transport="uni_grpc", remote=context.peer() or "",
                                                       headers=_metadata(context)))
        try:
            if self.node.shutting_down:
                await client.close(DISCONNECT_SHUTDOWN)
            else:
                await connect_unidirectional(client, proto.to_dict(request))
            while True:
                while transport.queue:
                    yield transport.take()
                if transport.ended:
                    return
                await transport.wait()
        finally:
            # The caller went away (the generator is cancelled), or the stream ended: either way the client goes.
            await client.close(DISCONNECT_CONNECTION_CLOSED)

    def handler(self) -> grpc.GenericRpcHandler:
        consume = grpc.unary_stream_rpc_method_handler(
            self.consume, request_deserializer=pb.ConnectRequest.FromString,
            response_serializer=lambda body: body)
        return grpc.method_handlers_generic_handler(SERVICE, {"Consume": consume})


async def start_uni_grpc_server(node: Node, config: UniGrpcConfig, *, reuse_port: bool) -> grpc.aio.Server:
    """Serve the uni stream on ``config.address:config.port`` (SO_REUSEPORT only for a worker group)."""
    options: list[tuple[str, Any]] = [("grpc.so_reuseport", 1 if reuse_port else 0),
                                      ("grpc.max_receive_message_length", config.max_receive_message_size)]
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((UniGrpcService(node).handler(),))
    await listen(server, "uni_grpc", config.address, config.port)
    return server
