"""Presence in Redis: per channel a hash (client id → msgpack ClientInfo) and a sorted set of expiry times.
Reads drop entries whose connection stopped refreshing them (a node that died without cleaning up)."""

from __future__ import annotations

import time

import msgpack

from node.broker.base import PresenceManager
from node.broker.redis import RedisBroker
from node.broker.wire import decode_info, encode_info
from node.models import ClientInfo, PresenceStats


class RedisPresenceManager(PresenceManager):
    def __init__(self, broker: RedisBroker, *, ttl: float) -> None:
        self._broker = broker  # shares its shards and key naming: presence of a channel lives on its shard
        self._ttl = max(int(ttl), 1)

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        flat = await self._broker.shard(channel).script("presence_get", list(self._broker.keys.presence(channel)),
                                                        [int(time.time())])
        out: dict[str, ClientInfo] = {}
        for i in range(0, len(flat), 2):
            info = decode_info(msgpack.unpackb(flat[i + 1], raw=False))
            if info is not None:
                out[flat[i].decode()] = info
        return out

    async def presence_stats(self, channel: str) -> PresenceStats:
        entries = await self.presence(channel)
        return PresenceStats(len(entries), len({info.user for info in entries.values()}))

    async def add_presence(self, channel: str, client_id: str, info: ClientInfo) -> None:
        await self._broker.shard(channel).script(
            "presence_add", list(self._broker.keys.presence(channel)),
            [self._ttl, int(time.time()) + self._ttl, client_id, msgpack.packb(encode_info(info), use_bin_type=True)])

    async def remove_presence(self, channel: str, client_id: str, user_id: str) -> None:
        await self._broker.shard(channel).script("presence_remove", list(self._broker.keys.presence(channel)),
                                                 [client_id])

    async def close(self) -> None:
        return None  # the broker owns the connections
