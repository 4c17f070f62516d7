"""Builds the engine a config asks for."""

from __future__ import annotations

from node.broker.base import Engine
from node.broker.memory import MemoryBroker, MemoryPresenceManager
from node.broker.redis import RedisBroker
from node.broker.redis_presence import RedisPresenceManager
from node.config import Config


def build_engine(config: Config, node_id: str) -> Engine:
    if config.engine.type == "redis":
        broker = RedisBroker(config.engine.redis, node_id=node_id, history_meta_ttl=config.channel.history_meta_ttl)
        return Engine(broker=broker, presence=RedisPresenceManager(broker, ttl=config.engine.redis.presence_ttl))
    return Engine(broker=MemoryBroker(history_meta_ttl=config.channel.history_meta_ttl),
                  presence=MemoryPresenceManager())
