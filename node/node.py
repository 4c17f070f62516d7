"""The Node: the one front door to the engine. The client session, the HTTP and GRPC API and the control
channel act through it (publish, broadcast, history, presence, subscribe, disconnect ...); it owns the hub, the
subscriptions and the engine, keeps engine subscriptions in step with local subscribers, and is the broker's
event handler (every publication, including our own clients', reaches the hub through the broker).

Nothing here imports the session or a transport: a connection is named by the ``Connection`` protocol below.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
import logging
import socket
import time
import uuid
from collections.abc import Callable, Collection, Coroutine, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any, Final, Protocol

from node import VERSION_STRING, connections
from node.auth.jwt import JWTVerifier
from node.broker.base import BrokerEventHandler, Engine, PublishDone
from node.broker.routed import RoutedBroker
from node.config import ChannelConfig, ChannelOptions, Config, TokenConfig
from node.control import Controller
from node.errors import (
    DISCONNECT_SHUTDOWN,
    ERROR_NOT_AVAILABLE,
    ERROR_UNRECOVERABLE_POSITION,
    Disconnect,
    ReplyError,
    Unsubscribe,
)
from node.hub import Hub
from node.maps.options import MAP_SUBSCRIPTION_TYPES
from node.maps.presence import MapPresence
from node.maps.service import MapService
from node.metrics import Metrics
from node.models import (
    ChannelStat,
    ClientInfo,
    ClientState,
    HistoryOptions,
    HistoryResult,
    NodeInfo,
    PresenceStats,
    Publication,
    PublishOptions,
    PublishResult,
    StreamPosition,
    StreamStart,
    SubscribeOptions,
)
from node.policy import Policy
from node.proxy.leave_events import UNSUBSCRIBE_CLIENT, UNSUBSCRIBE_DISCONNECT, LeaveEvents
from node.proxy.manager import Proxies
from node.proxy.python import Handlers
from node.proxy.shared_poll import refresh as shared_poll_refresh
from node.proxy.streams import Streams
from node.recovery import stream_start
from node.sharedpoll.refresh import Answer
from node.sharedpoll.service import SharedPollService
from node.subscriptions import ChannelState, Observer, Receiver, Subscriptions
from node.tagsfilter import select
from node.timers import TimerWheel
from node.user_actions import UserActions
from node.writer import Flusher, Writable

logger = logging.getLogger(__name__)

# A subscriber behind the stream top may only have publications in flight: it is given this long to catch up.
POSITION_GRACE: Final = 1.0
# A broadcast publishes to at most this many channels at a time.
MAX_BROADCAST_CONCURRENCY: Final = 1024
# A survey of every node's channels (``Controller.survey``); the actions on users are in user_actions.py.
CHANNELS: Final = "channels"


class Connection(Receiver, Writable, Protocol):
    """One client connection as the node and the commands need it (``client.Client`` implements it)."""

    node: Node
    user: str
    protocol: str
    conn_info: bytes | None
    meta: bytes | None  # connection meta: proxies (include_connection_meta) and the API see it, never the client
    app_name: str  # the connect command's name and version (the connections API shows them)
    app_version: str
    connected_at: float  # unix seconds
    proxy_headers: Mapping[str, str] | None  # the request headers proxies forward
    emulated_headers: Mapping[str, str] | None  # the connect command's headers proxies forward (emulated_headers)
    state: ClientState
    channels: dict[str, ChannelState]
    subscribing: AbstractSet[str]

    @property
    def info(self) -> ClientInfo: ...

    def channel_info(self, channel: str) -> ClientInfo: ...

    def enqueue(self, message: bytes) -> None: ...

    def set_expire_at(self, expire_at: int) -> None: ...

    def mark_connected(self) -> None: ...

    def start_subscribing(self, channel: str) -> None: ...

    def done_subscribing(self, channel: str) -> None: ...

    async def unsubscribe(self, channel: str, unsub: Unsubscribe) -> None: ...

    async def close(self, disconnect: Disconnect) -> None: ...


class Node(BrokerEventHandler):
    def __init__(self, config: Config, engine: Engine, policy: Policy, metrics: Metrics, *,
                 node_id: str = "", handlers: Handlers | None = None) -> None:
        self.config = config
        # Hooks to the application backend; a misconfigured proxy name fails here, at start.
        self.proxies = Proxies(config, metrics.registry, handlers)
        self.streams = Streams()  # subscriptions fed by a subscribe_stream proxy
        self._engine = engine
        self.policy = policy
        self.metrics = metrics
        self.id = node_id or str(uuid.uuid4())
        self.controller = Controller(self.id, self.node_info, engine.broker.publish_control)
        self.controller.on_survey(CHANNELS, self._on_channels)
        self.controller.on_survey(connections.SURVEY, self._on_connections)
        leave = config.fugato.leave_events
        self.leave_events = LeaveEvents(leave, self.id, engine.presence, metrics.registry) if leave.enabled else None
        if self.leave_events is not None:
            self.controller.on_node_gone(self.leave_events.node_gone)
        self.flusher = Flusher(config.client.write_delay)
        self.timers = TimerWheel()
        self.name = config.node.name or f"{socket.gethostname()}_{config.http_server.port}"
        self.subscriptions = Subscriptions(engine.broker.subscribe, engine.broker.unsubscribe)
        self.hub: Hub[Connection] = Hub(self.subscriptions.by_channel)
        self.users: UserActions[Connection] = UserActions(self.controller, self.hub, self)
        self.started_at = time.time()
        self._tasks: set[asyncio.Task[None]] = set()
        self.shutting_down = False
        self.maps: MapService[Connection] = MapService(self, engine.map_broker or engine.broker)
        self.sharedpoll: SharedPollService[Connection] = SharedPollService(self, self._shared_poll_refresh)
        if isinstance(engine.broker, RoutedBroker):
            engine.broker.route(self.is_map_channel)
        self.map_presence = MapPresence(self, self.maps)

    def is_map_channel(self, channel: str) -> bool:
        """Whether ``channel`` is in a map namespace (under the options in force: a reload may change it)."""
        try:
            return self.policy.namespace(channel).subscription_type in MAP_SUBSCRIPTION_TYPES
        except ReplyError:
            return False

    async def start(self) -> None:
        await self._engine.broker.start(self)
        await self.policy.verifier.start()
        await self.controller.start()
        if self.leave_events is not None:
            await self.leave_events.start()
        await self.maps.start()

    async def shutdown(self, timeout: float) -> None:
        """Disconnect every client with 3001 "shutdown" (they reconnect elsewhere), then close the engine."""
        await self.shutdown_clients(timeout)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.subscriptions.close()
        await self.maps.close()
        await self.sharedpoll.close()
        if self.leave_events is not None:
            # Before the control channel says goodbye: peers send what is still undelivered only after that.
            await self.leave_events.close(self.config.shutdown.timeout)
        await self.controller.close()
        await self.proxies.close()
        await self.policy.verifier.close()
        await self._engine.presence.close()
        await self._engine.broker.close()

    async def shutdown_clients(self, timeout: float) -> None:
        self.shutting_down = True
        clients = list(self.hub.clients())
        if clients:
            done = asyncio.gather(*(c.close(DISCONNECT_SHUTDOWN) for c in clients), return_exceptions=True)
            try:
                await asyncio.wait_for(done, timeout)
            except TimeoutError:
                logger.warning("shutdown: %d clients did not close within %.1fs", len(clients), timeout)

    async def reload(self, channel: ChannelConfig, token: TokenConfig, subscription_token: TokenConfig,
                     verifier: JWTVerifier) -> None:
        """Swap in new channel options and token verification (SIGHUP); connections stay as they are."""
        client = dataclasses.replace(self.config.client, token=token, subscription_token=subscription_token)
        self.config = dataclasses.replace(self.config, channel=channel, client=client)
        old = self.policy.verifier
        await verifier.start()
        self.policy = Policy(self.config, verifier)
        self.proxies.configure(self.config)
        await old.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- connections -----------------------------------------------------------------------------------

    def add_client(self, client: Connection) -> None:
        self.hub.add(client)
        if self.leave_events is not None:
            self.leave_events.connected(client)
        self.metrics.transport_connect(client.transport.name)
        self._update_gauges()

    async def remove_client(self, client: Connection, disconnect: Disconnect) -> None:
        self.hub.remove(client)
        for channel in list(client.channels):
            await self.remove_subscription(client, channel, UNSUBSCRIBE_DISCONNECT)
        if self.leave_events is not None:
            self.leave_events.disconnected(client, disconnect)
        self._update_gauges()

    def _update_gauges(self) -> None:
        self.metrics.clients.set(self.hub.num_clients())
        self.metrics.users.set(self.hub.num_users())
        self.metrics.channels.set(self.subscriptions.num_channels())

    # --- subscriptions ---------------------------------------------------------------------------------

    async def subscribe_client(self, client: Connection, channel: str, opts: SubscribeOptions, *, server_side: bool,
                               since: StreamPosition | None = None,
                               reject_unrecovered: bool = False) -> StreamStart | None:
        """Subscribe ``client``: broker subscription, hub registration (buffering), stream position/recovery.
        With ``reject_unrecovered`` a stream recovery that fails is error 112 instead of ``recovered: false``.

        The caller queues the reply and then calls ``start_delivery`` in the same tick; publications that arrive
        in between are buffered by the hub, so none is lost, duplicated or delivered before the reply."""
        await self.subscriptions.engage(channel)
        self.subscriptions.add(channel, client, push_join_leave=opts.push_join_leave,
                               positioned=opts.enable_positioning, delta=opts.delta, tags_filter=opts.tags_filter)
        # Without channel info every subscription of a connection shares one ClientInfo (fewer objects per conn).
        info = client.info if opts.chan_info is None else ClientInfo(
            client=client.id, user=client.user, conn_info=client.conn_info, chan_info=opts.chan_info)
        client.channels[channel] = ChannelState(opts=opts, server_side=server_side, expire_at=opts.expire_at,
                                                info=info)
        if self.leave_events is not None:
            self.leave_events.subscribed(client, channel)
        self.metrics.subscriptions.inc()
        self.metrics.channels.set(self.subscriptions.num_channels())
        if not opts.enable_positioning:
            return None
        try:
            start = await stream_start(self._engine.broker, channel, opts, since,
                                       self.config.client.recovery_max_publication_limit)
            if reject_unrecovered and start.was_recovering and not start.recovered:
                raise ReplyError(ERROR_UNRECOVERABLE_POSITION)
        except BaseException:
            await self.remove_subscription(client, channel)
            raise
        if start.was_recovering:
            self.metrics.recover(start.recovered)
        if opts.tags_filter is not None and start.publications:
            # Recovered publications the filter does not match are left out (the reply's offset still counts them).
            start = dataclasses.replace(start, publications=tuple(
                select(opts.tags_filter, start.publications, lambda p: p.tags)))
        return start

    async def position_valid(self, client: Connection, channel: str) -> bool:
        """Whether a positioned subscriber has missed nothing: not behind the stream top (once publications in
        flight had time to arrive) and not ahead of it (the stream lost publications, e.g. in a failover)."""
        before = self.subscriptions.position(channel, client)
        if before is None:
            return True
        state = client.channels.get(channel)
        meta_ttl = state.opts.history_meta_ttl if state is not None else 0.0
        top = (await self._engine.broker.history(channel, HistoryOptions(limit=0, history_meta_ttl=meta_ttl))).position
        if before.epoch != top.epoch or before.offset > top.offset:
            return False
        if before.offset == top.offset:
            return True
        await asyncio.sleep(POSITION_GRACE)
        after = self.subscriptions.position(channel, client)
        return after is not None and after.epoch == top.epoch and after.offset >= top.offset

    def start_delivery(self, client: Connection, channel: str, start: StreamStart | None) -> None:
        """Synchronous: release what arrived while subscribing, then deliver live."""
        state = client.channels.get(channel)
        delta_ready = bool(start and start.publications and state and state.opts.delta)
        self.hub.release(channel, client, start.top if start is not None else None, delta_ready=delta_ready)

    async def after_subscribe(self, client: Connection, channel: str, opts: SubscribeOptions) -> None:
        state = client.channels.get(channel)
        if state is None:
            return
        try:
            if opts.emit_presence:
                await self._engine.presence.add_presence(channel, client.id, state.info)
            if opts.emit_join_leave:
                await self._engine.broker.publish_join(channel, state.info)
                self.metrics.published("join")
            await self.map_presence.present(client, channel, state.info)
        except Exception as e:
            # The subscription itself stands; presence is re-added by the client's timer once the engine is back.
            logger.warning("joining %s: engine unavailable (%s)", channel, e)

    async def _shared_poll_refresh(self, ns: ChannelOptions, channel: str,
                                   items: Sequence[tuple[str, int]]) -> Answer:
        proxy = self.proxies.for_shared_poll(ns)  # configured at start: a shared_poll namespace requires one
        if proxy is None:
            raise ReplyError(ERROR_NOT_AVAILABLE)
        return await shared_poll_refresh(proxy, channel, items, versioned=ns.shared_poll.versioned)

    async def remove_subscription(self, client: Connection, channel: str,
                                  unsub: Unsubscribe = UNSUBSCRIBE_CLIENT) -> None:
        """``unsub``: why (for the leave events): the client's own unsubscribe unless told otherwise."""
        state = client.channels.pop(channel, None)
        if state is None:
            return
        self.streams.close(client.id, channel)
        if self.leave_events is not None:
            self.leave_events.unsubscribed(client, channel, unsub)
        self.sharedpoll.unsubscribed(client, channel)
        self.metrics.subscriptions.dec()
        if self.subscriptions.remove(channel, client):
            self.metrics.channels.set(self.subscriptions.num_channels())
        # Map entries of the subscription (its own key, its map presence) go in a task of the node's: a closing
        # connection's task may be cancelled (its peer went away) while the engine is still removing them.
        if self.map_presence.leaves_entries(channel):
            self._spawn(self._leave_maps(client, channel))
        # Best effort: the local state is already gone, and an engine outage must not keep a connection from
        # closing. A presence entry left behind expires by itself; a lost leave is not recoverable anyway.
        try:
            if state.opts.emit_presence:
                await self._engine.presence.remove_presence(channel, client.id, client.user)
            if state.opts.emit_join_leave:
                await self._engine.broker.publish_leave(channel, state.info)
                self.metrics.published("leave")
        except Exception as e:
            logger.warning("leaving %s: engine unavailable (%s)", channel, e)

    async def _leave_maps(self, client: Connection, channel: str) -> None:
        try:
            await self.maps.unsubscribed(client.id, channel)
            await self.map_presence.gone(client, channel)
        except Exception as e:
            logger.warning("leaving the maps of %s: %s", channel, e)

    # --- publishing and reads --------------------------------------------------------------------------

    async def publish(self, channel: str, data: bytes, opts: PublishOptions) -> PublishResult:
        result = await self._engine.broker.publish(channel, data, opts)
        self.metrics.published("publication")
        return result

    def publish_then(self, channel: str, data: bytes, opts: PublishOptions, done: PublishDone) -> None:
        """``publish`` for callers that answer from a callback (the API fast path): ``done`` gets the result or
        the exception, maybe before this returns (see ``Broker.publish_then``)."""
        self.metrics.published("publication")
        self._engine.broker.publish_then(channel, data, opts, done)

    async def publish_many(self, items: Sequence[tuple[str, bytes, PublishOptions]]) -> list[PublishResult | Exception]:
        """Publish several (channel, data, options) together, each channel's in order (one pipelined burst per
        Redis server); each gets its result or its own error."""
        results = await self._engine.broker.publish_many(items)
        self.metrics.published("publication", len(items))
        return results

    async def broadcast(self, channels: Sequence[str], data: bytes, options: Callable[[str], PublishOptions],
                        ) -> list[PublishResult | Exception]:
        """Publish one payload to many channels (``options`` gives each channel's); each channel's result or
        error, in order. They go to the engine together, in slices of MAX_BROADCAST_CONCURRENCY."""
        results: list[PublishResult | Exception] = []
        for start in range(0, len(channels), MAX_BROADCAST_CONCURRENCY):
            items: list[tuple[str, bytes, PublishOptions]] = []
            errors: dict[int, Exception] = {}
            for i, channel in enumerate(channels[start:start + MAX_BROADCAST_CONCURRENCY]):
                try:
                    items.append((channel, data, options(channel)))
                except Exception as e:  # an unknown namespace: that channel's error
                    errors[i] = e
            published = iter(await self.publish_many(items))
            results.extend(errors[i] if i in errors else next(published)
                           for i in range(min(MAX_BROADCAST_CONCURRENCY, len(channels) - start)))
        return results

    async def history(self, channel: str, opts: HistoryOptions) -> HistoryResult:
        return await self._engine.broker.history(channel, opts)

    async def remove_history(self, channel: str) -> None:
        await self._engine.broker.remove_history(channel)

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        return await self._engine.presence.presence(channel)

    async def presence_stats(self, channel: str) -> PresenceStats:
        return await self._engine.presence.presence_stats(channel)

    async def add_presence(self, channel: str, client_id: str, info: ClientInfo) -> None:
        """Add or refresh a presence entry (entries expire unless refreshed within presence_ttl)."""
        await self._engine.presence.add_presence(channel, client_id, info)

    def healthy(self) -> bool:
        return self._engine.broker.healthy()

    # --- BrokerEventHandler (hot path: synchronous) ----------------------------------------------------

    def handle_publication(self, channel: str, pub: Publication, sp: StreamPosition) -> None:
        self.metrics.received("publication")
        self._deliver(channel, pub, sp)

    def handle_publications(self, items: Sequence[tuple[str, Publication, StreamPosition]]) -> None:
        self.metrics.received("publication", len(items))
        deliver = self._deliver
        for channel, pub, sp in items:
            deliver(channel, pub, sp)

    def _deliver(self, channel: str, pub: Publication, sp: StreamPosition) -> None:
        metrics = self.metrics
        if pub.time_ms:
            metrics.observe(metrics.pub_sub_lag, max(time.time() - pub.time_ms / 1000, 0.0))
        if channel in self.subscriptions.by_channel:  # else nothing to fan out or time (a memory-engine publish)
            self.flusher.activity += 1
            started = time.perf_counter()
            self.hub.broadcast_publication(channel, pub, sp)
            metrics.observe(metrics.broadcast_duration, time.perf_counter() - started)
        if self.subscriptions.observers:  # one check per publication: free while nobody observes
            for observer in self.subscriptions.observers.get(channel, ()):
                observer(channel, pub, sp)

    def handle_join(self, channel: str, info: ClientInfo) -> None:
        self.metrics.received("join")
        self.hub.broadcast_join(channel, info)

    def handle_leave(self, channel: str, info: ClientInfo) -> None:
        self.metrics.received("leave")
        self.hub.broadcast_leave(channel, info)

    def handle_control(self, data: bytes) -> None:
        self.metrics.received("control")
        self.controller.handle(data)

    def handle_resubscribed(self, channels: list[str]) -> None:
        # Publications sent while PUB/SUB was down never reached us: positioned subscribers whose position is
        # now behind the stream are sent through recovery (insufficient state).
        self._spawn(self._check_positions(channels))

    def handle_pubsub_error(self, kind: str) -> None:
        self.metrics.pubsub_error(kind)

    async def _check_positions(self, channels: list[str]) -> None:
        await asyncio.gather(*(self._check_channel(ch) for ch in channels), return_exceptions=True)

    async def _check_channel(self, channel: str) -> None:
        """One stream read for all local subscribers of the channel; see ``position_valid``."""
        positions = [(c, self.subscriptions.position(channel, c)) for c in self.subscriptions.subscribers(channel)]
        positioned = [(c, p) for c, p in positions if p is not None]
        if not positioned:
            return
        meta_ttl = self.policy.namespace(channel).history_meta_ttl
        top = (await self._engine.broker.history(channel, HistoryOptions(limit=0, history_meta_ttl=meta_ttl))).position
        behind = []
        for client, pos in positioned:
            if pos.epoch != top.epoch or pos.offset > top.offset:
                client.insufficient_state(channel)
            elif pos.offset < top.offset:
                behind.append(client)
        if behind:
            await asyncio.sleep(POSITION_GRACE)
            for client in behind:
                after = self.subscriptions.position(channel, client)
                if after is not None and (after.epoch != top.epoch or after.offset < top.offset):
                    client.insufficient_state(channel)

    # --- server-side operations on users (API): on every node, see user_actions.py -------------------

    async def subscribe(self, user: str, channel: str, opts: SubscribeOptions, *, client_id: str = "") -> None:
        """Subscribe the user's connections (or the one ``client_id``), wherever they are connected."""
        await self.users.subscribe(user, channel, opts, client_id=client_id)

    async def unsubscribe(self, user: str, channel: str, *, client_id: str = "") -> None:
        await self.users.unsubscribe(user, channel, client_id=client_id)

    async def disconnect(self, user: str, disconnect: Disconnect, *, client_id: str = "",
                         whitelist: Collection[str] = ()) -> None:
        await self.users.disconnect(user, disconnect, client_id=client_id, whitelist=whitelist)

    async def refresh(self, user: str, *, client_id: str = "", expired: bool = False, expire_at: int = 0,
                      info: bytes | None = None) -> None:
        await self.users.refresh(user, client_id=client_id, expired=expired, expire_at=expire_at, info=info)

    # --- introspection ---------------------------------------------------------------------------------

    def node_info(self) -> NodeInfo:
        """This node's entry (announced to the others through the control channel)."""
        return NodeInfo(uid=self.id, name=self.name, version=VERSION_STRING, num_clients=self.hub.num_clients(),
                        num_users=self.hub.num_users(), num_subs=self.subscriptions.num_subscriptions(),
                        num_channels=self.subscriptions.num_channels(), uptime=int(time.time() - self.started_at))

    def info(self) -> list[NodeInfo]:
        """Every live node: this one and those heard from recently."""
        return self.controller.nodes()

    async def channels(self, pattern: str = "") -> dict[str, ChannelStat]:
        """Channels with subscribers on any node (matching ``pattern``, a glob), with their subscriber counts."""
        counts: dict[str, int] = {}
        for answer in await self.controller.survey(CHANNELS, {"pattern": pattern}):
            for ch, n in answer.items():
                counts[ch] = counts.get(ch, 0) + n
        return {ch: ChannelStat(n) for ch, n in counts.items()}

    async def connections(self, user: str = "", channel: str = "") -> dict[str, dict[str, Any]]:
        """The connections of ``user`` and/or subscribed to ``channel`` (all if neither) on every node."""
        found: dict[str, dict[str, Any]] = {}
        for answer in await self.controller.survey(connections.SURVEY, {"user": user, "channel": channel}):
            found.update(answer)
        return found

    async def _on_connections(self, p: dict[str, Any]) -> dict[str, dict[str, Any]]:
        clients = connections.matching(self.hub.clients(), p.get("user") or "", p.get("channel") or "")
        return {c.id: connections.describe(c, self.id) for c in clients if c.state is ClientState.CONNECTED}

    async def observe(self, channel: str, observer: Observer) -> None:
        """Call ``observer`` with each publication of ``channel`` from any node, without being a connection (the
        admin UI's live tail); see ``Subscriptions.observe``."""
        await self.subscriptions.observe(channel, observer)

    def unobserve(self, channel: str, observer: Observer) -> None:
        self.subscriptions.unobserve(channel, observer)

    async def _on_channels(self, p: dict[str, Any]) -> dict[str, int]:
        pattern = p.get("pattern") or ""
        return {ch: n for ch, n in self.subscriptions.channels() if not pattern or fnmatch.fnmatchcase(ch, pattern)}
