"""The server API over GRPC: Centrifugo's ``centrifugal.centrifugo.api.CentrifugoApi`` service (``proto/api.proto``).

Every RPC runs through the same :class:`Executor` as the HTTP API. The protobuf request becomes the params dict
the executor takes (the dict an HTTP JSON body decodes to), its bytes fields (payloads: ``data``, ``info``) passed
on as they are, binary or not; the executor's JSON result fills the protobuf result message. ``History`` is
filled from the result's values instead, so stored payloads come back byte for byte whatever they hold.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import grpc
import orjson
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from grpc_reflection.v1alpha import reflection

from node.api.executor import Executor
from node.api.proto import api_pb2
from node.config import GrpcApiConfig
from node.errors import ERROR_INTERNAL, Error, NodeError, ReplyError
from node.maps.wire import MapRead
from node.models import HistoryResult
from node.protocol.pbjson import fill, is_map, map_value
from node.protocol.rawjson import Raw

if TYPE_CHECKING:
    from google._upb._message import FieldDescriptor as UpbFieldDescriptor

    # The stubs describe both implementations (pure Python and upb); the runtime uses one of them.
    Field: TypeAlias = FieldDescriptor | UpbFieldDescriptor

logger = logging.getLogger(__name__)

SERVICE: Final = "centrifugal.centrifugo.api.CentrifugoApi"


@dataclass(frozen=True, slots=True)
class Rpc:
    method: str  # the executor's method name
    request: type[Message]
    response: type[Message]


RPCS: Final[Mapping[str, Rpc]] = {
    "Batch": Rpc("batch", api_pb2.BatchRequest, api_pb2.BatchResponse),
    "Publish": Rpc("publish", api_pb2.PublishRequest, api_pb2.PublishResponse),
    "Broadcast": Rpc("broadcast", api_pb2.BroadcastRequest, api_pb2.BroadcastResponse),
    "Subscribe": Rpc("subscribe", api_pb2.SubscribeRequest, api_pb2.SubscribeResponse),
    "Unsubscribe": Rpc("unsubscribe", api_pb2.UnsubscribeRequest, api_pb2.UnsubscribeResponse),
    "Disconnect": Rpc("disconnect", api_pb2.DisconnectRequest, api_pb2.DisconnectResponse),
    "Presence": Rpc("presence", api_pb2.PresenceRequest, api_pb2.PresenceResponse),
    "PresenceStats": Rpc("presence_stats", api_pb2.PresenceStatsRequest, api_pb2.PresenceStatsResponse),
    "History": Rpc("history", api_pb2.HistoryRequest, api_pb2.HistoryResponse),
    "HistoryRemove": Rpc("history_remove", api_pb2.HistoryRemoveRequest, api_pb2.HistoryRemoveResponse),
    "Info": Rpc("info", api_pb2.InfoRequest, api_pb2.InfoResponse),
    "RPC": Rpc("rpc", api_pb2.RPCRequest, api_pb2.RPCResponse),
    "Refresh": Rpc("refresh", api_pb2.RefreshRequest, api_pb2.RefreshResponse),
    "Channels": Rpc("channels", api_pb2.ChannelsRequest, api_pb2.ChannelsResponse),
    "Connections": Rpc("connections", api_pb2.ConnectionsRequest, api_pb2.ConnectionsResponse),
    "MapPublish": Rpc("map_publish", api_pb2.MapPublishRequest, api_pb2.MapPublishResponse),
    "MapRemove": Rpc("map_remove", api_pb2.MapRemoveRequest, api_pb2.MapRemoveResponse),
    "MapReadState": Rpc("map_read_state", api_pb2.MapReadStateRequest, api_pb2.MapReadStateResponse),
    "MapReadStream": Rpc("map_read_stream", api_pb2.MapReadStreamRequest, api_pb2.MapReadStreamResponse),
    "MapStats": Rpc("map_stats", api_pb2.MapStatsRequest, api_pb2.MapStatsResponse),
    "MapClear": Rpc("map_clear", api_pb2.MapClearRequest, api_pb2.MapClearResponse),
    "SharedPollPublish": Rpc("shared_poll_publish", api_pb2.SharedPollPublishRequest,
                             api_pb2.SharedPollPublishResponse),
}
# Their results are filled from values (not the executor's JSON), so payloads come back byte for byte.
_MAP_READS: Final = ("map_read_state", "map_read_stream")

# Transport error mode: API error code → GRPC status (Centrifugo's mapping).
_STATUS: Final = {
    100: grpc.StatusCode.INTERNAL,
    102: grpc.StatusCode.NOT_FOUND,
    104: grpc.StatusCode.NOT_FOUND,
    107: grpc.StatusCode.INVALID_ARGUMENT,
    108: grpc.StatusCode.INVALID_ARGUMENT,
    112: grpc.StatusCode.OUT_OF_RANGE,
    113: grpc.StatusCode.ALREADY_EXISTS,
}


# --- protobuf <-> the executor's JSON ------------------------------------------------------------------------


def request_params(msg: Message) -> dict[str, Any]:
    """``msg`` as the executor's params. Scalars are always present (proto3 cannot tell zero from unset, and
    the executor reads zero as unset); a message field only when set, so ``BoolValue{value: false}`` still
    overrides. Bytes fields (payloads) are passed on as they are, binary or not."""
    out: dict[str, Any] = {}
    for fd in msg.DESCRIPTOR.fields:
        value = getattr(msg, fd.name)
        if is_map(fd):
            out[fd.name] = {k: _param(map_value(fd), v) for k, v in value.items()}
        elif fd.is_repeated:
            out[fd.name] = [_param(fd, v) for v in value]
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            if msg.HasField(fd.name):
                out[fd.name] = request_params(value)
        elif fd.type == FieldDescriptor.TYPE_BYTES:
            if value:
                out[fd.name] = Raw(value)
        else:
            out[fd.name] = value
    return out


def _fill_history(out: Any, result: HistoryResult) -> None:
    out.epoch, out.offset = result.position.epoch, result.position.offset
    for pub in result.publications:
        item = out.publications.add()
        item.data = pub.data
        if pub.offset:
            item.offset = pub.offset
        if pub.tags:
            item.tags.update(pub.tags)
        if pub.info is not None:
            info = item.info
            info.user, info.client = pub.info.user, pub.info.client
            info.conn_info, info.chan_info = pub.info.conn_info or b"", pub.info.chan_info or b""


def _fill_map_read(out: Any, read: MapRead) -> None:
    out.epoch, out.offset = read.position.epoch, read.position.offset
    if read.cursor:
        out.cursor = read.cursor
    for pub in read.publications:
        entry = out.entries.add()
        entry.key, entry.data, entry.offset, entry.removed, entry.time = \
            pub.key, pub.data, pub.offset, pub.removed, pub.time_ms
        if pub.tags:
            entry.tags.update(pub.tags)


def _param(fd: Field, value: Any) -> Any:
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        return request_params(value)
    return value


def _sub(msg: Message, name: str) -> Message:
    sub: Message = getattr(msg, name)
    return sub


# --- the service ---------------------------------------------------------------------------------------------

Behavior = Callable[[Message, grpc.aio.ServicerContext[Message, Message]], Awaitable[Message]]


class GrpcApi:
    """Turns RPCs into executor calls: authentication, conversion, error mode."""

    def __init__(self, executor: Executor, config: GrpcApiConfig) -> None:
        self.executor = executor
        self.config = config
        self._key = config.key.encode()

    def handler(self) -> grpc.GenericRpcHandler:
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                self._behavior(rpc), request_deserializer=rpc.request.FromString,
                response_serializer=rpc.response.SerializeToString)
            for name, rpc in RPCS.items()
        }
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    def _behavior(self, rpc: Rpc) -> Behavior:
        async def behavior(request: Message, context: grpc.aio.ServicerContext[Message, Message]) -> Message:
            return await self.call(rpc, request, context)

        return behavior

    def _metadata(self, context: grpc.aio.ServicerContext[Message, Message], key: str) -> str:
        for k, v in context.invocation_metadata() or ():
            if k == key and isinstance(v, str):
                return v
        return ""

    def _authorized(self, context: grpc.aio.ServicerContext[Message, Message]) -> bool:
        if not self._key:
            return True  # Centrifugo's GRPC API has no auth unless a key is set
        scheme, _, given = self._metadata(context, "authorization").partition(" ")
        return scheme.lower() == "apikey" and hmac.compare_digest(given.strip().encode(), self._key)

    def _transport_mode(self, context: grpc.aio.ServicerContext[Message, Message]) -> bool:
        return self.config.error_mode == "transport" or \
            self._metadata(context, "x-centrifugo-error-mode").lower() == "transport"

    async def call(self, rpc: Rpc, request: Message,
                   context: grpc.aio.ServicerContext[Message, Message]) -> Message:
        if not self._authorized(context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unauthenticated")
        response = rpc.response()
        # BatchResponse is the result itself (``replies``); every other response wraps it in ``result``.
        wrapped = "result" in response.DESCRIPTOR.fields_by_name
        try:
            body = _sub(response, "result") if wrapped else response
            if rpc.method == "history":
                _fill_history(body, await self.executor.history_values(request_params(request), protocol="grpc"))
            elif rpc.method in _MAP_READS:
                _fill_map_read(body, await self.executor.map_read_values(rpc.method, request_params(request),
                                                                         protocol="grpc"))
            else:
                result = await self.executor.call(rpc.method, request_params(request), protocol="grpc")
                fill(body, orjson.loads(result))
            body.SetInParent()
        except orjson.JSONDecodeError:
            # The result held a payload that is not JSON (published as binary): protobuf cannot carry it here.
            return await self._error(response, ERROR_INTERNAL, context)
        except ReplyError as e:
            return await self._error(response, e.error, context)
        return response

    async def _error(self, response: Message, error: Error,
                     context: grpc.aio.ServicerContext[Message, Message]) -> Message:
        if self._transport_mode(context) or "error" not in response.DESCRIPTOR.fields_by_name:
            await context.abort(_STATUS.get(error.code, grpc.StatusCode.INTERNAL), error.message)
        response.ClearField("result")
        err = _sub(response, "error")
        setattr(err, "code", error.code)  # noqa: B010  # responses are typed as the Message base class
        setattr(err, "message", error.message)  # noqa: B010
        return response


async def start_grpc_server(executor: Executor, config: GrpcApiConfig, *, reuse_port: bool) -> grpc.aio.Server:
    """Serve the API on ``config.address:config.port``. With ``reuse_port`` several workers share the port
    (SO_REUSEPORT); without it a port already in use is an error instead of a silent second listener."""
    options: list[tuple[str, Any]] = [("grpc.so_reuseport", 1 if reuse_port else 0)]
    if config.max_receive_message_size:
        options.append(("grpc.max_receive_message_length", config.max_receive_message_size))
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((GrpcApi(executor, config).handler(),))
    if config.reflection:
        reflection.enable_server_reflection((SERVICE, reflection.SERVICE_NAME), server)
    await listen(server, "grpc_api", config.address, config.port)
    return server


async def listen(server: grpc.aio.Server, section: str, address: str, port: int) -> None:
    """Bind ``address:port`` ("" = every interface) and start; a port that cannot be bound is a NodeError."""
    where = f"{address or '[::]'}:{port}"
    try:
        server.add_insecure_port(where)
    except RuntimeError as e:
        raise NodeError(f"{section}: cannot listen on {where}: {e}") from e
    await server.start()
    logger.info("%s serving on %s", section, where)
