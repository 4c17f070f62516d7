"""Map keys through the real centrifuge-js SDK, on the memory engine, on Redis Cluster and with the PostgreSQL map
broker: fossil delta per key
(the base is the key's previous value; state pages and recovered values come in full), map_publish's key_mode,
version and idempotency_key with Centrifugo's suppressed results, and bad writes getting Centrifugo's error codes
while the other subscribers keep receiving."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from harness import JsFactory, ServerProcess, engine_server, js_connected, js_value, unique_channel, wait_until
from jsclient import JsCallError, JsClient
from postgres_server import LOCAL_PG, drop_pg_schema

FILLER = "f" * 600  # large enough that a patch is smaller than the value

NAMESPACES: dict[str, Any] = {
    "client": {"allow_anonymous_connect_without_token": True},
    "channel": {
        "namespaces": [
            # delta_publish: every write offers subscribers that negotiated fossil a patch.
            {"name": "scores", "subscription_type": "map", "allow_subscribe_for_client": True,
             "allowed_delta_types": ["fossil"], "delta_publish": True,
             "map": {"mode": "persistent", "allow_publish_for_subscriber": True,
                     "allow_remove_for_subscriber": True}},
            # Delta allowed, but only a map_publish with "delta": true offers a patch.
            {"name": "board", "subscription_type": "map", "allow_subscribe_for_client": True,
             "allowed_delta_types": ["fossil"], "map": {"mode": "persistent"}},
            {"name": "lobby", "subscription_type": "map", "allow_subscribe_for_client": True,
             "map": {"mode": "persistent", "allow_publish_for_client": True, "allow_remove_for_client": True}},
            {"name": "cursors", "subscription_type": "map", "allow_subscribe_for_client": True,
             "map": {"mode": "ephemeral", "key_ttl": "60s", "allow_publish_for_client": True}},
            {"name": "tagged", "subscription_type": "map", "allow_subscribe_for_client": True,
             "allow_tags_filter": True, "map": {"mode": "persistent"}},
            {"name": "seats", "subscription_type": "map", "allow_subscribe_for_client": True,
             "map": {"mode": "persistent", "client_key": "user_id", "allow_publish_for_client": True,
                     "allow_publish_for_anonymous": True}},
        ],
    },
}


@pytest.fixture(scope="module", params=["memory", "redis_cluster", "memory+postgres"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    if request.param != "memory+postgres":
        yield from engine_server(request, tmp_path_factory, NAMESPACES)
        return
    prefix = "fgt" + uuid.uuid4().hex[:10]
    config = {**NAMESPACES, "map_broker": {"type": "postgres", "postgres": {"dsn": LOCAL_PG, "table_prefix": prefix}}}
    try:
        yield from engine_server(SimpleNamespace(param="memory"), tmp_path_factory, config)
    finally:
        drop_pg_schema(LOCAL_PG, prefix)


def _updates(js: JsClient, ch: str) -> list[tuple[str, Any]]:
    return [(e["key"], None if e.get("removed") else js_value(e["data"]))
            for e in js.events("map_update") if e["channel"] == ch]


async def _publish(server: ServerProcess, ch: str, key: str, data: Any, **options: Any) -> dict[str, Any]:
    return await server.api_result("map_publish", {"channel": ch, "key": key, "data": data, **options})


# --- fossil delta per key ---------------------------------------------------------------------------------


async def test_delta_patches_each_key_against_its_own_previousjs_value(server: ServerProcess, js_factory: JsFactory,
                                                                     sdk_protocol: str) -> None:
    ch = unique_channel("scores:")
    await _publish(server, ch, "a", {"n": 0, "pad": FILLER})
    await _publish(server, ch, "b", {"n": 0, "pad": FILLER.upper()})
    js = await js_connected(server, js_factory, protocol=sdk_protocol)
    plain = await js_connected(server, js_factory, "bob", protocol=sdk_protocol)
    await js.call("map_subscribe", channel=ch, delta="fossil", pageSize=1, wait=True)
    await plain.call("map_subscribe", channel=ch, wait=True)
    # The state (in pages) arrives in full and seeds each key's base.
    assert {e["key"]: js_value(e["data"]) for e in (await js.wait("map_sync", channel=ch))["entries"]} == {
        "a": {"n": 0, "pad": FILLER}, "b": {"n": 0, "pad": FILLER.upper()}}
    # Interleaved keys: each patch applies to its own key's value, not to the channel's previous publication.
    await _publish(server, ch, "a", {"n": 1, "pad": FILLER})
    await _publish(server, ch, "b", {"n": 1, "pad": FILLER.upper()})
    await _publish(server, ch, "c", {"n": 0, "pad": FILLER})  # a new key: nothing to patch
    await _publish(server, ch, "a", {"n": 2, "pad": FILLER})
    await server.api_result("map_remove", {"channel": ch, "key": "b"})
    await _publish(server, ch, "b", {"n": 9, "pad": FILLER.upper()})  # removed before: a full value again
    expected = [("a", {"n": 1, "pad": FILLER}), ("b", {"n": 1, "pad": FILLER.upper()}), ("c", {"n": 0, "pad": FILLER}),
                ("a", {"n": 2, "pad": FILLER}), ("b", None), ("b", {"n": 9, "pad": FILLER.upper()})]
    await wait_until(lambda: len(_updates(js, ch)) >= 6 and len(_updates(plain, ch)) >= 6, what="six updates")
    assert _updates(js, ch) == expected and _updates(plain, ch) == expected
    stats = await js.call("map_delta_stats", channel=ch)
    # Two state entries and c, b (after its removal) in full; a twice and b once as patches.
    assert (stats["numFullPayloads"], stats["numDeltaPayloads"]) == (4, 3), stats
    assert stats["bytesReceived"] < stats["bytesDecoded"]
    assert (await plain.call("map_delta_stats", channel=ch))["numDeltaPayloads"] == 0
    if sdk_protocol == "json":
        pushes = [f["data"] for f in js.events("frame_in") if '"push"' in str(f["data"])]
        assert sum('"delta":true' in str(p) for p in pushes) == 3, pushes
        assert not any('"delta":true' in str(f["data"]) for f in plain.events("frame_in"))


async def test_delta_only_when_asked_by_the_publish(server: ServerProcess, js_factory: JsFactory) -> None:
    ch = unique_channel("board:")
    js = await js_connected(server, js_factory)
    await js.call("map_subscribe", channel=ch, delta="fossil", wait=True)
    await _publish(server, ch, "k", {"v": 1, "pad": FILLER})
    await _publish(server, ch, "k", {"v": 2, "pad": FILLER})  # no delta asked: a full value
    await _publish(server, ch, "k", {"v": 3, "pad": FILLER}, delta=True)
    await wait_until(lambda: len(_updates(js, ch)) >= 3, what="three updates")
    assert [v["v"] for _, v in _updates(js, ch)] == [1, 2, 3]
    stats = await js.call("map_delta_stats", channel=ch)
    assert (stats["numFullPayloads"], stats["numDeltaPayloads"]) == (2, 1), stats


async def test_delta_after_recovery_builds_on_the_recovered_values(server: ServerProcess, js_factory: JsFactory,
                                                                   sdk_protocol: str) -> None:
    ch = unique_channel("scores:")
    js = await js_connected(server, js_factory, protocol=sdk_protocol)
    await js.call("map_subscribe", channel=ch, delta="fossil", wait=True)
    await _publish(server, ch, "k", {"v": 1, "pad": FILLER})
    await js.wait("map_update", channel=ch, key="k")
    await js.call("map_unsubscribe", channel=ch)
    await js.wait("map_unsubscribed", channel=ch)
    # Missed while away: two changes of k (recovered in full, in order) and a new key.
    await _publish(server, ch, "k", {"v": 2, "pad": FILLER})
    await _publish(server, ch, "j", {"v": 1, "pad": FILLER})
    await _publish(server, ch, "k", {"v": 3, "pad": FILLER})
    await js.call("map_subscribe", channel=ch, delta="fossil", wait=True)
    assert [e for e in js.events("map_subscribed") if e["channel"] == ch][-1]["recovered"] is True
    await wait_until(lambda: len(_updates(js, ch)) >= 4, what="the recovered updates")
    before = await js.call("map_delta_stats", channel=ch)
    await _publish(server, ch, "k", {"v": 4, "pad": FILLER})
    await _publish(server, ch, "j", {"v": 2, "pad": FILLER})
    await wait_until(lambda: len(_updates(js, ch)) >= 6, what="live updates")
    assert _updates(js, ch) == [("k", {"v": 1, "pad": FILLER}), ("k", {"v": 2, "pad": FILLER}),
                                ("j", {"v": 1, "pad": FILLER}), ("k", {"v": 3, "pad": FILLER}),
                                ("k", {"v": 4, "pad": FILLER}), ("j", {"v": 2, "pad": FILLER})]
    after = await js.call("map_delta_stats", channel=ch)
    assert after["numDeltaPayloads"] - before["numDeltaPayloads"] == 2, (before, after)


# --- map_publish options ----------------------------------------------------------------------------------


async def test_key_modes_insert_only_and_update_only(server: ServerProcess, js_factory: JsFactory) -> None:
    ch = unique_channel("lobby:")
    js = await js_connected(server, js_factory)
    await js.call("map_subscribe", channel=ch, wait=True)
    first = await _publish(server, ch, "slot1", {"by": "alice"}, key_mode="if_new")
    assert not first.get("suppressed") and first["offset"] == 1 and first["epoch"]
    claimed = await _publish(server, ch, "slot1", {"by": "bob"}, key_mode="if_new")
    assert claimed == {"offset": 1, "epoch": first["epoch"], "suppressed": True, "suppress_reason": "key_exists"}
    missing = await _publish(server, ch, "slot2", {"beat": 1}, key_mode="if_exists")
    assert missing["suppressed"] is True and missing["suppress_reason"] == "key_not_found"
    assert not (await _publish(server, ch, "slot1", {"by": "alice", "ready": True}, key_mode="if_exists")).get(
        "suppressed")
    # Only the two writes that changed something reached the subscriber.
    await wait_until(lambda: len(_updates(js, ch)) >= 2, what="two updates")
    assert _updates(js, ch) == [("slot1", {"by": "alice"}), ("slot1", {"by": "alice", "ready": True})]
    state = await server.api_result("map_read_state", {"channel": ch})
    assert state["offset"] == 2
    reply = await server.api("map_publish", {"channel": ch, "key": "x", "data": {}, "key_mode": "upsert"})
    assert reply["error"]["code"] == 107


async def test_versions_drop_stale_updates_per_key(server: ServerProcess, js_factory: JsFactory) -> None:
    ch = unique_channel("lobby:")
    js = await js_connected(server, js_factory)
    await js.call("map_subscribe", channel=ch, wait=True)

    async def publish(v: int, version: int, **options: Any) -> str:
        result = await _publish(server, ch, "dev", {"v": v}, version=version, **options)
        return str(result.get("suppress_reason", "")) if result.get("suppressed") else "ok"

    assert await publish(1, 2) == "ok"
    assert await publish(2, 1) == "version"  # older than the stored 2
    assert await publish(3, 2) == "version"  # not newer
    assert await publish(4, 3) == "ok"
    assert await publish(5, 0) == "ok"  # unversioned: applied, and the stored version stays 3
    assert await publish(6, 3) == "version"
    assert await publish(7, 1, version_epoch="reboot") == "ok"  # another epoch starts over
    assert (await _publish(server, ch, "other", {"v": 0}, version=1))["offset"] > 0  # each key its own version
    await server.api_result("map_remove", {"channel": ch, "key": "dev"})
    assert await publish(8, 1) == "ok"  # a removed key forgets its version
    await wait_until(lambda: len(_updates(js, ch)) >= 7, what="seven updates")
    assert [(k, v and v["v"]) for k, v in _updates(js, ch)] == [
        ("dev", 1), ("dev", 4), ("dev", 5), ("dev", 7), ("other", 0), ("dev", None), ("dev", 8)]
    # Centrifugo refuses versions where no stream orders them (an internal error there too).
    reply = await server.api("map_publish", {"channel": unique_channel("cursors:"), "key": "k", "data": {},
                                             "version": 1})
    assert reply["error"]["code"] == 100
    reply = await server.api("map_publish", {"channel": ch, "key": "k", "data": {}, "version": -1})
    assert reply["error"]["code"] == 107


async def test_idempotency_key_makes_a_retry_harmless(server: ServerProcess, js_factory: JsFactory) -> None:
    ch = unique_channel("lobby:")
    js = await js_connected(server, js_factory)
    await js.call("map_subscribe", channel=ch, wait=True)
    first = await _publish(server, ch, "order1", {"qty": 1}, idempotency_key="req-1")
    retry = await _publish(server, ch, "order1", {"qty": 1}, idempotency_key="req-1")
    assert retry == {"offset": first["offset"], "epoch": first["epoch"], "suppressed": True,
                     "suppress_reason": "idempotency"}
    removed = await server.api_result("map_remove", {"channel": ch, "key": "order1", "idempotency_key": "rm-1"})
    again = await server.api_result("map_remove", {"channel": ch, "key": "order1", "idempotency_key": "rm-1"})
    assert not removed.get("suppressed") and again["suppress_reason"] == "idempotency"
    # A key that is not there: nothing changes, nothing is announced.
    unknown = await server.api_result("map_remove", {"channel": ch, "key": "never"})
    assert unknown == {"offset": removed["offset"], "epoch": first["epoch"], "suppressed": True,
                       "suppress_reason": "key_not_found"}
    await _publish(server, ch, "after", {})
    await js.wait("map_update", channel=ch, key="after")
    assert _updates(js, ch) == [("order1", {"qty": 1}), ("order1", None), ("after", {})]


# --- bad writes ---------------------------------------------------------------------------------------------


async def test_bad_writes_get_centrifugo_errors_and_others_keep_receiving(server: ServerProcess,
                                                                          js_factory: JsFactory) -> None:
    ch = unique_channel("lobby:")
    watcher = await js_connected(server, js_factory, "watcher")
    await watcher.call("map_subscribe", channel=ch, wait=True)
    writer = await js_connected(server, js_factory, "writer")
    anon = await js_connected(server, js_factory, "")

    async def code(js: JsClient, op: str, **args: Any) -> int:
        with pytest.raises(JsCallError) as err:
            await js.call(op, via="client", **args)
        return int(err.value.code)

    assert await code(writer, "map_publish", channel=ch, key="", data={}) == 107  # no key
    assert await code(writer, "map_publish", channel=ch, key="k" * 1025, data={}) == 107  # key too long
    assert await code(anon, "map_publish", channel=ch, key="k", data={}) == 103  # anonymous
    assert await code(writer, "map_publish", channel=unique_channel("chat:"), key="k", data={}) == 103  # no map
    assert await code(writer, "map_publish", channel=unique_channel("board:"), key="k", data={}) == 103
    assert await code(writer, "map_remove", channel=unique_channel("board:"), key="k") == 103
    seat = unique_channel("seats:")
    assert await code(anon, "map_publish", channel=seat, key="k", data={}) == 103  # keyed by a user id it lacks
    await writer.call("map_publish", channel=seat, key="ignored", data={"here": True}, via="client")
    assert [e["key"] for e in (await server.api_result("map_read_state", {"channel": seat}))["entries"]] == [
        "writer"]
    # Removing a key that is not there is no error (and announces nothing).
    await writer.call("map_remove", channel=ch, key="nothing", via="client")
    for payload, expected in (({"channel": ch, "key": "", "data": {}}, 107),
                              ({"channel": ch, "key": "k" * 1025, "data": {}}, 107),
                              ({"channel": ch, "key": "k"}, 107),
                              ({"channel": unique_channel("nowhere:"), "key": "k", "data": {}}, 102),
                              ({"channel": unique_channel("chat:"), "key": "k", "data": {}}, 107)):
        assert (await server.api("map_publish", payload))["error"]["code"] == expected, payload
    # A value over the client's message size limit (websocket.message_size_limit, 64 KiB) closes only that
    # connection with 1009, as Centrifugo's read limit does; the SDK reports it as disconnect code 3.
    with pytest.raises(JsCallError):
        await writer.call("map_publish", channel=ch, key="big", data={"pad": "x" * 70000}, via="client")
    assert (await writer.wait("disconnected"))["code"] == 3
    # Nothing of that reached the state or the subscriber, which keeps receiving.
    await writer.call("connect", token=server.token("writer"), wait=True)
    await writer.call("map_publish", channel=ch, key="fine", data={"ok": 1}, via="client")
    await watcher.wait("map_update", channel=ch, key="fine")
    assert _updates(watcher, ch) == [("fine", {"ok": 1})]
    assert [e["key"] for e in (await server.api_result("map_read_state", {"channel": ch}))["entries"]] == [
        "fine"]


async def test_a_tags_filtered_subscriber_sees_its_keys_removed(server: ServerProcess, js_factory: JsFactory) -> None:
    ch = unique_channel("tagged:")
    js = await js_connected(server, js_factory)
    await js.call("map_subscribe", channel=ch, tagsFilter={"key": "team", "cmp": "eq", "val": "eng"}, wait=True)
    await _publish(server, ch, "eng_item", {"v": 1}, tags={"team": "eng"})
    await _publish(server, ch, "sales_item", {"v": 2}, tags={"team": "sales"})
    # A removal names no tags: it carries the removed entry's, as Centrifugo's does, so the filter lets it through.
    await server.api_result("map_remove", {"channel": ch, "key": "sales_item"})
    await server.api_result("map_remove", {"channel": ch, "key": "eng_item"})
    await js.wait("map_update", channel=ch, key="eng_item", removed=True)
    assert _updates(js, ch) == [("eng_item", {"v": 1}), ("eng_item", None)]
