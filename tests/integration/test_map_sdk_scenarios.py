"""The scenarios of centrifuge-js's own map suites (src/map.test.ts, src/map.protobuf.test.ts and the map part
of src/delta.test.ts in the SDK's repository), ported to the driver and run against Fugato on the memory engine
and on Redis Cluster, with namespaces shaped like the SDK suite's server config (streamless, positioned,
smallstream, mapdelta, clientkey). The presence and tags-filter scenarios live with those features
(test_maps.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from harness import JsFactory, ServerProcess, engine_server, js_connected, js_value, unique_channel, wait_until
from jsclient import JsClient

_WRITES = {"allow_publish_for_client": True, "allow_remove_for_client": True}
SDK_SUITE_NAMESPACES: dict[str, Any] = {
    "channel": {"namespaces": [
        {"name": "streamless", "subscription_type": "map", "allow_subscribe_for_client": True,
         "map": {"mode": "ephemeral", "key_ttl": "60s", **_WRITES}},
        {"name": "positioned", "subscription_type": "map", "allow_subscribe_for_client": True,
         "map": {"mode": "persistent", **_WRITES}},
        {"name": "smallstream", "subscription_type": "map", "allow_subscribe_for_client": True,
         "map": {"mode": "persistent", "stream_size": 2, "stream_ttl": "60s", **_WRITES}},
        {"name": "mapdelta", "subscription_type": "map", "allow_subscribe_for_client": True,
         "allowed_delta_types": ["fossil"], "delta_publish": True, "map": {"mode": "persistent", **_WRITES}},
        {"name": "clientkey", "subscription_type": "map", "allow_subscribe_for_client": True,
         "map": {"mode": "ephemeral", "key_ttl": "60s", "client_key": "client_id",
                 "allow_publish_for_subscriber": True}},
    ]},
}


@pytest.fixture(scope="module", params=["memory", "redis_cluster"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from engine_server(request, tmp_path_factory, SDK_SUITE_NAMESPACES)


async def _publish(server: ServerProcess, ch: str, key: str, data: Any) -> None:
    await server.api_result("map_publish", {"channel": ch, "key": key, "data": data})


def _subscribed(js: JsClient, ch: str) -> list[dict[str, Any]]:
    return [e for e in js.events("map_subscribed") if e["channel"] == ch]


def _syncs(js: JsClient, ch: str) -> list[dict[str, Any]]:
    return [e for e in js.events("map_sync") if e["channel"] == ch]


def _keys(event: dict[str, Any]) -> list[str]:
    return sorted(e["key"] for e in event["entries"])


async def _reconnect(server: ServerProcess, js: JsClient, during: Any = None) -> None:
    """The SDK's c.disconnect(), something done meanwhile, then c.connect(): its subscriptions come back."""
    await js.call("disconnect")
    if during is not None:
        await during
    await js.call("connect", token=server.token("alice"), wait=True)


async def test_empty_map_then_live_update_and_removal(server: ServerProcess, js_factory: JsFactory,
                                                     sdk_protocol: str) -> None:
    ch = unique_channel("streamless:")
    js = await js_connected(server, js_factory, protocol=sdk_protocol)
    await js.call("map_subscribe", channel=ch, wait=True)
    assert (await js.wait("map_sync", channel=ch))["entries"] == []
    assert not _subscribed(js, ch)[0].get("state")
    await _publish(server, ch, "live_key", {"hello": "world"})
    update = await js.wait("map_update", channel=ch, key="live_key")
    assert js_value(update["data"]) == {"hello": "world"} and not update.get("removed")
    await server.api_result("map_remove", {"channel": ch, "key": "live_key"})
    assert (await js.wait("map_update", channel=ch, key="live_key"))["removed"] is True


async def test_seeded_state_entries_carry_neither_removed_nor_score(server: ServerProcess, js_factory: JsFactory,
                                                                   sdk_protocol: str) -> None:
    ch = unique_channel("streamless:")
    for i in (1, 2, 3):
        await _publish(server, ch, f"k{i}", {"v": i})
    js = await js_connected(server, js_factory, protocol=sdk_protocol)
    await js.call("map_subscribe", channel=ch, wait=True)
    sync = await js.wait("map_sync", channel=ch)
    assert _keys(sync) == ["k1", "k2", "k3"] and len(_subscribed(js, ch)[0]["state"]) == 3
    assert all("removed" not in e and "score" not in e for e in sync["entries"])
    assert {e["key"]: js_value(e["data"]) for e in sync["entries"]}["k2"] == {"v": 2}


async def test_client_round_trip_and_two_clients_share_the_state(server: ServerProcess,
                                                                 js_factory: JsFactory) -> None:
    ch = unique_channel("streamless:")
    a = await js_connected(server, js_factory, "alice")
    b = await js_connected(server, js_factory, "bob")
    await a.call("map_subscribe", channel=ch, wait=True)
    await a.call("map_publish", channel=ch, key="shared_1", data={"from": "A"})
    await a.call("map_publish", channel=ch, key="shared_2", data={"from": "A"})
    await a.wait("map_update", channel=ch, key="shared_2")
    await b.call("map_subscribe", channel=ch, wait=True)
    assert _keys(await b.wait("map_sync", channel=ch)) == ["shared_1", "shared_2"]
    await a.call("map_publish", channel=ch, key="shared_3", data={"from": "A_more"})
    assert (await b.wait("map_update", channel=ch, key="shared_3"))["data"] == {"from": "A_more"}
    await a.call("map_remove", channel=ch, key="shared_1")
    assert (await b.wait("map_update", channel=ch, key="shared_1"))["removed"] is True


async def test_positioned_map_recovers_after_a_disconnect_without_a_new_sync(server: ServerProcess,
                                                                             js_factory: JsFactory) -> None:
    ch = unique_channel("positioned:")
    await _publish(server, ch, "p1", {"x": 1})
    await _publish(server, ch, "p2", {"x": 2})
    js = await js_connected(server, js_factory)
    await js.call("map_subscribe", channel=ch, wait=True)
    first = _subscribed(js, ch)[0]
    assert first["recoverable"] is True and len(first["state"]) == 2
    await _publish(server, ch, "before_disconnect", {"v": 1})
    await js.wait("map_update", channel=ch, key="before_disconnect")
    await _reconnect(server, js, _publish(server, ch, "during_disconnect", {"v": 2}))
    await wait_until(lambda: len(_subscribed(js, ch)) == 2, what="resubscribed")
    assert _subscribed(js, ch)[1]["recovered"] is True
    assert (await js.wait("map_update", channel=ch, key="during_disconnect"))["data"] == {"v": 2}
    await _publish(server, ch, "after", {"v": 3})
    await js.wait("map_update", channel=ch, key="after")
    assert len(_syncs(js, ch)) == 1  # recovery delivers updates, never a second sync


async def test_streamless_map_resyncs_in_full_after_a_disconnect(server: ServerProcess,
                                                                js_factory: JsFactory) -> None:
    ch = unique_channel("streamless:")
    await _publish(server, ch, "persist", {"v": 1})
    js = await js_connected(server, js_factory)
    await js.call("map_subscribe", channel=ch, wait=True)
    assert _subscribed(js, ch)[0]["recoverable"] is False
    await _reconnect(server, js, _publish(server, ch, "meanwhile", {"v": 2}))
    await wait_until(lambda: len(_syncs(js, ch)) == 2, what="a second sync")
    assert _keys(_syncs(js, ch)[1]) == ["meanwhile", "persist"]


async def test_unsubscribe_resubscribe_recovers_the_missed_changes(server: ServerProcess,
                                                                  js_factory: JsFactory) -> None:
    ch = unique_channel("positioned:")
    js = await js_connected(server, js_factory)
    await js.call("map_subscribe", channel=ch, wait=True)
    await _publish(server, ch, "before", {"v": 1})
    await js.wait("map_update", channel=ch, key="before")
    await js.call("map_unsubscribe", channel=ch)
    await js.wait("map_unsubscribed", channel=ch)
    await _publish(server, ch, "missed_1", {"v": 2})
    await _publish(server, ch, "missed_2", {"v": 3})
    await js.call("map_subscribe", channel=ch, wait=True)
    assert _subscribed(js, ch)[-1]["recovered"] is True
    assert (await js.wait("map_update", channel=ch, key="missed_1"))["data"] == {"v": 2}
    assert (await js.wait("map_update", channel=ch, key="missed_2"))["data"] == {"v": 3}


@pytest.mark.parametrize("strategy", ["from_scratch", "fatal"])
async def test_a_position_the_stream_no_longer_has(server: ServerProcess, js_factory: JsFactory,
                                                   strategy: str) -> None:
    ch = unique_channel("smallstream:")
    js = await js_connected(server, js_factory)
    await js.call("map_subscribe", channel=ch, unrecoverableStrategy=strategy, wait=True)
    await _publish(server, ch, "initial", {"v": 0})
    await js.wait("map_update", channel=ch, key="initial")
    await js.call("map_unsubscribe", channel=ch)
    await js.wait("map_unsubscribed", channel=ch)
    for i in range(1, 6):  # past the stream's 2 entries
        await _publish(server, ch, f"overflow_{i}", {"v": i})
    await js.call("map_subscribe", channel=ch)
    if strategy == "fatal":
        # Error 112 reaches the application: the subscription ends with it.
        assert (await js.wait("map_unsubscribed", channel=ch, timeout=15))["code"] == 112
        return
    # from_scratch (the SDK's default): the state again, in full.
    await wait_until(lambda: len(_syncs(js, ch)) == 2, timeout=15, what="a sync from scratch")
    assert _subscribed(js, ch)[-1]["recovered"] is False
    assert _keys(_syncs(js, ch)[1]) == ["initial"] + [f"overflow_{i}" for i in range(1, 6)]


async def test_client_key_overrides_the_key_the_client_names(server: ServerProcess, js_factory: JsFactory) -> None:
    ch = unique_channel("clientkey:")
    js = await js_connected(server, js_factory)
    await js.call("map_subscribe", channel=ch, wait=True)
    await js.call("map_publish", channel=ch, key="arbitrary_key", data={"test": True})
    client_id = js.events("connected")[0]["client"]
    assert (await js.wait("map_update", channel=ch))["key"] == client_id


async def test_delta_same_key_one_full_then_patches(server: ServerProcess, js_factory: JsFactory,
                                                   sdk_protocol: str) -> None:
    ch = unique_channel("mapdelta:")
    js = await js_connected(server, js_factory, protocol=sdk_protocol)
    await js.call("map_subscribe", channel=ch, delta="fossil", wait=True)
    padding = "x" * 500
    for score in (100, 200, 300):
        await _publish(server, ch, "player1", {"score": score, "name": "Alice", "padding": padding})
    await wait_until(lambda: len(js.events("map_update")) >= 3, what="three updates")
    assert [js_value(e["data"])["score"] for e in js.events("map_update")] == [100, 200, 300]
    stats = await js.call("map_delta_stats", channel=ch)
    assert (stats["numPublications"], stats["numFullPayloads"], stats["numDeltaPayloads"]) == (3, 1, 2)
    assert stats["bytesReceived"] < stats["bytesDecoded"] and stats["compressionRatio"] > 0


async def test_delta_keeps_working_across_a_disconnect(server: ServerProcess, js_factory: JsFactory) -> None:
    ch = unique_channel("mapdelta:")
    js = await js_connected(server, js_factory)
    await js.call("map_subscribe", channel=ch, delta="fossil", wait=True)
    await _publish(server, ch, "k1", {"counter": 1, "blob": "a" * 600})

    async def meanwhile() -> None:
        await _publish(server, ch, "k1", {"counter": 2, "blob": "a" * 600})
        await _publish(server, ch, "k1", {"counter": 3, "blob": "a" * 600})

    await js.wait("map_update", channel=ch, key="k1")
    await _reconnect(server, js, meanwhile())
    await wait_until(lambda: len(_subscribed(js, ch)) == 2, what="resubscribed")
    assert _subscribed(js, ch)[1]["recovered"] is True
    await _publish(server, ch, "k1", {"counter": 4, "blob": "a" * 599 + "d"})
    await wait_until(lambda: len(js.events("map_update")) >= 4, what="four updates")
    assert [e["data"]["counter"] for e in js.events("map_update")] == [1, 2, 3, 4]
    assert js.events("map_update")[-1]["data"]["blob"] == "a" * 599 + "d"
    # The live change after the recovery is a patch against the recovered value of k1.
    assert (await js.call("map_delta_stats", channel=ch))["numDeltaPayloads"] == 1
