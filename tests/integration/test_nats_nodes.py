"""Two Fugato nodes over a real nats-server (Centrifugo's ``broker.type: nats``) with presence in a real Redis
(``presence_manager.type: redis``): SDK clients on different nodes exchange publications exactly once and in
order, presence and server-side operations act across nodes, history answers 108 without JetStream, and raw
mode exchanges unwrapped payloads with plain NATS publishers and subscribers."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from harness import JsFactory, PyFactory, ServerFactory, ServerProcess, unique_channel, wait_until
from nats_servers import NatsServer
from redis_servers import RedisStandalone
from test_protocol_raw import Raw, raw


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.stop()


def nats_config(url: str, prefix: str, redis_url: str, **nats_options: Any) -> dict[str, Any]:
    """Centrifugo v6's separate broker and presence manager, as on centrifugal.dev."""
    return {
        "broker": {"enabled": True, "type": "nats", "nats": {"url": url, "prefix": prefix, **nats_options}},
        "presence_manager": {"enabled": True, "type": "redis",
                             "redis": {"address": [redis_url], "prefix": prefix}},
    }


@pytest.fixture
async def two_nodes(server_factory: ServerFactory, nats_server: NatsServer, redis_standalone: RedisStandalone,
                    redis_prefix: str) -> tuple[ServerProcess, ServerProcess]:
    config = nats_config(nats_server.url, redis_prefix, redis_standalone.url)
    a = await server_factory(config, name="node-a")
    b = await server_factory(config, name="node-b")
    return a, b


async def test_cross_node_delivery_exactly_once_in_order(two_nodes: tuple[ServerProcess, ServerProcess],
                                                         py_factory: PyFactory, js_factory: JsFactory) -> None:
    a, b = two_nodes
    ch = unique_channel("plain")
    py = await py_factory(a, "alice")
    sub = await py.subscribe(ch)
    js = await js_factory(b)
    await js.call("connect", token=b.token("bob"), wait=True)
    await js.call("subscribe", channel=ch, wait=True)

    await sub.publish({"from": "python on A"})
    assert (await js.wait("publication", channel=ch))["data"] == {"from": "python on A"}
    assert (await py.wait("publication", ch)).ctx.pub.data == {"from": "python on A"}
    # Each node publishes 50, interleaved. NATS orders what one connection sends, not what two send: every
    # subscriber gets each node's publications exactly once and in that node's order.
    for i in range(50):
        await a.api_result("publish", {"channel": ch, "data": {"node": "a", "n": i}})
        await b.api_result("publish", {"channel": ch, "data": {"node": "b", "n": i}})
    got_js = [(await js.wait("publication", channel=ch))["data"] for _ in range(100)]
    got_py = [(await py.wait("publication", ch)).ctx.pub.data for _ in range(100)]
    for got in (got_js, got_py):
        for node in ("a", "b"):
            assert [d["n"] for d in got if d["node"] == node] == list(range(50)), (node, got)
    await b.api_result("publish", {"channel": ch, "data": "last"})
    assert (await py.wait("publication", ch)).ctx.pub.data == "last", "no duplicate arrived before the last one"
    assert (await js.wait("publication", channel=ch))["data"] == "last"


async def test_presence_and_join_leave_across_nodes(two_nodes: tuple[ServerProcess, ServerProcess],
                                                    py_factory: PyFactory, js_factory: JsFactory) -> None:
    a, b = two_nodes
    ch = unique_channel("chat:")
    py = await py_factory(a, "alice")
    await py.subscribe(ch, join_leave=True)
    js = await js_factory(b)
    await js.call("connect", token=b.token("bob"), wait=True)
    await js.call("subscribe", channel=ch, wait=True)

    async def users() -> list[str] | None:
        presence = await a.api_result("presence", {"channel": ch})
        found = sorted(info["user"] for info in presence["presence"].values())
        return found if found == ["alice", "bob"] else None

    await wait_until(users, timeout=10, what="both users present")  # presence is added just after the reply
    assert (await b.api_result("presence_stats", {"channel": ch})) == {"num_clients": 2, "num_users": 2}
    # Join and leave travel over NATS: alice (node A) sees bob (node B) leave.
    await js.call("unsubscribe", channel=ch, wait=True)
    leave = await py.wait("leave", ch)
    assert leave.ctx.info.user == "bob"


async def test_server_side_subscribe_and_disconnect_across_nodes(
        two_nodes: tuple[ServerProcess, ServerProcess], js_factory: JsFactory) -> None:
    a, b = two_nodes

    async def both_listed() -> list[dict[str, Any]] | None:
        nodes = (await a.api_result("info"))["nodes"]
        return nodes if len(nodes) == 2 else None

    await wait_until(both_listed, timeout=10)
    js = await js_factory(b)
    await js.call("connect", token=b.token("carol"), wait=True)
    ch = unique_channel("plain")
    await a.api_result("subscribe", {"user": "carol", "channel": ch})
    assert (await js.wait("server_subscribed"))["channel"] == ch
    assert (await a.api_result("channels", {}))["channels"].get(ch) == {"num_clients": 1}
    await a.api_result("publish", {"channel": ch, "data": "to carol"})
    assert (await js.wait("server_publication"))["data"] == "to carol"
    await a.api_result("unsubscribe", {"user": "carol", "channel": ch})
    assert (await js.wait("server_unsubscribed"))["channel"] == ch
    await a.api_result("disconnect", {"user": "carol"})
    assert (await js.wait("disconnected"))["code"] == 3503


async def test_history_and_recovery_not_available_without_jetstream(
        two_nodes: tuple[ServerProcess, ServerProcess], py_factory: PyFactory) -> None:
    a, _ = two_nodes
    ch = unique_channel("chat:")
    reply = await a.api("history", {"channel": ch, "limit": -1})
    assert reply["error"] == {"code": 108, "message": "not available"}
    # A publication still reaches subscribers; it just keeps no history (offset 0).
    py = await py_factory(a, "erin")
    await py.subscribe(ch)
    await a.api_result("publish", {"channel": ch, "data": "x"})
    assert (await py.wait("publication", ch)).ctx.pub.offset == 0
    # A subscription that asks for recovery cannot get it.
    with pytest.raises(AssertionError, match="unsubscribed instead") as failed:
        await py.subscribe(unique_channel("feed:"))
    assert "code=108" in str(failed.value), str(failed.value)


async def test_checkconfig_warns_about_history_without_jetstream(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({
        "broker": {"enabled": True, "type": "nats", "nats": {"url": "nats://127.0.0.1:4222"}},
        "channel": {"namespaces": [{"name": "chat", "history_size": 10, "history_ttl": "60s"}]},
    }))
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "node", "checkconfig", "--config", str(path),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 0
    assert "channel.namespaces[chat]: history, recovery and positioning are not available" in err.decode()
    assert "broker.nats.jetstream" in err.decode()


async def test_raw_mode_with_plain_nats(server_factory: ServerFactory, nats_server: NatsServer,
                                        redis_standalone: RedisStandalone, redis_prefix: str,
                                        py_factory: PyFactory) -> None:
    raw = {"raw_mode": {"enabled": True, "prefix": f"{redis_prefix}.raw.", "channel_replacements": {":": "."}}}
    a = await server_factory(nats_config(nats_server.url, redis_prefix, redis_standalone.url, **raw), name="raw")
    nc = await nats.connect(nats_server.url)
    try:
        ch = unique_channel("chat:")
        subject = f"{redis_prefix}.raw.{ch.replace(':', '.')}"
        py = await py_factory(a, "frank")
        await py.subscribe(ch)
        # A plain NATS publisher reaches the channel's subscribers with its payload untouched.
        await nc.publish(subject, b'{"from":"nats"}')
        assert (await py.wait("publication", ch)).ctx.pub.data == {"from": "nats"}
        # An API publish lands on the subject as the bare payload.
        listener = await nc.subscribe(subject)
        await nc.flush()
        await a.api_result("publish", {"channel": ch, "data": {"from": "api"}})
        msg = await listener.next_msg(timeout=5)
        assert json.loads(msg.data) == {"from": "api"}
        assert (await py.wait("publication", ch)).ctx.pub.data == {"from": "api"}
    finally:
        await nc.close()


async def test_workers_each_have_their_own_nats_connection(server_factory: ServerFactory, nats_server: NatsServer,
                                                          redis_standalone: RedisStandalone, redis_prefix: str,
                                                          py_factory: PyFactory) -> None:
    config = nats_config(nats_server.url, redis_prefix, redis_standalone.url)
    server = await server_factory(config, name="workers", extra_args=("--workers", "2"))

    async def two_nodes() -> list[dict[str, Any]] | None:
        nodes = (await server.api_result("info"))["nodes"]
        return nodes if len(nodes) == 2 else None

    nodes = await wait_until(two_nodes, timeout=20)
    names = sorted(c.get("name", "") for c in nats_server.connections())
    for node in nodes:
        assert names.count(f"fugato {node['uid']}") == 1, names
    # Clients, on whichever worker the kernel gave them, share every channel.
    ch = unique_channel("plain")
    clients = [await py_factory(server, f"user{i}") for i in range(6)]
    for c in clients:
        await c.subscribe(ch)
    await server.api_result("publish", {"channel": ch, "data": "all"})
    for c in clients:
        assert (await c.wait("publication", ch)).ctx.pub.data == "all"


async def _next_push(c: Raw) -> dict[str, Any]:
    while True:
        msg = await c.recv(10)
        if "push" in msg:
            push: dict[str, Any] = msg["push"]
            return push


async def test_wildcard_subscriptions(two_nodes: tuple[ServerProcess, ServerProcess], server_factory: ServerFactory,
                                      nats_server: NatsServer, redis_standalone: RedisStandalone,
                                      redis_prefix: str) -> None:
    plain_node, _ = two_nodes
    base = unique_channel("w")
    async with raw(plain_node) as c:  # without allow_wildcards a wildcard channel is refused
        await c.connect(plain_node.token("gina"))
        await c.send({"id": 2, "subscribe": {"channel": f"{base}.*"}})
        assert (await c.reply(2))["error"] == {"code": 107, "message": "bad request"}
    config = nats_config(nats_server.url, f"{redis_prefix}w", redis_standalone.url, allow_wildcards=True)
    a = await server_factory(config, name="wild-a")
    b = await server_factory(config, name="wild-b")
    async with raw(a) as c:
        await c.connect(a.token("gina"))
        await c.send({"id": 2, "subscribe": {"channel": f"{base}.*"}})
        assert (await c.reply(2))["subscribe"] == {}
        for leaf in ("x", "y"):
            await b.api_result("publish", {"channel": f"{base}.{leaf}", "data": {"leaf": leaf}})
        pushes = [await _next_push(c), await _next_push(c)]
        assert [p["channel"] for p in pushes] == [f"{base}.*"] * 2
        assert [(p["pub"]["data"], p["pub"]["channel"]) for p in pushes] == [
            ({"leaf": "x"}, f"{base}.x"), ({"leaf": "y"}, f"{base}.y")]
    reply = await b.api("publish", {"channel": f"{base}.*", "data": {}})
    assert reply["error"]["code"] == 107, "a publication goes to one channel, never to a pattern"
