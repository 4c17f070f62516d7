"""The server API, independent of how it is called (``api/http.py`` and ``api/grpc_server.py`` share it).

Each method takes the decoded request object and returns the encoded ``result`` object, or raises
``ReplyError`` with one of the API's error codes (100, 102, 104, 107, 108, 112)."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from typing import Any, Final, TypeVar

import orjson

from node.api.batch import publish_reply, run_batch
from node.auth.jwt import SubscribeOverride
from node.broker.base import settle_then
from node.config import ChannelOptions
from node.errors import (
    API_ERROR_NOT_FOUND,
    DISCONNECT_FORCE_NO_RECONNECT,
    ERROR_BAD_REQUEST,
    ERROR_INTERNAL,
    ERROR_NOT_AVAILABLE,
    ERROR_UNRECOVERABLE_POSITION,
    Disconnect,
    ReplyError,
)
from node.maps.state import Conditions
from node.maps.wire import MapRead, api_read
from node.models import HistoryOptions, HistoryResult, PublishOptions, PublishResult, StreamPosition, SubscribeOptions
from node.node import Node
from node.policy import check_data_format
from node.protocol import codec

Params = Mapping[str, Any]
T = TypeVar("T")
Method = Callable[[Params], Awaitable[bytes]]
Answered = Callable[[bytes | BaseException], None]  # gets a call's result, or its exception (Executor.answer)

logger = logging.getLogger(__name__)

# map_publish parameters that make a write conditional or idempotent: such a call keeps the general path.
_CONDITIONAL: Final = frozenset(("key_mode", "version", "version_epoch", "idempotency_key"))


# The ``protocol`` label of the API metrics ("http", "grpc"); a batch's commands inherit the batch's.
_protocol: ContextVar[str] = ContextVar("api_protocol", default="http")


def _bad() -> ReplyError:
    return ReplyError(ERROR_BAD_REQUEST)


def _str(p: Params, key: str, *, required: bool = False) -> str:
    value = p.get(key)
    if value is None or value == "":
        if required:
            raise _bad()
        return ""
    if not isinstance(value, str):
        raise _bad()
    return value


def _int(p: Params, key: str) -> int:
    value = p.get(key, 0)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad()
    return value


def _bool(p: Params, key: str) -> bool:
    value = p.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _bad()
    return value


def _raw(p: Params, key: str) -> bytes | None:
    """A payload field: its bytes as the caller sent them (the JSON value's exact span over HTTP, the bytes
    over GRPC), or its ``b64<key>`` sibling decoded (binary payloads over HTTP)."""
    value = p.get(key)
    if value is not None:
        if isinstance(value, bytes):
            return bytes(value)
        return codec.raw(value)  # a value that did not come from a request body (e.g. from a test)
    b64 = p.get("b64" + key)
    if b64:
        if not isinstance(b64, str):
            raise _bad()
        try:
            return base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise _bad() from None
    return None


def _tags(p: Params) -> dict[str, str] | None:
    tags = p.get("tags")
    if tags is None:
        return None
    if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
        raise _bad()
    return tags


def _override(p: Params) -> SubscribeOverride | None:
    raw = p.get("override")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _bad()

    def flag(name: str) -> bool | None:
        item = raw.get(name)
        if isinstance(item, dict) and isinstance(item.get("value"), bool):
            return bool(item["value"])
        return None

    return SubscribeOverride(presence=flag("presence"), join_leave=flag("join_leave"),
                             force_push_join_leave=flag("force_push_join_leave"),
                             force_positioning=flag("force_positioning"), force_recovery=flag("force_recovery"))


def _map_reply(result: PublishResult) -> bytes:
    """MapPublishResult / MapRemoveResult: the position, and whether (and why) nothing changed."""
    if not result.suppressed and not result.suppress_reason:
        return publish_reply(result)  # the same fields, zero ones omitted: a change's result, cheaper
    return codec.result_object({"offset": result.position.offset, "epoch": result.position.epoch,
                                "suppressed": result.suppressed, "suppress_reason": result.suppress_reason})


def response_body(method: str, result: bytes) -> bytes:
    """The HTTP response body of a successful call: ``{"result": ...}``, except a batch's, which is its own."""
    return result if method == "batch" else b'{"result":' + result + b"}"


def _json_read(read: MapRead) -> bytes:
    if not all(codec.is_json(pub.data) for pub in read.publications):
        raise ReplyError(ERROR_INTERNAL)  # a binary payload cannot be written into a JSON response
    return api_read(read)


class Executor:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.methods: dict[str, Method] = {
            "publish": self.publish, "broadcast": self.broadcast, "subscribe": self.subscribe,
            "unsubscribe": self.unsubscribe, "disconnect": self.disconnect, "refresh": self.refresh,
            "presence": self.presence, "presence_stats": self.presence_stats, "history": self.history,
            "history_remove": self.history_remove, "channels": self.channels, "info": self.info, "rpc": self.rpc,
            "batch": self.batch, "connections": self.connections,
            "map_publish": self.map_publish, "map_remove": self.map_remove, "map_read_state": self.map_read_state,
            "map_read_stream": self.map_read_stream, "map_stats": self.map_stats, "map_clear": self.map_clear,
            "shared_poll_publish": self.shared_poll_publish,
        }
        self._options: dict[tuple[int, bool, bool], tuple[ChannelOptions, PublishOptions]] = {}

    async def call(self, method: str, params: Any, *, protocol: str | None = None) -> bytes:
        """Run ``method``; ``protocol`` labels the metrics (None: the enclosing call's, "http" at the top)."""
        handler = self.methods.get(method)
        if handler is None:
            raise ReplyError(API_ERROR_NOT_FOUND)
        return await self._run(method, handler, params, protocol)

    async def history_values(self, params: Any, *, protocol: str) -> HistoryResult:
        """The ``history`` method with its result as values, not JSON: GRPC fills its message from them, so
        payloads that are not JSON (published as binary) reach it as they are."""
        return await self._run("history", self._history, params, protocol)

    async def _run(self, method: str, handler: Callable[[Params], Awaitable[T]], params: Any,
                   protocol: str | None) -> T:
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise _bad()
        started = time.perf_counter()
        code = 0
        token = _protocol.set(protocol) if protocol is not None else None
        try:
            return await handler(params)
        except ReplyError as e:
            code = e.error.code
            raise
        except Exception as e:  # the engine failed (a backend down or timing out): Centrifugo's internal error
            code = ERROR_INTERNAL.code
            logger.warning("API %s: %s: %s", method, type(e).__name__, e)
            raise ReplyError(ERROR_INTERNAL) from None
        finally:
            self.node.metrics.api_command(method, time.perf_counter() - started, code, protocol=_protocol.get())
            if token is not None:
                _protocol.reset(token)

    def answer(self, method: str, params: Any, done: Answered) -> None:
        """``call`` for callers that answer from a callback (the API fast path): ``done`` gets the result or the
        exception (a ReplyError, or anything else as an internal failure), once, maybe before this returns. A
        publish needs no task and no future: it is validated now and answered from the engine's callback (for
        Redis, straight from the reply; for the memory engine, at once)."""
        if type(params) is dict and method == "map_publish" and _CONDITIONAL.isdisjoint(params):
            self._map_publish_then(params, done)
            return
        if method != "publish" or type(params) is not dict:
            settle_then(self.call(method, params), done)
            return
        published = self._answering("publish", publish_reply, done)
        try:
            channel, data, opts = self.publish_args(_str(params, "channel", required=True), params)
        except Exception as e:  # a ReplyError, or anything else as _run answers it
            published(e)
            return
        self.node.publish_then(channel, data, opts, published)

    def _map_publish_then(self, p: Params, done: Answered) -> None:
        """``answer`` for an unconditional ``map_publish`` without an idempotency key: ``map_publish``'s checks
        in its order, then the map store answers from a callback (the memory store at once)."""
        finished = self._answering("map_publish", _map_reply, done)
        try:
            channel, key, data = _str(p, "channel", required=True), _str(p, "key", required=True), _raw(p, "data")
            if data is None:
                raise _bad()
            tags, delta = _tags(p), _bool(p, "delta")
        except Exception as e:  # a ReplyError, or anything else as _run answers it
            finished(e)
            return
        self.node.maps.publish_then(channel, key, data, tags, delta, finished)

    def _answering(self, method: str, reply: Callable[[PublishResult], bytes],
                   done: Answered) -> Callable[[PublishResult | BaseException], None]:
        """The callback that ends a call of ``method`` answered through ``answer``: ``done`` gets ``reply`` of
        the result, or the error as ``_run`` answers it (an engine's failure logged, then 100), and the call's
        duration and error code go to the metrics, timed from now."""
        started = time.perf_counter()

        def finished(outcome: PublishResult | BaseException) -> None:
            if isinstance(outcome, BaseException):
                if isinstance(outcome, ReplyError):
                    error = outcome
                else:
                    logger.warning("API %s: %s: %s", method, type(outcome).__name__, outcome)
                    error = ReplyError(ERROR_INTERNAL)
                self.node.metrics.api_command(method, time.perf_counter() - started, error.error.code,
                                              protocol=_protocol.get())
                done(error)
            else:
                self.node.metrics.api_command(method, time.perf_counter() - started, protocol=_protocol.get())
                done(reply(outcome))

        return finished

    # --- publishing ------------------------------------------------------------------------------------

    def publishes_done(self, count: int, seconds: float, error_codes: list[int]) -> None:
        """Metrics for ``count`` publish commands that ran together (in a batch) for ``seconds``."""
        self.node.metrics.api_commands("publish", seconds, count, error_codes, protocol=_protocol.get())

    async def publish(self, p: Params) -> bytes:
        channel = _str(p, "channel", required=True)
        return publish_reply(await self.node.publish(*self.publish_args(channel, p)))  # failures: see _run

    def publish_args(self, channel: str, p: Params) -> tuple[str, bytes, PublishOptions]:
        """A publish command's (channel, data, options), validated; raises ReplyError."""
        value = p.get("data")
        # A parsed JSON value (a compact body, see http.parse_body) serialised without a detour through _raw.
        data = _raw(p, "data") if value is None or isinstance(value, bytes) else orjson.dumps(value)
        if data is None:
            raise _bad()
        return channel, data, self._checked_options(channel, data, p, stream_only=True)

    def _checked_options(self, channel: str, data: bytes, p: Params, *, stream_only: bool = False) -> PublishOptions:
        """The options of a publication of ``data`` to ``channel``; 102 for an unknown namespace, then 107 for
        bad options, then 107 for data the namespace's format refuses (Centrifugo's order). ``stream_only``:
        107 for a map or shared poll namespace too, as Centrifugo's publish (not its broadcast) answers."""
        ns = self.node.policy.namespace(channel)
        if stream_only and ns.subscription_type != "stream":
            raise _bad()
        opts = self._publish_options(ns, p)
        check_data_format(ns, data)
        return opts

    def _publish_options(self, ns: ChannelOptions, p: Params) -> PublishOptions:
        if len(p) == 2:  # channel and data only: the options' defaults
            cached = self._options.get((id(ns), False, ns.delta_publish))
            if cached is not None and cached[0] is ns:
                return cached[1]  # the usual publish, without the checks below
            skip_history, use_delta, tags, idempotency_key = False, ns.delta_publish, None, ""
        else:
            skip_history = _bool(p, "skip_history")
            use_delta = _bool(p, "delta") or ns.delta_publish
            tags = _tags(p)
            idempotency_key = _str(p, "idempotency_key")
        shared = tags is None and not idempotency_key
        if shared:
            # The common case: options shared by every publication to the namespace (the namespace object is
            # kept in the entry, so a reloaded config, with new objects, never matches an old entry).
            key = (id(ns), skip_history, use_delta)
            cached = self._options.get(key)
            if cached is not None and cached[0] is ns:
                return cached[1]
        opts = PublishOptions(
            history_size=0 if skip_history else ns.history_size,
            history_ttl=0 if skip_history else ns.history_ttl,
            history_meta_ttl=ns.history_meta_ttl,
            tags=tags,
            idempotency_key=idempotency_key,
            use_delta=use_delta,
        )
        if shared:
            self._options[key] = (ns, opts)
        return opts

    async def map_publish(self, p: Params) -> bytes:
        channel, key, data = _str(p, "channel", required=True), _str(p, "key", required=True), _raw(p, "data")
        if data is None:
            raise _bad()
        # score and stream_data are in Centrifugo's request too, and ignored there as here.
        conditions = Conditions(key_mode=_str(p, "key_mode"), version=_int(p, "version"),
                                version_epoch=_str(p, "version_epoch"))
        return _map_reply(await self.node.maps.publish(channel, key, data, tags=_tags(p), delta=_bool(p, "delta"),
                                                       conditions=conditions,
                                                       idempotency_key=_str(p, "idempotency_key")))

    async def shared_poll_publish(self, p: Params) -> bytes:
        channel, key, data = _str(p, "channel", required=True), _str(p, "key", required=True), _raw(p, "data")
        version = _int(p, "version")
        if data is None or version < 1:
            raise _bad()
        await self.node.sharedpoll.publish(channel, key, version, _str(p, "epoch"), data)
        return b"{}"

    async def map_remove(self, p: Params) -> bytes:
        channel, key = _str(p, "channel", required=True), _str(p, "key", required=True)
        return _map_reply(await self.node.maps.remove(channel, key, idempotency_key=_str(p, "idempotency_key")))

    async def map_read_values(self, method: str, params: Any, *, protocol: str) -> MapRead:
        """``map_read_state`` / ``map_read_stream`` with the result as values, for GRPC (as ``history_values``)."""
        handler = self._map_read_state if method == "map_read_state" else self._map_read_stream
        return await self._run(method, handler, params, protocol)

    async def map_read_state(self, p: Params) -> bytes:
        return _json_read(await self._map_read_state(p))

    async def map_read_stream(self, p: Params) -> bytes:
        return _json_read(await self._map_read_stream(p))

    async def _map_read_state(self, p: Params) -> MapRead:
        return await self.node.maps.read_state(_str(p, "channel", required=True), _str(p, "cursor"), _int(p, "limit"))

    async def _map_read_stream(self, p: Params) -> MapRead:
        since_epoch = _str(p, "since_epoch")
        since = StreamPosition(_int(p, "since_offset"), since_epoch) if since_epoch or p.get("since_offset") else None
        return await self.node.maps.read_stream(_str(p, "channel", required=True), since, _int(p, "limit"),
                                                _bool(p, "reverse"))

    async def map_stats(self, p: Params) -> bytes:
        return b'{"num_keys":%d}' % await self.node.maps.stats(_str(p, "channel", required=True))

    async def map_clear(self, p: Params) -> bytes:
        await self.node.maps.clear(_str(p, "channel", required=True))
        return b"{}"

    async def broadcast(self, p: Params) -> bytes:
        channels = p.get("channels")
        if not isinstance(channels, list) or not channels or not all(isinstance(c, str) and c for c in channels):
            raise _bad()
        data = _raw(p, "data")
        if data is None:
            raise _bad()
        # Checked per channel, as in Centrifugo.
        results = await self.node.broadcast(channels, data, lambda channel: self._checked_options(channel, data, p))
        responses = []
        for result in results:
            if isinstance(result, Exception):
                error = result.error if isinstance(result, ReplyError) else ERROR_INTERNAL
                responses.append(b'{"error":' + codec.encode_error(error) + b"}")
            else:
                responses.append(b'{"result":' + publish_reply(result) + b"}")
        return b'{"responses":[' + b",".join(responses) + b"]}"

    # --- acting on connections (on every node: applied here and broadcast as control commands) ------------

    async def subscribe(self, p: Params) -> bytes:
        channel = _str(p, "channel", required=True)
        await self.node.subscribe(_str(p, "user"), channel, self._subscribe_options(p), client_id=_str(p, "client"))
        return b"{}"

    def _subscribe_options(self, p: Params) -> SubscribeOptions:
        since_raw = p.get("recover_since")
        since = None
        if isinstance(since_raw, dict):
            since = StreamPosition(_int(since_raw, "offset"), _str(since_raw, "epoch"))
        opts = self.node.policy.server_subscribe_options(
            _str(p, "channel"), _override(p), expire_at=_int(p, "expire_at"), chan_info=_raw(p, "info"),
            data=_raw(p, "data"))
        return dataclasses.replace(opts, recover_since=since) if since is not None else opts

    async def unsubscribe(self, p: Params) -> bytes:
        channel = _str(p, "channel", required=True)
        await self.node.unsubscribe(_str(p, "user"), channel, client_id=_str(p, "client"))
        return b"{}"

    async def disconnect(self, p: Params) -> bytes:
        disconnect = self._disconnect_of(p)
        whitelist = p.get("whitelist") or []
        if not isinstance(whitelist, list):
            raise _bad()
        await self.node.disconnect(_str(p, "user"), disconnect, client_id=_str(p, "client"), whitelist=whitelist)
        return b"{}"

    def _disconnect_of(self, p: Params) -> Disconnect:
        raw = p.get("disconnect")
        if raw is None:
            return DISCONNECT_FORCE_NO_RECONNECT
        if not isinstance(raw, dict):
            raise _bad()
        code = _int(raw, "code")
        if not code:
            return DISCONNECT_FORCE_NO_RECONNECT
        reason = _str(raw, "reason")
        if code < 3000 or code > 4999 or len(reason.encode()) > 123:
            raise _bad()
        return Disconnect(code, reason or "disconnect")

    async def refresh(self, p: Params) -> bytes:
        await self.node.refresh(_str(p, "user"), client_id=_str(p, "client"), expired=_bool(p, "expired"),
                                expire_at=_int(p, "expire_at"), info=_raw(p, "info"))
        return b"{}"

    # --- reads -----------------------------------------------------------------------------------------

    async def presence(self, p: Params) -> bytes:
        channel = _str(p, "channel", required=True)
        if not self.node.policy.namespace(channel).presence:
            raise ReplyError(ERROR_NOT_AVAILABLE)
        entries = await self.node.presence(channel)
        body = b",".join(codec.raw(cid) + b":" + codec.encode_client_info(i) for cid, i in entries.items())
        return b'{"presence":{' + body + b"}}"

    async def presence_stats(self, p: Params) -> bytes:
        channel = _str(p, "channel", required=True)
        if not self.node.policy.namespace(channel).presence:
            raise ReplyError(ERROR_NOT_AVAILABLE)
        stats = await self.node.presence_stats(channel)
        return b'{"num_clients":%d,"num_users":%d}' % (stats.num_clients, stats.num_users)

    async def history(self, p: Params) -> bytes:
        result = await self._history(p)
        if not all(codec.is_json(pub.data) for pub in result.publications):
            raise ReplyError(ERROR_INTERNAL)  # a binary payload cannot be written into a JSON response
        return codec.JSON.history_result(result.publications, result.position)

    async def _history(self, p: Params) -> HistoryResult:
        channel = _str(p, "channel", required=True)
        ns = self.node.policy.namespace(channel)
        if not ns.history_enabled:
            raise ReplyError(ERROR_NOT_AVAILABLE)
        since_raw = p.get("since")
        since = None
        if since_raw is not None:
            if not isinstance(since_raw, dict):
                raise _bad()
            since = StreamPosition(_int(since_raw, "offset"), _str(since_raw, "epoch"))
        result = await self.node.history(channel, HistoryOptions(
            since=since, limit=_int(p, "limit"), reverse=_bool(p, "reverse"), history_meta_ttl=ns.history_meta_ttl))
        if since is not None and since.epoch and since.epoch != result.position.epoch:
            raise ReplyError(ERROR_UNRECOVERABLE_POSITION)
        return result

    async def history_remove(self, p: Params) -> bytes:
        channel = _str(p, "channel", required=True)
        if not self.node.policy.namespace(channel).history_enabled:
            raise ReplyError(ERROR_NOT_AVAILABLE)
        await self.node.remove_history(channel)
        return b"{}"

    async def channels(self, p: Params) -> bytes:
        channels = await self.node.channels(_str(p, "pattern"))
        body = b",".join(b'%s:{"num_clients":%d}' % (codec.raw(ch), s.num_clients) for ch, s in channels.items())
        return b'{"channels":{' + body + b"}}"

    async def connections(self, p: Params) -> bytes:
        """Centrifugo PRO's ``connections``: by ``user`` (and, a Fugato addition, by ``channel``), across nodes."""
        if _str(p, "expression"):
            raise ReplyError(ERROR_NOT_AVAILABLE)  # Centrifugo PRO's CEL expressions are not implemented
        found = await self.node.connections(_str(p, "user"), _str(p, "channel"))
        for entry in found.values():
            for holder, key in ((entry, "info"), (entry["state"], "meta")):
                if holder.get(key) is not None:
                    holder[key] = orjson.Fragment(holder[key])
        return orjson.dumps({"connections": found})

    async def info(self, p: Params) -> bytes:
        nodes = [codec.raw(dataclasses.asdict(n)) for n in self.node.info()]
        return b'{"nodes":[' + b",".join(nodes) + b"]}"

    async def rpc(self, p: Params) -> bytes:
        _str(p, "method", required=True)
        raise ReplyError(API_ERROR_NOT_FOUND)

    async def batch(self, p: Params) -> bytes:
        """The whole response (``{"replies": [...]}``): unlike every other method's, Centrifugo does not wrap a
        batch's in ``result`` (see ``response_body``)."""
        commands = p.get("commands")
        if not isinstance(commands, list):
            raise _bad()
        return await run_batch(self, commands, parallel=_bool(p, "parallel"))
