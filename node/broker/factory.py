"""Builds the engine a config asks for: the ``engine`` section, or Centrifugo v6's separate ``broker`` and
``presence_manager`` sections, which each replace their half of the engine when enabled; and the broker of map
channels that ``map_broker`` asks for, when it is not the engine's own."""

from __future__ import annotations

from node.broker.base import Broker, Engine, PresenceManager
from node.broker.memory import MemoryBroker, MemoryPresenceManager
from node.broker.nats import NatsBroker
from node.broker.postgres_map import PostgresMapBroker
from node.broker.redis import RedisBroker
from node.broker.redis_presence import RedisPresenceManager
from node.broker.routed import RoutedBroker
from node.config import Config, has_map_namespaces
from node.config_engine import RedisEngineConfig


class StandaloneRedisPresenceManager(RedisPresenceManager):
    """Redis presence without the Redis broker's PUB/SUB: it owns (and closes) the command connections."""

    def __init__(self, cfg: RedisEngineConfig, node_id: str) -> None:
        self._own = RedisBroker(cfg, node_id=node_id)  # never started: only its command clients are used
        super().__init__(self._own, ttl=cfg.presence_ttl)

    async def close(self) -> None:
        await self._own.close()  # every connection of its shards (command clients and pipelines; PUB/SUB unused)


def _history_limits(config: Config) -> tuple[int, float]:
    """The largest history size and TTL of any namespace: what a shared history stream must keep."""
    channel = config.channel
    scopes = [channel.without_namespace, *channel.namespaces]
    return max(o.history_size for o in scopes), max(o.history_ttl for o in scopes)


def _broker(config: Config, node_id: str) -> Broker:
    cfg = config.broker
    meta_ttl = config.channel.history_meta_ttl
    if cfg.type == "nats":
        return NatsBroker(cfg.nats, node_id=node_id, history_limits=_history_limits(config),
                          history_meta_ttl=meta_ttl)
    if cfg.type == "redis":
        return RedisBroker(cfg.redis, node_id=node_id, history_meta_ttl=meta_ttl)
    return MemoryBroker(history_meta_ttl=meta_ttl)


def _map_broker(config: Config, node_id: str, broker: Broker) -> Broker | None:
    """The broker of map channels when it is not ``broker``. The memory map broker keeps map state next to the
    engine's streams (in this process, or in the Redis engine's Redis); with the NATS broker, which keeps no
    state, map channels get a broker of their own in this process, as Centrifugo's memory map broker."""
    cfg, meta_ttl = config.map_broker, config.channel.history_meta_ttl
    if cfg.type == "postgres":
        return PostgresMapBroker(cfg.postgres, history_meta_ttl=meta_ttl)
    if cfg.type == "redis":
        if isinstance(broker, RedisBroker) and broker.serves(cfg.redis):
            return None
        return RedisBroker(cfg.redis, node_id=node_id, history_meta_ttl=meta_ttl, control=False)
    if isinstance(broker, (MemoryBroker, RedisBroker)) or not has_map_namespaces(config.channel):
        return None  # (no map namespaces at start: nothing to route, and no lookup on each publish)
    return MemoryBroker(history_meta_ttl=meta_ttl)


def build_engine(config: Config, node_id: str) -> Engine:
    engine = _build_engine(config, node_id)
    maps = _map_broker(config, node_id, engine.broker)
    if maps is None:
        return engine
    return Engine(broker=RoutedBroker(engine.broker, maps), presence=engine.presence, map_broker=maps)


def _build_engine(config: Config, node_id: str) -> Engine:
    separate_broker, separate_presence = config.broker.enabled, config.presence_manager.enabled
    broker: Broker | None = _broker(config, node_id) if separate_broker else None
    presence: PresenceManager | None = None
    if separate_presence:
        pm = config.presence_manager
        presence = StandaloneRedisPresenceManager(pm.redis, node_id) if pm.type == "redis" \
            else MemoryPresenceManager()
    if config.engine.type == "redis":
        if broker is None:
            redis = RedisBroker(config.engine.redis, node_id=node_id, history_meta_ttl=config.channel.history_meta_ttl)
            broker = redis
            presence = presence or RedisPresenceManager(redis, ttl=config.engine.redis.presence_ttl)
        presence = presence or StandaloneRedisPresenceManager(config.engine.redis, node_id)
    return Engine(broker=broker or MemoryBroker(history_meta_ttl=config.channel.history_meta_ttl),
                  presence=presence or MemoryPresenceManager())
