"""Map subscriptions (Centrifugo 6.8's keyed state channels) through the real centrifuge-js SDK: paginated
state load, live updates, map publish/remove from the server API and from clients, recovery after a
reconnect, key TTL expiry delivered as removals, and the errors of bad map requests."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from harness import REPO, JsFactory, ServerFactory, ServerProcess, unique_channel, wait_until
from harness import js_connected as _connected
from harness import js_value as _data
from jsclient import JsCallError, JsClient
from nats_servers import NatsServer
from postgres_server import LOCAL_PG

MAP_NAMESPACES: dict[str, Any] = {
    "channel": {
        "namespaces": [
            {"name": "board", "subscription_type": "map", "allow_subscribe_for_client": True,
             "map": {"mode": "persistent", "allow_publish_for_subscriber": True,
                     "allow_remove_for_subscriber": True, "min_page_size": 1}},
            {"name": "cursors", "subscription_type": "map", "allow_subscribe_for_client": True,
             "map": {"mode": "ephemeral", "key_ttl": "2s", "client_key": "client_id",
                     "allow_publish_for_client": True, "allow_remove_for_client": True, "min_page_size": 1}},
            {"name": "lobby", "subscription_type": "map", "allow_subscribe_for_client": True,
             "map": {"mode": "persistent", "client_key": "client_id", "allow_publish_for_subscriber": True,
                     "remove_client_on_unsubscribe": True}},
            {"name": "polls", "subscription_type": "map", "allow_subscribe_for_client": True,
             "map": {"mode": "durable", "key_ttl": "60s"}},
            # Loaded as Centrifugo loads them, then every operation on them fails (a meta TTL its keys outlive).
            {"name": "stale", "subscription_type": "map", "allow_subscribe_for_client": True,
             "map": {"mode": "recoverable", "key_ttl": "2h", "meta_ttl": "1h", "allow_publish_for_client": True}},
            {"name": "frozen", "subscription_type": "map", "allow_subscribe_for_client": True,
             "map": {"mode": "persistent", "meta_ttl": "1h", "allow_publish_for_client": True}},
        ],
    },
}


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats-maps"))
    server.start()
    yield server
    server.stop()


def _engine(request: pytest.FixtureRequest, pg_prefix: str) -> dict[str, Any]:
    """The engine and map broker of a backend combination (parameter ``engine[+map broker]``)."""
    engine, _, maps = request.param.partition("+")
    prefix = request.getfixturevalue("redis_prefix")
    config: dict[str, Any] = {}
    if engine == "redis_cluster":
        cluster = request.getfixturevalue("redis_cluster")
        config["engine"] = {"type": "redis", "redis": {"address": [cluster.url], "prefix": prefix}}
    elif engine == "nats":
        nats = request.getfixturevalue("nats_server")
        config["broker"] = {"enabled": True, "type": "nats", "nats": {"url": nats.url, "prefix": prefix}}
    if maps == "postgres":
        config["map_broker"] = {"type": "postgres", "postgres": {"dsn": LOCAL_PG, "table_prefix": pg_prefix}}
    elif maps == "redis":
        redis = request.getfixturevalue("redis_standalone")
        config["map_broker"] = {"type": "redis", "redis": {"address": redis.url, "prefix": prefix}}
    return config


@pytest.fixture(params=["memory", "redis_cluster", "memory+postgres"])
async def server(request: pytest.FixtureRequest, pg_prefix: str, server_factory: ServerFactory) -> ServerProcess:
    return await server_factory({**MAP_NAMESPACES, **_engine(request, pg_prefix)})


@pytest.fixture(params=["redis_cluster", "nats+postgres", "nats+redis"])
async def two_nodes(request: pytest.FixtureRequest, pg_prefix: str,
                    server_factory: ServerFactory) -> tuple[ServerProcess, ...]:
    config = {**MAP_NAMESPACES, **_engine(request, pg_prefix)}
    return await server_factory(config, name="node-a"), await server_factory(config, name="node-b")


@pytest.fixture(params=["json", "protobuf"])
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def subscribed_to_a_new_map(writer: ServerProcess, reader: ServerProcess,
                                  js_factory: JsFactory) -> tuple[str, JsClient]:
    """A board channel with key "a" = {"v": 1} published on ``writer``, and a client of ``reader`` that has
    loaded it (for the fault tests of each map broker)."""
    ch = unique_channel("board:")
    await writer.api_result("map_publish", {"channel": ch, "key": "a", "data": {"v": 1}})
    js = await _connected(reader, js_factory)
    await js.call("map_subscribe", channel=ch, wait=True)
    assert _entries(await js.wait("map_sync", channel=ch)) == {"a": {"v": 1}}
    return ch, js


async def health_is(status: int, *servers: ServerProcess) -> bool:
    async with aiohttp.ClientSession() as session:
        for server in servers:
            async with session.get(f"{server.http_url}/health") as resp:
                if resp.status != status:
                    return False
    return True


def _entries(event: dict[str, Any]) -> dict[str, Any]:
    return {e["key"]: _data(e["data"]) for e in event["entries"]}


async def test_state_loads_in_pages_then_updates_arrive_live(server: ServerProcess, js_factory: JsFactory,
                                                            protocol: str) -> None:
    ch = unique_channel("board:")
    for i in range(25):
        await server.api_result("map_publish", {"channel": ch, "key": f"k{i:02d}", "data": {"n": i}})
    await server.api_result("map_remove", {"channel": ch, "key": "k03"})
    js = await _connected(server, js_factory, protocol=protocol)
    # Pages of 10: the SDK asks three times for state, then catches up from the stream and goes live.
    await js.call("map_subscribe", channel=ch, pageSize=10, wait=True)
    sync = await js.wait("map_sync", channel=ch)
    state = _entries(sync)
    assert len(state) == 24 and "k03" not in state and state["k24"] == {"n": 24}
    if protocol == "json":
        pages = [e for e in js.events("frame_out") if '"phase":2' in str(e.get("data"))]
        assert len(pages) == 3, pages
    await server.api_result("map_publish", {"channel": ch, "key": "k05", "data": {"n": 500}})
    update = await js.wait("map_update", channel=ch, key="k05")
    assert _data(update["data"]) == {"n": 500} and not update.get("removed")
    await server.api_result("map_remove", {"channel": ch, "key": "k06"})
    removal = await js.wait("map_update", channel=ch, key="k06")
    assert removal["removed"] is True


async def test_changes_during_state_paging_are_caught_up(server: ServerProcess, js_factory: JsFactory) -> None:
    ch = unique_channel("board:")
    for i in range(300):
        await server.api_result("map_publish", {"channel": ch, "key": f"k{i:03d}", "data": {"v": 0}})
    js = await _connected(server, js_factory)
    await js.call("map_subscribe", channel=ch, pageSize=5)
    # Keep changing keys on both sides of the page cursor while the client pages through the state.
    for i in range(0, 300, 7):
        await server.api_result("map_publish", {"channel": ch, "key": f"k{i:03d}", "data": {"v": 1}})
    await server.api_result("map_remove", {"channel": ch, "key": "k299"})
    synced = _entries(await js.wait("map_sync", channel=ch, timeout=30))

    def mirror() -> dict[str, Any] | None:
        """The application's copy once it no longer has k299, else None."""
        state = dict(synced)
        for e in js.events("map_update"):  # what went live after the sync, applied as an application would
            if e["channel"] != ch:
                continue
            if e.get("removed"):
                state.pop(e["key"], None)
            else:
                state[e["key"]] = e["data"]
        return None if "k299" in state else state

    state = await wait_until(mirror, what="k299 removed")
    assert len(state) == 299
    assert all(state[f"k{i:03d}"] == {"v": 1} for i in range(0, 299, 7))
    assert state["k001"] == {"v": 0}


async def test_clients_publish_and_remove_by_map_permissions(server: ServerProcess, js_factory: JsFactory,
                                                             protocol: str) -> None:
    ch = unique_channel("board:")
    alice = await _connected(server, js_factory, "alice", protocol)
    bob = await _connected(server, js_factory, "bob", protocol)
    # Publishing into "board" is for its subscribers only.
    with pytest.raises(JsCallError) as denied:
        await bob.call("map_publish", channel=ch, key="x", data={"by": "bob"}, via="client")
    assert denied.value.code == 103
    await alice.call("map_subscribe", channel=ch, wait=True)
    await bob.call("map_subscribe", channel=ch, wait=True)
    await alice.call("map_publish", channel=ch, key="card1", data=json.dumps({"title": "hello"}) if protocol ==
                     "protobuf" else {"title": "hello"})
    update = await bob.wait("map_update", channel=ch, key="card1")
    assert _data(update["data"]) == {"title": "hello"} and update["info"]["user"] == "alice"
    await bob.call("map_remove", channel=ch, key="card1")
    assert (await alice.wait("map_update", channel=ch, key="card1", removed=True))["removed"] is True


async def test_client_key_and_key_ttl_expiry_arrive_as_removals(server: ServerProcess, js_factory: JsFactory) -> None:
    ch = unique_channel("cursors:")
    watcher = await _connected(server, js_factory, "watcher")
    mover = await _connected(server, js_factory, "mover")
    await watcher.call("map_subscribe", channel=ch, wait=True)
    # client_key "client_id": whatever key the client names, the entry is its connection's.
    await mover.call("map_publish", channel=ch, key="anything", data={"x": 1, "y": 2}, via="client")
    client_id = mover.events("connected")[0]["client"]
    update = await watcher.wait("map_update", channel=ch, key=client_id)
    assert update["data"] == {"x": 1, "y": 2}
    # key_ttl 2s: the entry expires and the subscriber sees it removed.
    expired = await watcher.wait("map_update", channel=ch, key=client_id, removed=True, timeout=10)
    assert expired["removed"] is True
    state = await server.api_result("map_publish", {"channel": ch, "key": "k", "data": {}})
    assert state["offset"] > 0


async def test_a_leaving_client_takes_its_entry_along(server: ServerProcess, js_factory: JsFactory) -> None:
    ch = unique_channel("lobby:")
    watcher = await _connected(server, js_factory, "watcher")
    guest = await _connected(server, js_factory, "guest")
    await watcher.call("map_subscribe", channel=ch, wait=True)
    await guest.call("map_subscribe", channel=ch, wait=True)
    await guest.call("map_publish", channel=ch, key="ignored", data={"status": "here"})
    guest_id = guest.events("connected")[0]["client"]
    assert (await watcher.wait("map_update", channel=ch, key=guest_id))["data"] == {"status": "here"}
    # remove_client_on_unsubscribe: unsubscribing removes the guest's entry (persistent mode: no TTL would).
    await guest.call("map_unsubscribe", channel=ch)
    assert (await watcher.wait("map_update", channel=ch, key=guest_id, removed=True))["removed"] is True


async def test_durable_map_recovers_missed_changes_after_resubscribe(server: ServerProcess,
                                                                     js_factory: JsFactory, protocol: str) -> None:
    ch = unique_channel("polls:")
    await server.api_result("map_publish", {"channel": ch, "key": "yes", "data": {"votes": 1}})
    js = await _connected(server, js_factory, protocol=protocol)
    await js.call("map_subscribe", channel=ch, wait=True)
    assert _entries(await js.wait("map_sync", channel=ch)) == {"yes": {"votes": 1}}
    await js.call("map_unsubscribe", channel=ch)
    await js.wait("map_unsubscribed", channel=ch)
    await server.api_result("map_publish", {"channel": ch, "key": "no", "data": {"votes": 5}})
    await server.api_result("map_publish", {"channel": ch, "key": "yes", "data": {"votes": 2}})
    await js.call("map_subscribe", channel=ch, wait=True)
    subscribed = [e for e in js.events("map_subscribed") if e["channel"] == ch][-1]
    assert subscribed["recovered"] is True and subscribed["recoverable"] is True
    # Recovery: the two missed changes arrive as updates, no second full sync.
    assert _data((await js.wait("map_update", channel=ch, key="no"))["data"]) == {"votes": 5}
    assert _data((await js.wait("map_update", channel=ch, key="yes"))["data"]) == {"votes": 2}
    assert len([e for e in js.events("map_sync") if e["channel"] == ch]) == 1


async def test_ephemeral_map_reloads_the_state_after_resubscribe(server: ServerProcess,
                                                                 js_factory: JsFactory) -> None:
    ch = unique_channel("cursors:")
    await server.api_result("map_publish", {"channel": ch, "key": "a", "data": {"x": 1}})
    js = await _connected(server, js_factory)
    await js.call("map_subscribe", channel=ch, wait=True)
    assert (await js.wait("map_sync", channel=ch))["entries"][0]["key"] == "a"
    assert next(e for e in js.events("map_subscribed") if e["channel"] == ch)["recoverable"] is not True
    await js.call("map_unsubscribe", channel=ch)
    await js.wait("map_unsubscribed", channel=ch)
    await server.api_result("map_publish", {"channel": ch, "key": "b", "data": {"x": 2}})
    await js.call("map_subscribe", channel=ch, wait=True)
    # Not recoverable: the client loads the whole state again instead of catching up.
    assert _entries(await js.wait("map_sync", channel=ch)) == {"a": {"x": 1}, "b": {"x": 2}}
    assert [e for e in js.events("map_subscribed") if e["channel"] == ch][-1]["recovered"] is not True


async def test_server_api_reads_counts_and_clears_a_map(server: ServerProcess) -> None:
    ch = unique_channel("board:")
    for key in ("a", "b", "c"):
        await server.api_result("map_publish", {"channel": ch, "key": key, "data": {"k": key}})
    await server.api_result("map_remove", {"channel": ch, "key": "b"})
    assert (await server.api_result("map_stats", {"channel": ch}))["num_keys"] == 2
    first = await server.api_result("map_read_state", {"channel": ch, "limit": 1})
    assert [(p["key"], p["data"]) for p in first["entries"]] == [("a", {"k": "a"})]
    assert first["offset"] == 4 and first["cursor"]
    rest = await server.api_result("map_read_state", {"channel": ch, "limit": 1, "cursor": first["cursor"]})
    assert [p["key"] for p in rest["entries"]] == ["c"] and not rest.get("cursor")
    stream = await server.api_result("map_read_stream", {"channel": ch, "since_offset": 2,
                                                         "since_epoch": first["epoch"], "limit": 10})
    assert [(p["key"], p.get("removed", False)) for p in stream["entries"]] == [("c", False), ("b", True)]
    position = await server.api_result("map_read_stream", {"channel": ch, "limit": 0})
    assert position["entries"] == [] and position["offset"] == 4
    await server.api_result("map_clear", {"channel": ch})
    assert (await server.api_result("map_stats", {"channel": ch}))["num_keys"] == 0
    assert (await server.api_result("map_read_state", {"channel": ch}))["entries"] == []


async def test_bad_map_requests_get_centrifugo_errors(server: ServerProcess, js_factory: JsFactory) -> None:
    # Map methods on a stream namespace, a missing key, and a missing channel map.
    for payload in ({"channel": unique_channel("chat:"), "key": "k", "data": {}},
                    {"channel": unique_channel("board:"), "data": {}},
                    {"channel": unique_channel("board:"), "key": "k" * 2000, "data": {}}):
        reply = await server.api("map_publish", payload)
        assert reply["error"]["code"] == 107, payload
    reply = await server.api("map_remove", {"channel": unique_channel("board:")})
    assert reply["error"]["code"] == 107
    # A stream subscription to a map channel is refused (a type its namespace does not have: 103, as
    # Centrifugo), and the connection stays usable.
    js = await _connected(server, js_factory)
    ch = unique_channel("board:")
    await js.call("subscribe", channel=ch)
    assert (await js.wait("unsubscribed", channel=ch))["code"] == 103
    other = unique_channel("board:")
    await js.call("map_subscribe", channel=other, wait=True)
    await js.wait("map_sync", channel=other)


async def test_map_options_centrifugo_refuses_per_operation_answer_internal_errors(
        server: ServerProcess, js_factory: JsFactory) -> None:
    """As centrifuge's map brokers (ResolveAndValidateMapChannelOptions on every operation): internal error 100
    for the server API's map methods, a client's map publish and its map subscribe; other maps work on."""
    js = await _connected(server, js_factory)
    for ns in ("stale:", "frozen:"):
        ch = unique_channel(ns)
        for method, payload in (("map_publish", {"key": "k", "data": {}}), ("map_remove", {"key": "k"}),
                                ("map_read_state", {}), ("map_read_stream", {}), ("map_stats", {}),
                                ("map_clear", {})):
            reply = await server.api(method, {"channel": ch, **payload})
            assert reply.get("error", {}).get("code") == 100, (method, ch, reply)
        with pytest.raises(JsCallError) as failed:
            await js.call("map_publish", channel=ch, key="x", data={"n": 1}, via="client")
        assert failed.value.code == 100
        await js.call("map_subscribe", channel=ch)
        error = await js.wait("map_error", channel=ch)
        assert error["error"]["code"] == 100, error
        await js.call("map_unsubscribe", channel=ch)
    ok = unique_channel("polls:")
    assert (await server.api_result("map_publish", {"channel": ok, "key": "k", "data": {"n": 1}}))["offset"] == 1
    await js.call("map_subscribe", channel=ok, wait=True)
    assert _entries(await js.wait("map_sync", channel=ok)) == {"k": {"n": 1}}


async def test_nodes_share_map_state_and_expire_a_key_once(two_nodes: tuple[ServerProcess, ...],
                                                           js_factory: JsFactory) -> None:
    a, b = two_nodes
    ch = unique_channel("cursors:")
    for i in range(7):
        await a.api_result("map_publish", {"channel": ch, "key": f"k{i}", "data": {"i": i}})
    js = await _connected(b, js_factory)
    await js.call("map_subscribe", channel=ch, pageSize=3, wait=True)
    assert _entries(await js.wait("map_sync", channel=ch)) == {f"k{i}": {"i": i} for i in range(7)}
    await a.api_result("map_publish", {"channel": ch, "key": "k0", "data": {"i": 100}})
    assert (await js.wait("map_update", channel=ch, key="k0"))["data"] == {"i": 100}
    # key_ttl 2s: both nodes run the cleanup; each expired key is announced once.
    await wait_until(lambda: len([e for e in js.events("map_update") if e.get("removed")]) >= 7, timeout=15,
                     what="all keys expired")
    removed = sorted(e["key"] for e in js.events("map_update") if e.get("removed"))
    assert removed == [f"k{i}" for i in range(7)]


async def test_map_benchmark_runs_and_loses_nothing() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "loadtest.map_bench", "--subscribers", "30", "--publishers", "2", "--duration", "0.5",
        "--rounds", "1", cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out = (await asyncio.wait_for(proc.communicate(), 90))[0].decode()
    assert proc.returncode == 0, out  # exit 1 when a delivery was lost
    assert out.count("deliveries_per_server_cpu_s") == 2 and "map / stream deliveries per server CPU-second" in out
