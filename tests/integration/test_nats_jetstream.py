"""The Fugato-only JetStream mode of the NATS broker (``broker.nats.jetstream``): history with offsets and
epochs in a JetStream stream, shared by two nodes, so ``history``, positioning and recovery work with NATS
alone; and the faults: nats-server killed and restarted under two live nodes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from harness import API_KEY, SECRET, PyFactory, ServerFactory, ServerProcess, unique_channel, wait_until
from jsclient import JsDriverError
from nats_servers import NatsServer
from redis_servers import RedisStandalone
from test_nats_nodes import nats_config


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats-js"))
    server.start()
    yield server
    server.stop()


def jetstream_config(url: str, prefix: str, redis_url: str) -> dict[str, Any]:
    return nats_config(url, prefix, redis_url, jetstream={"enabled": True})


@pytest.fixture
async def two_nodes(server_factory: ServerFactory, nats_server: NatsServer, redis_standalone: RedisStandalone,
                    redis_prefix: str) -> tuple[ServerProcess, ServerProcess]:
    config = jetstream_config(nats_server.url, redis_prefix, redis_standalone.url)
    a = await server_factory(config, name="node-a")
    b = await server_factory(config, name="node-b")
    return a, b


async def test_history_offsets_shared_by_two_nodes(two_nodes: tuple[ServerProcess, ServerProcess],
                                                   py_factory: PyFactory) -> None:
    a, b = two_nodes
    ch = unique_channel("chat:")
    empty = await b.api_result("history", {"channel": ch, "limit": -1})
    assert empty["publications"] == [] and empty.get("offset", 0) == 0
    py = await py_factory(a, "alice")
    await py.subscribe(ch)
    # Both nodes publish at once: every publication gets its own offset, with none skipped.
    results = await asyncio.gather(*((a if i % 2 else b).api_result("publish", {"channel": ch, "data": {"n": i}})
                                     for i in range(20)))
    assert sorted(r["offset"] for r in results) == list(range(1, 21))
    assert len({r["epoch"] for r in results}) == 1
    assert results[0]["epoch"] == empty["epoch"], "the epoch read before the first publication stays"
    live = [(await py.wait("publication", ch)).ctx.pub for _ in range(20)]
    assert [p.offset for p in live] == list(range(1, 21)), "live delivery in stream order, exactly once"
    history = await a.api_result("history", {"channel": ch, "limit": -1})
    assert [p["offset"] for p in history["publications"]] == list(range(1, 21))
    by_offset = {r["offset"]: i for i, r in enumerate(results)}
    assert [p["data"] for p in history["publications"]] == [{"n": by_offset[o]} for o in range(1, 21)]
    assert history["offset"] == 20 and history["epoch"] == results[0]["epoch"]
    since = await b.api_result("history", {"channel": ch, "limit": 3,
                                           "since": {"offset": 15, "epoch": history["epoch"]}})
    assert [p["offset"] for p in since["publications"]] == [16, 17, 18]
    reverse = await b.api_result("history", {"channel": ch, "limit": 2, "reverse": True})
    assert [p["offset"] for p in reverse["publications"]] == [20, 19]
    # Idempotent publishing: the same key on either node gives the first publication's position, once.
    once = await a.api_result("publish", {"channel": ch, "data": "once", "idempotency_key": "k1"})
    again = await b.api_result("publish", {"channel": ch, "data": "once", "idempotency_key": "k1"})
    assert once == again and once["offset"] == 21
    assert (await a.api_result("history", {"channel": ch, "limit": 0}))["offset"] == 21


async def test_history_keeps_the_namespace_size(server_factory: ServerFactory, nats_server: NatsServer,
                                                redis_standalone: RedisStandalone, redis_prefix: str) -> None:
    small = await server_factory(
        {**jetstream_config(nats_server.url, redis_prefix, redis_standalone.url),
         "channel": {"namespaces": [{"name": "small", "history_size": 3, "history_ttl": "300s"}]}}, name="small")
    ch = unique_channel("small:")
    for i in range(6):
        await small.api_result("publish", {"channel": ch, "data": i})
    history = await small.api_result("history", {"channel": ch, "limit": -1})
    assert [(p["offset"], p["data"]) for p in history["publications"]] == [(4, 3), (5, 4), (6, 5)]
    removed = await small.api_result("history_remove", {"channel": ch})
    assert removed == {}
    after = await small.api_result("history", {"channel": ch, "limit": -1})
    assert after["publications"] == []
    assert (after["offset"], after["epoch"]) == (6, history["epoch"]), "removing history keeps the position"
    published = await small.api_result("publish", {"channel": ch, "data": 6})
    assert (published["offset"], published["epoch"]) == (7, history["epoch"])


async def test_recovery_across_nodes(two_nodes: tuple[ServerProcess, ServerProcess], py_factory: PyFactory) -> None:
    a, b = two_nodes
    ch = unique_channel("feed:")
    py = await py_factory(a, "dave", min_reconnect_delay=1.5, max_reconnect_delay=2.0)
    await py.subscribe(ch)
    await b.api_result("publish", {"channel": ch, "data": 1})
    assert (await py.wait("publication", ch)).ctx.pub.offset == 1
    await b.api_result("disconnect", {"user": "dave", "disconnect": {"code": 4000, "reason": "come back"}})
    for i in range(2, 6):
        await b.api_result("publish", {"channel": ch, "data": i})
    subscribed = await py.wait("subscribed", ch)
    assert subscribed.ctx.recovered and subscribed.ctx.was_recovering
    recovered = [(await py.wait("publication", ch)).ctx.pub for _ in range(4)]
    assert [(p.offset, p.data) for p in recovered] == [(i, i) for i in range(2, 6)]


async def _health(server: ServerProcess) -> int:
    async with aiohttp.ClientSession() as session, session.get(f"{server.http_url}/health") as resp:
        return resp.status


async def test_nats_server_down_and_back(server_factory: ServerFactory, tmp_path_factory: pytest.TempPathFactory,
                                         redis_standalone: RedisStandalone, redis_prefix: str,
                                         py_factory: PyFactory) -> None:
    nats = NatsServer(tmp_path_factory.mktemp("nats-restart"))
    nats.start()
    try:
        config = jetstream_config(nats.url, redis_prefix, redis_standalone.url)
        a = await server_factory(config, name="node-a")
        b = await server_factory(config, name="node-b")
        feed, plain = unique_channel("feed:"), unique_channel("plain")
        py = await py_factory(a, "erin", min_reconnect_delay=0.5, max_reconnect_delay=1.0)
        await py.subscribe(feed)
        await py.subscribe(plain)
        await b.api_result("publish", {"channel": feed, "data": 1})
        assert (await py.wait("publication", feed)).ctx.pub.offset == 1

        nats.stop()
        # /health turns red within 5 s on both nodes; an API publish answers an error, not success.
        await wait_until(lambda: _health_all_red(a, b), timeout=5, what="health red on both nodes")
        reply = await asyncio.wait_for(b.api("publish", {"channel": plain, "data": "lost"}), 10)
        assert "error" in reply, reply
        reply = await asyncio.wait_for(b.api("publish", {"channel": feed, "data": "lost"}), 10)
        assert "error" in reply, reply

        nats.start()
        # Node B publishes as soon as it is back, perhaps before node A has re-subscribed: whatever A's client
        # misses live, it gets through recovery (A checks its subscribers' positions after reconnecting).
        await wait_until(lambda: _health_all_green(b), timeout=10, what="node B healthy again")

        async def published(i: int) -> bool:
            return "result" in await b.api("publish", {"channel": feed, "data": i})

        for i in range(2, 5):
            await wait_until(lambda i=i: published(i), timeout=10, interval=0.1, what=f"publish {i} accepted")
        pubs = [(await py.wait("publication", feed, timeout=15)).ctx.pub for _ in range(3)]
        assert [(p.offset, p.data) for p in pubs] == [(i, i) for i in range(2, 5)]
        await wait_until(lambda: _health_all_green(a, b), timeout=10, what="health green on both nodes")

        # Live delivery across nodes resumes without restarting a node.
        async def delivered() -> bool:
            await b.api_result("publish", {"channel": plain, "data": "back"})
            try:
                await py.wait("publication", plain, timeout=0.5)
            except JsDriverError:
                return False
            return True

        await wait_until(delivered, timeout=10, interval=0.1, what="live delivery over NATS again")
    finally:
        nats.stop()


async def _health_all_red(*servers: ServerProcess) -> bool:
    return all([await _health(s) != 200 for s in servers])


async def _health_all_green(*servers: ServerProcess) -> bool:
    return all([await _health(s) == 200 for s in servers])


async def test_expired_history_starts_a_new_epoch(server_factory: ServerFactory, nats_server: NatsServer,
                                                  redis_standalone: RedisStandalone, redis_prefix: str) -> None:
    # Only a 1 s history: the stream itself drops the messages after a second.
    config = {**jetstream_config(nats_server.url, redis_prefix, redis_standalone.url),
              "client": {"token": {"hmac_secret_key": SECRET}}, "http_api": {"key": API_KEY},
              "channel": {"namespaces": [{"name": "short", "history_size": 10, "history_ttl": "1s"}]}}
    server = await server_factory(config, base=False, name="short")
    ch = unique_channel("short:")
    first = [await server.api_result("publish", {"channel": ch, "data": i}) for i in range(2)]
    assert [p["offset"] for p in first] == [1, 2]

    async def new_epoch() -> dict[str, Any] | None:
        top = await server.api_result("history", {"channel": ch, "limit": -1})
        return top if top["epoch"] != first[0]["epoch"] else None

    top = await wait_until(new_epoch, timeout=10, interval=0.2, what="history expired")
    assert top["publications"] == [] and top.get("offset", 0) == 0
    again = await server.api_result("publish", {"channel": ch, "data": "new"})
    assert (again["offset"], again["epoch"]) == (1, top["epoch"]), "the epoch read before the publication stays"


async def test_memory_storage_is_recreated_after_a_nats_restart(
        server_factory: ServerFactory, tmp_path_factory: pytest.TempPathFactory,
        redis_standalone: RedisStandalone, redis_prefix: str) -> None:
    nats = NatsServer(tmp_path_factory.mktemp("nats-memory"))
    nats.start()
    try:
        config = nats_config(nats.url, redis_prefix, redis_standalone.url, jetstream={"enabled": True,
                                                                                     "storage": "memory"})
        server = await server_factory(config, name="memory-js")
        ch = unique_channel("feed:")
        before = await server.api_result("publish", {"channel": ch, "data": 1})
        nats.stop()
        nats.start()

        async def published() -> dict[str, Any] | None:
            reply = await server.api("publish", {"channel": ch, "data": 2})
            return reply.get("result")

        after = await wait_until(published, timeout=15, interval=0.2, what="publishing again")
        # The stream was lost with the server's memory: a new epoch starts, never a reused offset.
        assert after["epoch"] != before["epoch"] and after["offset"] == 1
        history = await server.api_result("history", {"channel": ch, "limit": -1})
        assert [p["data"] for p in history["publications"]] == [2]
    finally:
        nats.stop()
