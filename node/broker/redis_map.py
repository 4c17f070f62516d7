"""Map state in Redis (node/maps/): per channel a hash of key -> msgpack(offset) .. publication body, a sorted
set of the keys in lexical order (state pages), a sorted set of expiry times and a hash of the keys' versions.
All share the channel's hash tag with its stream, so map_publish.lua (publish.lua with map_prologue.lua spliced
in and map_epilogue.lua at its end) checks the key's conditions, changes it and appends its stream entry in one
atomic call, on one Redis Cluster slot. Channels with expiring keys are listed in one set that every node's
cleanup round reads. Map idempotency results use the stream publishes' result keys (a map channel has none)."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import msgpack

from node.broker import wire
from node.broker.base import PublishDone, new_epoch
from node.broker.redis import CHANNEL_CACHE_SIZE, RedisBroker, _bulks, _publish_result
from node.broker.redis_shard import RedisShard, ScriptCall, hash_tagged
from node.maps.state import SUPPRESSED_IDEMPOTENCY, UNCONDITIONAL, Conditions, Entry
from node.maps.store import set_in_task
from node.models import PublishOptions, PublishResult

logger = logging.getLogger(__name__)


def _entry(value: bytes | str) -> Entry:
    """A stored value: msgpack(offset) followed by the publication body."""
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(value)
    offset = unpacker.unpack()
    pub = wire.decode_body(unpacker.unpack(), offset)
    return Entry(pub.data, offset, pub.info, pub.tags)


def _write_result(reply: Any) -> PublishResult:
    """map_publish.lua's reply; its third element: 0, 1 (publish.lua's idempotency hit) or the prologue's
    suppress reason."""
    top, epoch, suppressed = reply
    reason = SUPPRESSED_IDEMPOTENCY if suppressed == 1 else \
        suppressed.decode() if isinstance(suppressed, bytes) else ""
    result = _publish_result((top, epoch, bool(reason)))
    return dataclasses.replace(result, suppress_reason=reason) if reason else result


class RedisMapStore:
    def __init__(self, broker: RedisBroker) -> None:
        self._broker = broker
        prefix = broker.keys.prefix
        self._prefix = prefix
        self._expiring = f"{prefix}.map.expiring"
        # channel -> its keys (no idempotency key), PUB/SUB channel, and their RESP encoding (see _call)
        self._channels: dict[str, tuple[list[str], bytes, bytes]] = {}

    def _keys(self, channel: str, idempotency_key: str = "") -> list[str]:
        keys, tag = self._broker.keys, hash_tagged(channel)
        return [keys.stream(channel), keys.meta(channel), keys.result(channel, idempotency_key),
                f"{self._prefix}.map.values.{tag}", f"{self._prefix}.map.keys.{tag}",
                f"{self._prefix}.map.expiry.{tag}", f"{self._prefix}.map.versions.{tag}"]

    async def _write(self, channel: str, data: bytes, opts: PublishOptions, op: str, expire_at_ms: int,
                     conditions: Conditions = UNCONDITIONAL) -> PublishResult:
        shard = self._broker.shard(channel)
        return _write_result(await shard.run(self._call(shard, channel, data, opts, op, expire_at_ms, conditions)))

    def _call(self, shard: RedisShard, channel: str, data: bytes, opts: PublishOptions, op: str,
              expire_at_ms: int, conditions: Conditions) -> ScriptCall:
        now_ms = int(time.time() * 1000)
        body = wire.encode_body(data, opts.client_info, opts.tags, now_ms, opts.key, opts.removed)
        result_ttl = max(int(opts.idempotent_result_ttl), 1) if opts.idempotency_key else 0
        rest = [opts.history_size, max(int(opts.history_ttl), 1), self._broker._meta_ttl(opts.history_meta_ttl),
                new_epoch(), shard.publish_command, result_ttl, b"0", body,
                op, opts.key, expire_at_ms, now_ms, b"1" if opts.use_delta else b"0", conditions.key_mode,
                conditions.version, conditions.version_epoch]
        if opts.idempotency_key:
            return shard.call("map_publish", self._keys(channel, opts.idempotency_key),
                              [self._broker.keys.client_channel(channel), *rest])
        # The channel's keys and PUB/SUB channel (ARGV 1), encoded once: what shard.call would encode.
        cached = self._channels.get(channel)
        if cached is None:
            if len(self._channels) >= CHANNEL_CACHE_SIZE:
                self._channels.clear()
            names, channel_name = self._keys(channel), self._broker.keys.client_channel(channel)
            cached = self._channels[channel] = (names, channel_name, _bulks((len(names), *names, channel_name)))
        keys, pubsub, encoded = cached
        command = shard.head("map_publish", len(keys) + 2 + len(rest)) + encoded + _bulks(rest)
        return ScriptCall("map_publish", command, keys, [pubsub, *rest])

    async def set(self, channel: str, data: bytes, opts: PublishOptions, key_ttl: float,
                  conditions: Conditions = UNCONDITIONAL) -> PublishResult:
        expire_at_ms = int((time.time() + key_ttl) * 1000) if key_ttl > 0 else 0
        result = await self._write(channel, data, opts, "set", expire_at_ms, conditions)
        if expire_at_ms and not result.suppressed:
            await self._broker.shards[0].client.sadd(self._expiring, channel)
        return result

    def set_then(self, channel: str, data: bytes, opts: PublishOptions, key_ttl: float, done: PublishDone) -> None:
        """``set`` answered straight from the script's reply (no task), unless the key expires: then the
        channel is also listed for the cleanup round after the write, as ``set`` does, in a task."""
        if key_ttl > 0:
            set_in_task(self, channel, data, opts, key_ttl, done)
            return
        shard = self._broker.shard(channel)

        def reply(value: Any) -> None:
            # From the command connection's protocol callback: a failure of the caller's must not escape into it.
            try:
                done(value if isinstance(value, BaseException) else _write_result(value))
            except Exception:
                logger.exception("map publish callback failed")

        shard.run_then(self._call(shard, channel, data, opts, "set", 0, UNCONDITIONAL), reply)

    async def remove(self, channel: str, opts: PublishOptions, *, expired_only: bool = False) -> PublishResult:
        if opts.tags is None:
            # The removal carries the entry's tags, as Centrifugo's does, so tags-filtered subscribers see it. (Read
            # before the script: a write racing the removal changes at most which version's tags it carries.)
            value = await self._broker.shard(channel).client.hget(self._keys(channel)[3], opts.key)
            if value is not None:
                opts = dataclasses.replace(opts, tags=_entry(value).tags)
        return await self._write(channel, b"", opts, "expire" if expired_only else "remove", 0)

    async def touch(self, channel: str, key: str, key_ttl: float) -> bool:
        keys = self._keys(channel)
        expire_at_ms = int((time.time() + key_ttl) * 1000) if key_ttl > 0 else 0
        found = await self._broker.shard(channel).script("map_touch", [keys[3], keys[5]], [key, expire_at_ms])
        return bool(found)

    async def page(self, channel: str, cursor: str, limit: int) -> tuple[list[tuple[str, Entry]], str]:
        keys = self._keys(channel)
        client = self._broker.shard(channel).client
        names = await client.zrangebylex(keys[4], f"({cursor}" if cursor else "-", "+", start=0, num=limit + 1)
        more = len(names) > limit
        names = names[:limit]
        if not names:
            return [], ""
        values = await client.hmget(keys[3], names)
        out: list[tuple[str, Entry]] = []
        for raw_key, value in zip(names, values, strict=True):
            if value is None:
                continue  # removed between the two reads: the stream after the page's position has it
            out.append((raw_key.decode() if isinstance(raw_key, bytes) else raw_key, _entry(value)))
        last = names[-1]
        return out, (last.decode() if isinstance(last, bytes) else last) if more else ""

    async def expired(self, batch: int) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        now_ms = int(time.time() * 1000)
        for raw in await self._broker.shards[0].client.smembers(self._expiring):
            channel = raw.decode() if isinstance(raw, bytes) else raw
            client = self._broker.shard(channel).client
            expiry = self._keys(channel)[5]
            keys: list[Any] = await client.zrangebyscore(expiry, "-inf", now_ms, start=0, num=batch)
            found.extend((channel, k.decode() if isinstance(k, bytes) else str(k)) for k in keys)
            if not keys and not await client.zcard(expiry):
                await self._broker.shards[0].client.srem(self._expiring, channel)
        return found

    async def count(self, channel: str) -> int:
        return int(await self._broker.shard(channel).client.zcard(self._keys(channel)[4]))

    async def clear(self, channel: str) -> None:
        await self._broker.shard(channel).client.delete(*self._keys(channel)[3:])

    async def close(self) -> None:
        return None
