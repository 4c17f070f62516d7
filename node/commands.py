"""One coroutine per client protocol command. Each returns the encoded result object (or None for no reply)
and refuses by raising ``ReplyError`` / ``DisconnectError``; ``client.py`` turns both into frames."""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from node import VERSION_STRING
from node.errors import (
    DISCONNECT_BAD_REQUEST,
    DISCONNECT_CHANNEL_LIMIT,
    DISCONNECT_CONNECTION_LIMIT,
    DISCONNECT_NOT_AVAILABLE,
    DISCONNECT_SERVER_ERROR,
    ERROR_ALREADY_SUBSCRIBED,
    ERROR_BAD_REQUEST,
    ERROR_EXPIRED,
    ERROR_LIMIT_EXCEEDED,
    ERROR_METHOD_NOT_FOUND,
    ERROR_NOT_AVAILABLE,
    ERROR_PERMISSION_DENIED,
    ERROR_UNRECOVERABLE_POSITION,
    DisconnectError,
    ReplyError,
)
from node.maps.options import MAP_SUBSCRIPTION_TYPES
from node.maps.state import Conditions
from node.models import ClientState, HistoryOptions, PublishOptions, StreamPosition, SubscribeOptions
from node.node import Connection, Node
from node.protocol import codec
from node.proxy import hooks, map_writes
from node.proxy.types import SubscribeResult
from node.sharedpoll.wire import TYPE_SHARED_POLL

logger = logging.getLogger(__name__)

Handler = Callable[[Connection, codec.Command], Awaitable[bytes | None]]

# SubscribeRequest.flag bits (centrifuge's subscription flags; centrifuge-js sets the second in its getState flow).
FLAG_REJECT_UNRECOVERED: Final = 2


def _str(params: Mapping[str, Any], key: str) -> str:
    value = params.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DisconnectError(DISCONNECT_BAD_REQUEST)
    return value


def _int(params: Mapping[str, Any], key: str) -> int:
    value = params.get(key, 0)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool):
        raise DisconnectError(DISCONNECT_BAD_REQUEST)
    return value


def _uint(params: Mapping[str, Any], key: str) -> int:
    """A protocol ``uint64`` field (offsets): a negative number cannot be decoded, which centrifuge answers
    with 3501."""
    value = _int(params, key)
    if not 0 <= value < 2**64:
        raise DisconnectError(DISCONNECT_BAD_REQUEST)
    return value


def _int32(params: Mapping[str, Any], key: str) -> int:
    """A protocol ``int32`` field (``limit``): out of range cannot be decoded (3501)."""
    value = _int(params, key)
    if not -2**31 <= value < 2**31:
        raise DisconnectError(DISCONNECT_BAD_REQUEST)
    return value


def _bool(params: Mapping[str, Any], key: str) -> bool:
    return params.get(key) is True


def _channel(params: Mapping[str, Any]) -> str:
    channel = _str(params, "channel")
    if not channel:
        raise DisconnectError(DISCONNECT_BAD_REQUEST)
    return channel


def _ttl(expire_at: int) -> int:
    return max(int(expire_at - time.time()), 0)


async def connect(client: Connection, cmd: codec.Command) -> bytes | None:
    node = client.node
    proxy = node.proxies.connect
    client.emulated_headers = node.proxies.pick_emulated(cmd.params.get("headers"))
    ask = None if proxy is None else functools.partial(hooks.connect, client, proxy, cmd.params)
    decision = await node.policy.connect(client, cmd.params, ask)
    cfg = node.config.client
    if decision.expire_at and decision.expire_at < time.time():
        raise ReplyError(ERROR_EXPIRED)
    if cfg.user_connection_limit and decision.user and \
            node.hub.num_user_connections(decision.user) >= cfg.user_connection_limit:
        raise DisconnectError(DISCONNECT_CONNECTION_LIMIT)
    if cfg.subscribe_to_user_personal_channel.enabled and decision.user:
        await _personal_channel(client, decision.user, decision.subs)
    if len(decision.subs) > cfg.channel_limit:
        raise DisconnectError(DISCONNECT_CHANNEL_LIMIT)
    client.user = decision.user
    client.conn_info = decision.info
    client.meta = decision.meta
    client.app_name, client.app_version = _str(cmd.params, "name"), _str(cmd.params, "version")
    client.connected_at = time.time()
    client.set_expire_at(decision.expire_at)
    node.add_client(client)
    client.mark_connected()
    # Server-side subscriptions are set up (engine work, awaited) before the reply; their publications are
    # buffered by the hub until the reply is queued, so none can overtake it.
    recover = cmd.params.get("subs")
    started = []
    for channel, opts in decision.subs.items():
        since = _since(recover.get(channel) if isinstance(recover, dict) else None)
        started.append((channel, opts, await node.subscribe_client(client, channel, opts, server_side=True,
                                                                   since=since)))
    fields: dict[str, Any] = {"client": client.id, "version": VERSION_STRING}
    if decision.expire_at and node.proxies.refresh is None:  # with a refresh proxy the server refreshes
        fields["expires"] = True
        fields["ttl"] = _ttl(decision.expire_at)
    fields["ping"] = int(cfg.ping_interval)
    fields["pong"] = cfg.pong_timeout > 0 and not client.unidirectional
    if cfg.connect_include_server_time:
        fields["time"] = int(time.time() * 1000)
    if session := client.transport.session:
        # An emulated transport's client posts its commands with these to /emulation.
        fields["session"] = session
        fields["node"] = node.id
    out = client.codec
    subs = [(ch, out.subscribe_result(opts, start, _ttl(opts.expire_at))) for ch, opts, start in started]
    # A unidirectional client has no command to reply to: it gets the result as a bare ``connect`` push.
    result = out.connect_result(fields, decision.data, subs, push=client.unidirectional)
    client.enqueue(out.push(result, True) if client.unidirectional else out.reply(cmd.id, "connect", result))
    for channel, _, start in started:
        node.start_delivery(client, channel, start)
    # Presence and join come after the reply is queued and before the next command runs.
    for channel, opts, _ in started:
        await node.after_subscribe(client, channel, opts)
    return None


async def _personal_channel(client: Connection, user: str, subs: dict[str, SubscribeOptions]) -> None:
    """``client.subscribe_to_user_personal_channel``, as Centrifugo: a server-side subscription to the user's
    personal channel; with ``single_connection``, a user already present there (on any node) has those other
    connections closed with 3504 first."""
    node = client.node
    channel = node.policy.personal_channel(user)
    if node.config.client.subscribe_to_user_personal_channel.single_connection:
        try:
            stats = await node.presence_stats(channel)
            if stats.num_clients:
                await node.disconnect(user, DISCONNECT_CONNECTION_LIMIT, whitelist=(client.id,))
        except Exception as e:
            logger.error("single connection for %s: %s", user, e)
            raise DisconnectError(DISCONNECT_SERVER_ERROR) from None
    subs[channel] = node.policy.personal_options(channel)  # an unknown namespace is 102, as in Centrifugo


def _since(params: Any) -> StreamPosition | None:
    """The stream position a (re)subscribing client asks to recover from, if it asks."""
    if not isinstance(params, dict):
        return None
    offset = _uint(params, "offset")
    if params.get("recover") is not True:
        return None
    return StreamPosition(offset, _str(params, "epoch"))


async def subscribe(client: Connection, cmd: codec.Command) -> bytes | None:
    node = client.node
    params = cmd.params
    channel = _channel(params)
    if params.get("type") == TYPE_SHARED_POLL or _namespace_type(node, channel) == "shared_poll":
        return await _shared_poll_subscribe(client, cmd, channel)
    if params.get("type") or node.policy.namespace(channel).subscription_type != "stream":
        return await node.maps.subscribe(client, cmd)  # map subscriptions walk their own phases
    since = _since(params)  # validated before any permission check, as centrifuge's decoder does
    reject_unrecovered = bool(_int(params, "flag") & FLAG_REJECT_UNRECOVERED)
    delta = _str(params, "delta")
    if delta not in ("", "fossil"):
        raise DisconnectError(DISCONNECT_BAD_REQUEST)
    _admit(client, channel)
    client.start_subscribing(channel)
    try:
        opts = await node.policy.subscribe(client, channel, params, _subscribe_hook(client, channel, params))
        if (client.id, channel) in node.streams:
            # Fed by the backend's stream alone: its publications have no offsets to position or recover by.
            opts = dataclasses.replace(opts, enable_positioning=False, enable_recovery=False, delta=False)
        start = await node.subscribe_client(client, channel, opts, server_side=False, since=since,
                                            reject_unrecovered=reject_unrecovered)
    except BaseException:
        node.streams.close(client.id, channel)
        raise
    finally:
        client.done_subscribing(channel)
    if client.state is ClientState.CLOSED:
        return None
    # With a sub_refresh proxy the server prolongs the subscription itself: the client is not told it expires.
    shown = opts if node.proxies.for_channel("sub_refresh", node.policy.namespace(channel)) is None else \
        dataclasses.replace(opts, expire_at=0)
    client.enqueue(client.codec.reply(cmd.id, "subscribe",
                                      client.codec.subscribe_result(shown, start, _ttl(opts.expire_at))))
    node.start_delivery(client, channel, start)
    node.streams.start(client, channel)
    await node.after_subscribe(client, channel, opts)
    return None  # already replied


def _subscribe_hook(client: Connection, channel: str, params: Any,
                    ) -> Callable[[], Awaitable[SubscribeResult]] | None:
    """The namespace's subscribe proxy call, or the opening of its subscription stream (the config never
    enables both in one namespace); None when neither is enabled."""
    node = client.node
    ns = node.policy.namespace(channel)
    proxy = node.proxies.for_channel("subscribe", ns)
    if proxy is not None:
        return functools.partial(hooks.subscribe, client, proxy, channel, params)
    proxy = node.proxies.for_channel("subscribe_stream", ns)
    if proxy is not None:
        return functools.partial(node.streams.open, client, proxy, channel, params,
                                 ns.subscribe_stream_proxy_bidirectional)
    return None


def _admit(client: Connection, channel: str) -> None:
    """A subscribe's limits: the channel name's length, one subscription per channel, the channel limit."""
    config = client.node.config
    if len(channel) > config.channel.max_length:
        raise ReplyError(ERROR_BAD_REQUEST)
    if channel in client.channels or channel in client.subscribing:
        raise ReplyError(ERROR_ALREADY_SUBSCRIBED)
    if len(client.channels) + len(client.subscribing) >= config.client.channel_limit:
        raise ReplyError(ERROR_LIMIT_EXCEEDED)


def _namespace_type(node: Node, channel: str) -> str:
    try:
        return node.policy.namespace(channel).subscription_type
    except ReplyError:
        return ""  # an unknown namespace: refused by the subscribe path that follows


async def _shared_poll_subscribe(client: Connection, cmd: codec.Command, channel: str) -> bytes | None:
    node = client.node
    ns = node.sharedpoll.namespace(channel, cmd.params)
    _admit(client, channel)
    proxy = node.proxies.for_channel("subscribe", ns)
    ask = None if proxy is None else functools.partial(hooks.subscribe, client, proxy, channel, cmd.params)
    return await node.sharedpoll.subscribe(client, cmd, ask)


async def unsubscribe(client: Connection, cmd: codec.Command) -> bytes:
    channel = _channel(cmd.params)
    if channel in client.channels:
        await client.node.remove_subscription(client, channel)
    return client.codec.empty


async def _map_write(client: Connection, cmd: codec.Command, channel: str) -> bytes:
    """A client's map publish or remove: decided by the namespace's map publish/remove proxy when it has one
    (which may replace the key and data and add tags, a key mode, a version, an idempotency key), else by its
    ``map.allow_*`` options (node/maps/service.py)."""
    node = client.node
    removed = cmd.params.get("removed") is True
    ns = node.policy.namespace(channel)
    proxy = node.proxies.for_map_write(ns, remove=removed) if ns.subscription_type in MAP_SUBSCRIPTION_TYPES \
        else None
    if proxy is None:
        return await node.maps.client_publish(client, cmd)
    key, info = _str(cmd.params, "key"), client.channel_info(channel)
    if removed:
        r = await map_writes.map_write(client, proxy, map_writes.MAP_REMOVE, channel, key, None)
        await node.maps.remove(channel, r.key or key, info=info, idempotency_key=r.idempotency_key, tags=r.tags)
        return client.codec.empty
    if cmd.data is None:
        raise DisconnectError(DISCONNECT_BAD_REQUEST)
    r = await map_writes.map_write(client, proxy, map_writes.MAP_PUBLISH, channel, key, cmd.data)
    await node.maps.publish(channel, r.key or key, cmd.data if r.data is None else r.data, info=info, tags=r.tags,
                            delta=r.delta, conditions=Conditions(r.key_mode, r.version, r.version_epoch),
                            idempotency_key=r.idempotency_key)
    return client.codec.empty


async def publish(client: Connection, cmd: codec.Command) -> bytes:
    node = client.node
    channel = _channel(cmd.params)
    if cmd.params.get("type"):
        return await _map_write(client, cmd, channel)
    data = cmd.data  # the payload as the client sent it: stored and delivered byte for byte
    if data is None or data in (b'""',):
        raise DisconnectError(DISCONNECT_BAD_REQUEST)
    ns = node.policy.namespace(channel)
    proxy = node.proxies.for_channel("publish", ns)
    if proxy is None and ns.subscribe_stream_proxy_enabled:
        # As Centrifugo: a stream namespace takes publishes only into a bidirectional stream (else 108).
        await node.streams.publish(client.id, channel, data)
        return client.codec.empty
    if proxy is None:
        node.policy.check_publish(client, channel, data)
        opts = PublishOptions(history_size=ns.history_size, history_ttl=ns.history_ttl,
                              history_meta_ttl=ns.history_meta_ttl, client_info=client.channel_info(channel),
                              use_delta=ns.delta_publish)
    else:
        # The backend decides instead of the namespace's permissions, and may replace the data or skip history.
        result = await hooks.publish(client, proxy, channel, data)
        data = result.data if result.data is not None else data
        opts = PublishOptions(
            history_size=0 if result.skip_history else ns.history_size, history_ttl=ns.history_ttl,
            history_meta_ttl=ns.history_meta_ttl, client_info=client.channel_info(channel), tags=result.tags,
            idempotency_key=result.idempotency_key, use_delta=ns.delta_publish or result.delta)
    await node.publish(channel, data, opts)
    return client.codec.empty


async def presence(client: Connection, cmd: codec.Command) -> bytes:
    channel = _channel(cmd.params)
    client.node.policy.check_presence(client, channel)
    return client.codec.presence_result(await client.node.presence(channel))


async def presence_stats(client: Connection, cmd: codec.Command) -> bytes:
    channel = _channel(cmd.params)
    client.node.policy.check_presence(client, channel)
    return client.codec.presence_stats_result(await client.node.presence_stats(channel))


async def history(client: Connection, cmd: codec.Command) -> bytes:
    node = client.node
    params = cmd.params
    channel = _channel(params)
    # Malformed fields first: centrifuge's decoder rejects them (3501) before any permission check.
    limit = _int32(params, "limit")
    since_raw = params.get("since")
    since: StreamPosition | None = None
    if isinstance(since_raw, dict):
        since = StreamPosition(_uint(since_raw, "offset"), _str(since_raw, "epoch"))
    ns = node.policy.check_history(client, channel)
    max_limit = node.config.client.history_max_publication_limit
    if limit < 0 or limit > max_limit:
        limit = max_limit
    reverse = _bool(params, "reverse")
    if since is not None and reverse and since.offset == 0:
        raise ReplyError(ERROR_BAD_REQUEST)
    result = await node.history(channel, HistoryOptions(
        since=since, limit=limit, reverse=reverse, history_meta_ttl=ns.history_meta_ttl))
    if since is not None and since.epoch and since.epoch != result.position.epoch:
        raise ReplyError(ERROR_UNRECOVERABLE_POSITION)
    return client.codec.history_result(result.publications, result.position)


async def rpc(client: Connection, cmd: codec.Command) -> bytes:
    ping = client.node.config.rpc.ping
    method = _str(cmd.params, "method")
    if ping.enabled and method == ping.method:
        return client.codec.rpc_result(None)
    proxy = client.node.proxies.for_rpc(method)
    if proxy is not None:
        result = await hooks.rpc(client, proxy, method, cmd.data)
        return client.codec.rpc_result(result.data)
    if not ping.enabled:
        raise ReplyError(ERROR_NOT_AVAILABLE)
    raise ReplyError(ERROR_METHOD_NOT_FOUND)


async def send(client: Connection, cmd: codec.Command) -> bytes | None:
    # Centrifugo OSS registers no message handler, and centrifuge answers such a send with 3508.
    raise DisconnectError(DISCONNECT_NOT_AVAILABLE)


async def refresh(client: Connection, cmd: codec.Command) -> bytes:
    token = _str(cmd.params, "token")
    if not token:
        raise DisconnectError(DISCONNECT_BAD_REQUEST)
    expire_at, info = await client.node.policy.refresh(client, token)
    if expire_at and expire_at < time.time():
        raise ReplyError(ERROR_EXPIRED)
    client.conn_info = info if info is not None else client.conn_info
    client.set_expire_at(expire_at)
    # Centrifugo leaves RefreshResult.version empty.
    return client.codec.refresh_result(client.id, bool(expire_at), _ttl(expire_at) if expire_at else 0)


async def sub_refresh(client: Connection, cmd: codec.Command) -> bytes:
    channel = _channel(cmd.params)
    if client.node.sharedpoll.handles(client, cmd.params):  # track / untrack of shared poll keys
        return client.node.sharedpoll.track(client, cmd)
    token = _str(cmd.params, "token")
    if not token:
        raise ReplyError(ERROR_BAD_REQUEST)
    state = client.channels.get(channel)
    if state is None:
        raise ReplyError(ERROR_PERMISSION_DENIED)
    expire_at = await client.node.policy.sub_refresh(client, channel, token)
    if expire_at and expire_at < time.time():
        raise ReplyError(ERROR_EXPIRED)
    state.expire_at = expire_at
    return client.codec.sub_refresh_result(bool(expire_at), _ttl(expire_at) if expire_at else 0)


async def ping(client: Connection, cmd: codec.Command) -> bytes:
    raise ReplyError(ERROR_NOT_AVAILABLE)


HANDLERS: Final[dict[str, Handler]] = {
    "connect": connect,
    "subscribe": subscribe,
    "unsubscribe": unsubscribe,
    "publish": publish,
    "presence": presence,
    "presence_stats": presence_stats,
    "history": history,
    "rpc": rpc,
    "send": send,
    "refresh": refresh,
    "sub_refresh": sub_refresh,
    "ping": ping,
}
