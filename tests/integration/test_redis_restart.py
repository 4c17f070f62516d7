"""A standalone Redis restarts under a node: /health reports the outage, publishes fail visibly, and delivery
resumes (subscribers recover what they missed) once Redis is back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import centrifuge
import pytest
from harness import PyFactory, ServerFactory, unique_channel, wait_until
from redis_servers import RedisStandalone
from test_redis_nodes import redis_engine


async def test_redis_restart(server_factory: ServerFactory, py_factory: PyFactory, redis_prefix: str,
                             tmp_path: Path) -> None:
    redis = await asyncio.to_thread(RedisStandalone(tmp_path / "redis").start)
    try:
        node = await server_factory(redis_engine(redis.url, redis_prefix) | {"client": {"ping_interval": "25s"},
                                                                             "prometheus": {"enabled": True}})
        ch = unique_channel("feed:")
        py = await py_factory(node, "watcher")
        await py.subscribe(ch)
        await node.api_result("publish", {"channel": ch, "data": 1})
        assert (await py.wait("publication", ch)).ctx.pub.data == 1

        async def health_is(status: int) -> bool:
            return (await node.http("GET", "/health"))[0] == status

        await asyncio.to_thread(redis.stop)
        await wait_until(lambda: health_is(503), timeout=10, what="/health reports the engine down")
        reply = await node.api("publish", {"channel": ch, "data": "lost?"})
        assert reply["error"]["code"] == 100, "a publish that cannot be stored is an error for the caller"
        with pytest.raises(centrifuge.ReplyError) as info:
            await py.client.history(ch, limit=1)  # "feed" lets subscribers read history
        assert info.value.code == 100, "a client command the engine cannot serve is a temporary error"
        assert py.events("disconnected") == [], "and the connection stays open"

        await asyncio.to_thread(redis.start)
        await wait_until(lambda: health_is(200), timeout=15, what="/health reports the engine back")
        # The stream is gone with the restarted (non-persistent) Redis: a new epoch starts. The node sends the
        # subscriber through recovery, which cannot continue the old epoch (recovered false: the app reloads).
        resubscribed = await py.wait("subscribed", ch, timeout=15)
        assert resubscribed.ctx.was_recovering and not resubscribed.ctx.recovered
        await node.api_result("publish", {"channel": ch, "data": 2})
        event = await py.wait_event(lambda e: e.kind == "publication" and e.ctx.pub.data == 2, timeout=15)
        assert event.ctx.pub.offset == 1

        # The outage is visible to monitoring: the lost PUB/SUB connection and the failed reconnects are counted.
        _, _, body = await node.http("GET", "/metrics")
        errors = {line.split("{", 1)[1].split("}", 1)[0]: float(line.rsplit(" ", 1)[1])
                  for line in body.decode().splitlines()
                  if line.startswith("centrifugo_broker_redis_pub_sub_errors_total{")}
        assert errors['error="connection_lost"'] >= 1, errors
        assert errors['error="reconnect_failed"'] >= 1, errors
        assert errors['error="subscribe_failed"'] == 0, errors
    finally:
        await asyncio.to_thread(redis.stop)

