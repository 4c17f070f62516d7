"""The Redis broker: PUB/SUB between nodes plus history streams, over one or more Redis shards (standalone
servers or Redis Clusters). A channel lives on one shard (jump hash); in a Cluster all of its keys and its
PUB/SUB channel share one hash slot, so the Lua script that assigns the offset, appends to the stream and
publishes is a single atomic call."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, TypeVar

from node.broker import wire
from node.broker.base import Broker, BrokerEventHandler, PublishDone, new_epoch
from node.broker.redis_pipe import encode
from node.broker.redis_shard import Keys, RedisShard, ScriptCall
from node.broker.sharding import shard_index
from node.config_engine import RedisEngineConfig
from node.models import (
    ClientInfo,
    HistoryOptions,
    HistoryResult,
    Publication,
    PublishOptions,
    PublishResult,
    StreamPosition,
)

logger = logging.getLogger(__name__)

DEFAULT_META_TTL: Final = 720 * 3600
T = TypeVar("T")
CHANNEL_CACHE_SIZE: Final = 65536  # channels whose encoded keys are kept (the cache starts over when full)


def _publish_result(reply: Any) -> PublishResult:
    top, epoch, suppressed = reply
    epoch_str = epoch.decode() if isinstance(epoch, bytes) else str(epoch or "")
    return PublishResult(StreamPosition(int(top), epoch_str), suppressed=bool(suppressed))


class _Burst:
    __slots__ = ("epoch", "options", "time_ms")

    def __init__(self, epoch: str, time_ms: int) -> None:
        self.epoch = epoch
        self.time_ms = time_ms
        # (history size, ttl, meta ttl, result ttl, delta, shard) → EVALSHA head, the options as RESP, the options
        self.options: dict[tuple[Any, ...], tuple[bytes, bytes, list[Any]]] = {}


class _ChannelKeys:
    """The keys publish.lua gets for a channel, and their RESP encoding with the PUB/SUB channel (ARGV 1)."""

    __slots__ = ("encoded", "keys", "pubsub")

    def __init__(self, keys: Keys, channel: str, idempotency_key: str) -> None:
        self.keys = [keys.stream(channel), keys.meta(channel), keys.result(channel, idempotency_key)]
        self.pubsub = keys.client_channel(channel)
        self.encoded = _bulks((*self.keys, self.pubsub))


def _bulks(values: Sequence[Any]) -> bytes:
    """Values as consecutive RESP bulk strings (a part of a command)."""
    return encode(values).split(b"\r\n", 1)[1]


class RedisBroker(Broker):
    def __init__(self, cfg: RedisEngineConfig, *, node_id: str, history_meta_ttl: float = DEFAULT_META_TTL,
                 control: bool = True) -> None:
        self._control = control  # False: a broker of map channels only (the engine's carries control messages)
        self.keys = Keys(cfg.prefix)
        self._shard_urls = cfg.shards
        self._node_channel = self.keys.node(node_id)
        self.shards = [RedisShard(url, cfg, self._on_message, self._on_resync, self._on_error) for url in cfg.shards]
        self._handler: BrokerEventHandler | None = None
        self._names: dict[bytes, str] = {}  # Redis PUB/SUB channel → channel, for subscribed channels
        self._default_meta_ttl = history_meta_ttl
        self._control_rr = itertools.cycle(range(len(self.shards)))
        self._channel_cache: dict[str, _ChannelKeys] = {}
        self._current: _Burst | None = None

    def serves(self, cfg: RedisEngineConfig) -> bool:
        """Whether ``cfg`` names this broker's Redis and keys (then another component can share it)."""
        return self._shard_urls == cfg.shards and self.keys.prefix == cfg.prefix

    def shard(self, channel: str) -> RedisShard:
        return self.shards[shard_index(channel, len(self.shards))]

    async def start(self, handler: BrokerEventHandler) -> None:
        self._handler = handler
        for shard in self.shards:
            await shard.start()
        # Control messages go to any shard, so every node listens on all of them.
        for shard in self.shards if self._control else ():
            await shard.pubsub.subscribe([self.keys.control, self._node_channel])

    async def close(self) -> None:
        for shard in self.shards:
            await shard.close()

    def healthy(self) -> bool:
        return all(shard.pubsub.healthy for shard in self.shards)

    # --- PUB/SUB -----------------------------------------------------------------------------------------

    def _by_shard(self, items: Iterable[T], channel_of: Callable[[T], str] = str) -> dict[int, list[T]]:
        groups: dict[int, list[T]] = {}
        n = len(self.shards)
        for item in items:
            groups.setdefault(shard_index(channel_of(item), n), []).append(item)
        return groups

    async def subscribe(self, *channels: str) -> None:
        for index, chs in self._by_shard(channels).items():
            names = [self.keys.client_channel(ch) for ch in chs]
            for name, ch in zip(names, chs, strict=True):
                self._names[name] = ch
            await self.shards[index].pubsub.subscribe(names)

    async def unsubscribe(self, *channels: str) -> None:
        for index, chs in self._by_shard(channels).items():
            names = [self.keys.client_channel(ch) for ch in chs]
            for name in names:
                self._names.pop(name, None)
            await self.shards[index].pubsub.unsubscribe(names)

    def _on_message(self, messages: list[list[bytes]]) -> None:
        """The messages of one read from a PUB/SUB connection, in order."""
        handler = self._handler
        if handler is None:
            return
        names, decode = self._names, wire.decode
        # Consecutive publications go to the handler together (its bookkeeping once per read); anything else
        # hands over those collected first, so the order of events is kept.
        pubs: list[tuple[str, Publication, StreamPosition]] = []
        for _, redis_channel, data in messages:
            channel = names.get(redis_channel)
            if channel is None:
                if redis_channel == self.keys.control or redis_channel == self._node_channel:  # noqa: PLR1714
                    if pubs:
                        handler.handle_publications(pubs)
                        pubs = []
                    handler.handle_control(data)
                continue
            try:
                msg = decode(data)
            except wire.WireError as e:
                logger.warning("dropping a message on %s: %s", channel, e)
                continue
            if msg.kind == wire.PUB and msg.publication is not None:
                pubs.append((channel, msg.publication, msg.position))
            elif msg.info is not None:
                if pubs:
                    handler.handle_publications(pubs)
                    pubs = []
                if msg.kind == wire.JOIN:
                    handler.handle_join(channel, msg.info)
                else:
                    handler.handle_leave(channel, msg.info)
        if pubs:
            handler.handle_publications(pubs)

    def _on_error(self, kind: str) -> None:
        if self._handler is not None:
            self._handler.handle_pubsub_error(kind)

    def _on_resync(self, redis_channels: list[bytes]) -> None:
        channels = [ch for ch in (self._names.get(name) for name in redis_channels) if ch is not None]
        if channels and self._handler is not None:
            self._handler.handle_resubscribed(channels)

    # --- publishing --------------------------------------------------------------------------------------

    def _meta_ttl(self, ttl: float) -> int:
        # A negative TTL is a permanent meta (a persistent map's): 0 tells the scripts to set no expiry.
        return int(ttl if ttl > 0 else 0 if ttl < 0 else self._default_meta_ttl)

    def _channel_keys(self, channel: str) -> _ChannelKeys:
        """A channel's publish keys and their encoding, built once: most publishers reuse few channels."""
        cached = self._channel_cache.get(channel)
        if cached is None:
            if len(self._channel_cache) >= CHANNEL_CACHE_SIZE:
                self._channel_cache.clear()
            cached = self._channel_cache[channel] = _ChannelKeys(self.keys, channel, "")
        return cached

    def _burst(self) -> _Burst:
        """What the publications of this event-loop iteration share: their send time, an epoch candidate (only
        a channel's first publication ever uses it), and their encoded options."""
        burst = self._current
        if burst is None:
            burst = self._current = _Burst(new_epoch(), int(time.time() * 1000))
            asyncio.get_running_loop().call_soon(self._end_burst)
        return burst

    def _end_burst(self) -> None:
        self._current = None

    def _publish_call(self, shard: RedisShard, channel: str, data: bytes, opts: PublishOptions,
                      burst: _Burst) -> ScriptCall:
        """The EVALSHA of publish.lua."""
        ck = _ChannelKeys(self.keys, channel, opts.idempotency_key) if opts.idempotency_key \
            else self._channel_keys(channel)
        history = opts.history_size > 0 and opts.history_ttl > 0
        key = (opts.history_size if history else 0, opts.history_ttl, opts.history_meta_ttl,
               opts.idempotent_result_ttl if opts.idempotency_key else 0, opts.use_delta and history, id(shard))
        encoded = burst.options.get(key)
        if encoded is None:
            values = [key[0], max(int(opts.history_ttl), 1), self._meta_ttl(opts.history_meta_ttl), burst.epoch,
                      shard.publish_command, int(key[3]), b"1" if key[4] else b"0"]
            encoded = burst.options[key] = (shard.head("publish", 13) + b"$1\r\n3\r\n", _bulks(values), values)
        head, bulks, values = encoded
        body = wire.encode_body(data, opts.client_info, opts.tags, burst.time_ms)
        command = b"%s%s%s$%d\r\n%s\r\n" % (head, ck.encoded, bulks, len(body), body)
        return ScriptCall("publish", command, ck.keys, [ck.pubsub, *values, body])

    async def publish(self, channel: str, data: bytes, opts: PublishOptions) -> PublishResult:
        shard = self.shard(channel)
        return _publish_result(await shard.run(self._publish_call(shard, channel, data, opts, self._burst())))

    def publish_then(self, channel: str, data: bytes, opts: PublishOptions, done: PublishDone) -> None:
        shard = self.shard(channel)
        call = self._publish_call(shard, channel, data, opts, self._burst())

        def reply(value: Any) -> None:
            # Straight from the command connection's protocol callback: a failure of the caller's must not
            # escape into it (asyncio would close the connection, failing every other call on it).
            try:
                done(value if isinstance(value, BaseException) else _publish_result(value))
            except Exception:
                logger.exception("publish callback failed")

        shard.run_then(call, reply)

    async def publish_many(self, items: Sequence[tuple[str, bytes, PublishOptions]]) -> list[PublishResult | Exception]:
        burst = self._burst()
        groups = self._by_shard(range(len(items)), lambda i: items[i][0])
        calls = [(idxs, self.shards[index].run_many(  # sent to every shard before waiting for any
                     [self._publish_call(self.shards[index], *items[i], burst) for i in idxs]))
                 for index, idxs in groups.items()]
        results: dict[int, PublishResult | Exception] = {}
        for idxs, call in calls:
            for i, reply in zip(idxs, await call, strict=True):
                results[i] = reply if isinstance(reply, Exception) else _publish_result(reply)
        return [results[i] for i in range(len(items))]

    async def _publish_raw(self, channel: str, message: bytes) -> None:
        shard = self.shard(channel)
        await shard.client.execute_command(shard.publish_command.upper(), self.keys.client_channel(channel), message)

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        await self._publish_raw(channel, wire.encode_join_leave(wire.JOIN, info))

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        await self._publish_raw(channel, wire.encode_join_leave(wire.LEAVE, info))

    async def publish_control(self, data: bytes, node_id: str = "") -> None:
        shard = self.shards[next(self._control_rr)]
        target = self.keys.node(node_id) if node_id else self.keys.control
        await shard.client.execute_command(shard.publish_command.upper(), target, data)

    # --- history -----------------------------------------------------------------------------------------

    async def history(self, channel: str, opts: HistoryOptions) -> HistoryResult:
        since = opts.since
        top, epoch, entries = await self.shard(channel).script(
            "history",
            [self.keys.stream(channel), self.keys.meta(channel)],
            ["1" if opts.limit != 0 else "0", "" if since is None else since.offset, opts.limit,
             "1" if opts.reverse else "0", self._meta_ttl(opts.history_meta_ttl), new_epoch()],
        )
        pubs: list[Publication] = []
        for entry_id, fields in entries or ():
            offset = int(entry_id.split(b"-", 1)[0])
            body = fields[1] if len(fields) >= 2 and fields[0] == b"d" else None
            if body is not None:
                pubs.append(wire.decode_body(body, offset))
        epoch_str = epoch.decode() if isinstance(epoch, bytes) else str(epoch)
        return HistoryResult(tuple(pubs), StreamPosition(int(top), epoch_str))

    async def remove_history(self, channel: str) -> None:
        await self.shard(channel).client.delete(self.keys.stream(channel))
