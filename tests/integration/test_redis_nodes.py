"""Several Fugato nodes as one cluster through Redis Cluster: SDK clients on different nodes exchange
publications; history, recovery and presence are shared; the API acts on every node."""

from __future__ import annotations

from typing import Any

import pytest
from harness import JsFactory, PyFactory, ServerFactory, ServerProcess, unique_channel, wait_until
from redis_servers import RedisCluster


def redis_engine(url: str, prefix: str) -> dict[str, Any]:
    return {"engine": {"type": "redis", "redis": {"address": [url], "prefix": prefix}}}


@pytest.fixture
async def two_nodes(server_factory: ServerFactory, redis_cluster: RedisCluster,
                    redis_prefix: str) -> tuple[ServerProcess, ServerProcess]:
    config = redis_engine(redis_cluster.url, redis_prefix)
    a = await server_factory(config, name="node-a")
    b = await server_factory(config, name="node-b")
    return a, b


async def test_clients_on_two_nodes_exchange_publications(two_nodes: tuple[ServerProcess, ServerProcess],
                                                          py_factory: PyFactory, js_factory: JsFactory) -> None:
    a, b = two_nodes
    ch = unique_channel("chat:")
    py = await py_factory(a, "alice")
    sub = await py.subscribe(ch)
    js = await js_factory(b)
    await js.call("connect", token=b.token("bob"), wait=True)
    await js.call("subscribe", channel=ch, wait=True)

    await sub.publish({"from": "python on A"})
    assert (await js.wait("publication", channel=ch))["data"] == {"from": "python on A"}
    await js.call("publish", channel=ch, data={"from": "js on B"})
    assert (await js.wait("publication", channel=ch))["data"] == {"from": "js on B"}
    pubs = [(await py.wait("publication", ch)).ctx.pub for _ in range(2)]
    assert [p.data for p in pubs] == [{"from": "python on A"}, {"from": "js on B"}]
    assert [p.offset for p in pubs] == [1, 2], "one stream: offsets are shared by both nodes"
    assert pubs[1].info is not None and pubs[1].info.user == "bob"

    # An API publish through either node reaches both.
    await b.api_result("publish", {"channel": ch, "data": "via B"})
    assert (await py.wait("publication", ch)).ctx.pub.data == "via B"
    assert (await js.wait("publication", channel=ch))["data"] == "via B"

    # History and presence are shared.
    history = await a.api_result("history", {"channel": ch, "limit": -1})
    assert [p["data"] for p in history["publications"]] == [{"from": "python on A"}, {"from": "js on B"}, "via B"]
    presence = await a.api_result("presence", {"channel": ch})
    assert sorted(info["user"] for info in presence["presence"].values()) == ["alice", "bob"]
    assert (await b.api_result("presence_stats", {"channel": ch})) == {"num_clients": 2, "num_users": 2}


async def test_info_lists_both_nodes_and_api_acts_across_nodes(two_nodes: tuple[ServerProcess, ServerProcess],
                                                                js_factory: JsFactory) -> None:
    a, b = two_nodes

    async def both_listed() -> list[dict[str, Any]] | None:
        nodes = (await a.api_result("info"))["nodes"]
        return nodes if len(nodes) == 2 else None

    nodes = await wait_until(both_listed, timeout=10)
    assert len({n["uid"] for n in nodes}) == 2
    js = await js_factory(b)
    await js.call("connect", token=b.token("carol"), wait=True)
    ch = unique_channel("plain")
    # subscribe / channels / unsubscribe / disconnect issued on node A act on the client connected to node B.
    await a.api_result("subscribe", {"user": "carol", "channel": ch})
    assert (await js.wait("server_subscribed"))["channel"] == ch
    channels = (await a.api_result("channels", {}))["channels"]
    assert channels.get(ch) == {"num_clients": 1}
    await a.api_result("unsubscribe", {"user": "carol", "channel": ch})
    assert (await js.wait("server_unsubscribed"))["channel"] == ch
    await a.api_result("disconnect", {"user": "carol"})
    event = await js.wait("disconnected")
    assert event["code"] == 3503


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
