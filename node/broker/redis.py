"""The Redis broker: PUB/SUB between nodes plus history streams, over one or more Redis shards (standalone
servers or Redis Clusters). A channel lives on one shard (jump hash); in a Cluster all of its keys and its
PUB/SUB channel share one hash slot, so the Lua script that assigns the offset, appends to the stream and
publishes is a single atomic call."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable
from typing import Final

from node.broker import wire
from node.broker.base import Broker, BrokerEventHandler, new_epoch
from node.broker.redis_shard import Keys, RedisShard
from node.broker.sharding import shard_index
from node.config import RedisEngineConfig
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


class RedisBroker(Broker):
    def __init__(self, cfg: RedisEngineConfig, *, node_id: str, history_meta_ttl: float = DEFAULT_META_TTL) -> None:
        self.keys = Keys(cfg.prefix)
        self._node_channel = self.keys.node(node_id)
        self.shards = [RedisShard(url, cfg, self._on_message, self._on_resync, self._on_error) for url in cfg.shards]
        self._handler: BrokerEventHandler | None = None
        self._names: dict[bytes, str] = {}  # Redis PUB/SUB channel → channel, for subscribed channels
        self._default_meta_ttl = history_meta_ttl
        self._control_rr = itertools.cycle(range(len(self.shards)))

    def shard(self, channel: str) -> RedisShard:
        return self.shards[shard_index(channel, len(self.shards))]

    async def start(self, handler: BrokerEventHandler) -> None:
        self._handler = handler
        for shard in self.shards:
            await shard.start()
        # Control messages go to any shard, so every node listens on all of them.
        for shard in self.shards:
            await shard.pubsub.subscribe([self.keys.control, self._node_channel])

    async def close(self) -> None:
        for shard in self.shards:
            await shard.close()

    def healthy(self) -> bool:
        return all(shard.pubsub.healthy for shard in self.shards)

    # --- PUB/SUB -----------------------------------------------------------------------------------------

    def _by_shard(self, channels: Iterable[str]) -> dict[int, list[str]]:
        groups: dict[int, list[str]] = {}
        for ch in channels:
            groups.setdefault(shard_index(ch, len(self.shards)), []).append(ch)
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

    def _on_message(self, redis_channel: bytes, data: bytes) -> None:
        handler = self._handler
        if handler is None:
            return
        channel = self._names.get(redis_channel)
        if channel is None:
            if redis_channel == self.keys.control or redis_channel == self._node_channel:  # noqa: PLR1714
                handler.handle_control(data)
            return
        try:
            msg = wire.decode(data)
        except wire.WireError as e:
            logger.warning("dropping a message on %s: %s", channel, e)
            return
        if msg.kind == wire.PUB and msg.publication is not None:
            handler.handle_publication(channel, msg.publication, msg.position)
        elif msg.info is not None:
            if msg.kind == wire.JOIN:
                handler.handle_join(channel, msg.info)
            else:
                handler.handle_leave(channel, msg.info)

    def _on_error(self, kind: str) -> None:
        if self._handler is not None:
            self._handler.handle_pubsub_error(kind)

    def _on_resync(self, redis_channels: list[bytes]) -> None:
        channels = [ch for ch in (self._names.get(name) for name in redis_channels) if ch is not None]
        if channels and self._handler is not None:
            self._handler.handle_resubscribed(channels)

    # --- publishing --------------------------------------------------------------------------------------

    def _meta_ttl(self, ttl: float) -> int:
        return int(ttl if ttl > 0 else self._default_meta_ttl)

    async def publish(self, channel: str, data: bytes, opts: PublishOptions) -> PublishResult:
        shard = self.shard(channel)
        body = wire.encode_body(data, opts.client_info, opts.tags, int(time.time() * 1000))
        history = opts.history_size > 0 and opts.history_ttl > 0
        result_ttl = int(opts.idempotent_result_ttl) if opts.idempotency_key else 0
        top, epoch, suppressed = await shard.script_batched(
            "publish",
            [self.keys.stream(channel), self.keys.meta(channel), self.keys.result(channel, opts.idempotency_key)],
            [body, opts.history_size if history else 0, max(int(opts.history_ttl), 1),
             self.keys.client_channel(channel), self._meta_ttl(opts.history_meta_ttl), new_epoch(),
             shard.publish_command, result_ttl, "1" if opts.use_delta and history else "0"],
        )
        epoch_str = epoch.decode() if isinstance(epoch, bytes) else str(epoch or "")
        return PublishResult(StreamPosition(int(top), epoch_str), suppressed=bool(suppressed))

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
