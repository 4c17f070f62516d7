"""A Redis map broker of its own (``map_broker.redis``) next to the NATS broker, which carries everything else:
map channels keep working across nodes, and their Redis going down gives bounded errors and a red /health on
both nodes, then recovers by itself while NATS stays up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness import JsFactory, ServerFactory, unique_channel, wait_until
from nats_servers import NatsServer
from redis_servers import RedisStandalone
from test_maps import MAP_NAMESPACES, _entries, health_is, subscribed_to_a_new_map


async def test_map_redis_down_and_back_beside_nats(tmp_path: Path, server_factory: ServerFactory,
                                                   js_factory: JsFactory, redis_prefix: str) -> None:
    nats = NatsServer(tmp_path / "nats")
    nats.start()
    redis = RedisStandalone(tmp_path / "redis").start()
    try:
        config: dict[str, Any] = {
            **MAP_NAMESPACES,
            "broker": {"enabled": True, "type": "nats", "nats": {"url": nats.url, "prefix": redis_prefix}},
            "map_broker": {"type": "redis", "redis": {"address": redis.url, "prefix": redis_prefix}},
        }
        a = await server_factory(config, name="node-a")
        b = await server_factory(config, name="node-b")
        ch, js = await subscribed_to_a_new_map(a, b, js_factory)

        redis.stop()
        await wait_until(lambda: health_is(503, a, b), timeout=15, what="health red on both nodes")
        reply = await a.api("map_publish", {"channel": ch, "key": "b", "data": {"v": 2}})
        assert reply.get("error", {}).get("code") == 100, reply
        assert "result" in await a.api("publish", {"channel": unique_channel("plain"), "data": {}}), \
            "stream channels on NATS are not affected"

        redis.start()
        await wait_until(lambda: health_is(200, a, b), timeout=20, what="health green on both nodes")

        async def published() -> bool:
            return "result" in await a.api("map_publish", {"channel": ch, "key": "c", "data": {"v": 3}})

        await wait_until(published, timeout=15, interval=0.2, what="map_publish accepted again")
        # The restarted Redis kept nothing (no persistence): the map starts a new epoch, and the subscriber on
        # node B, told its position is gone, reloads the state (the SDK's from-scratch strategy) and sees it.
        def reloaded() -> bool:
            return any(_entries(e) == {"c": {"v": 3}} for e in js.events("map_sync"))

        await wait_until(reloaded, timeout=20, what="the subscriber reloaded the new state")
    finally:
        redis.stop()
        nats.stop()
