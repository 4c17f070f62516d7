"""Streams through the real SDKs: history, recovery (stream and cache mode), positioning with a wrong epoch,
presence and presence stats, join/leave between centrifuge-js and centrifuge-python, fossil deltas.

Most tests share one server (``module_server``) and use channels and users of their own.
"""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

import cent
import centrifuge
import pytest
from harness import JsFactory, PyClient, PyFactory, ServerFactory, ServerProcess, unique_channel, wait_until
from jsclient import JsCallError, JsClient

# A disconnect code in the reconnect range (4000-4499: custom, reconnect) for the API ``disconnect`` method.
RECONNECT = {"code": 4000, "reason": "reconnect"}
# Reconnect delays long enough for the test to publish while the client is away (both SDKs back off by at
# least the minimum delay).
PY_SLOW_RECONNECT = {"min_reconnect_delay": 1.5, "max_reconnect_delay": 2.5}
JS_SLOW_RECONNECT = {"minReconnectDelay": 1500, "maxReconnectDelay": 2500}


@pytest.fixture
async def server(module_server: ServerProcess) -> ServerProcess:
    return module_server


def unique_user(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def publish_many(server: ServerProcess, channel: str, numbers: range, **extra: Any) -> list[dict[str, Any]]:
    """Publish ``{"n": i}`` for each ``i`` via the HTTP API, one after the other; return the results."""
    return [await server.api_result("publish", {"channel": channel, "data": {"n": i}, **extra}) for i in numbers]


async def py_publications(py: PyClient, channel: str, count: int, timeout: float = 10.0) -> list[Any]:
    """The next ``count`` publications of ``channel`` (as ``Publication`` objects), in arrival order."""
    return [(await py.wait("publication", channel, timeout)).ctx.pub for _ in range(count)]


async def js_publications(js: JsClient, channel: str, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    return [await js.wait("publication", timeout, channel=channel) for _ in range(count)]


# -- history ---------------------------------------------------------------------------------------------


async def test_history_from_python_js_and_api(server: ServerProcess, js_factory: JsFactory,
                                              py_factory: PyFactory, cent_client: cent.AsyncClient) -> None:
    ch = unique_channel("chat:")
    published = await publish_many(server, ch, range(1, 6))
    epoch = published[0]["epoch"]
    assert epoch and [p["offset"] for p in published] == [1, 2, 3, 4, 5]
    assert {p["epoch"] for p in published} == {epoch}

    # HTTP API: the three keys are always there.
    full = await server.api_result("history", {"channel": ch, "limit": -1})
    assert {"publications", "epoch", "offset"} <= set(full)
    assert [(p["offset"], p["data"]) for p in full["publications"]] == [(i, {"n": i}) for i in range(1, 6)]
    assert (full["epoch"], full["offset"]) == (epoch, 5)
    position = await server.api_result("history", {"channel": ch})
    assert (position["publications"], position["epoch"], position["offset"]) == ([], epoch, 5)
    newest = await server.api_result("history", {"channel": ch, "limit": 2, "reverse": True})
    assert [p["offset"] for p in newest["publications"]] == [5, 4]
    empty = await server.api_result("history", {"channel": unique_channel("chat:")})
    assert {"publications", "epoch", "offset"} <= set(empty)
    assert (empty["publications"], empty["offset"]) == ([], 0)
    bad = await server.api("history", {"channel": ch, "limit": -1, "since": {"offset": 2, "epoch": "wrongepo"}})
    assert bad.get("error", {}).get("code") == 112, bad

    # cent
    since = await cent_client.history(cent.HistoryRequest(
        channel=ch, limit=-1, since=cent.StreamPosition(offset=2, epoch=epoch)))
    assert [(p.offset, p.data) for p in since.publications] == [(i, {"n": i}) for i in (3, 4, 5)]
    assert (since.epoch, since.offset) == (epoch, 5)
    with pytest.raises(cent.CentApiResponseError) as api_error:
        await cent_client.history(cent.HistoryRequest(
            channel=ch, limit=-1, since=cent.StreamPosition(offset=2, epoch="wrongepo")))
    assert api_error.value.code == 112

    # centrifuge-python, through its subscription.
    py = await py_factory(server, "hist-py")
    sub = await py.subscribe(ch)
    first_two = await sub.history(limit=2)
    assert [(p.offset, p.data) for p in first_two.publications] == [(1, {"n": 1}), (2, {"n": 2})]
    assert (first_two.epoch, first_two.offset) == (epoch, 5)
    reverse = await sub.history(limit=-1, reverse=True)
    assert [p.offset for p in reverse.publications] == [5, 4, 3, 2, 1]
    after_two = await sub.history(limit=-1, since=centrifuge.StreamPosition(offset=2, epoch=epoch))
    assert [(p.offset, p.data) for p in after_two.publications] == [(i, {"n": i}) for i in (3, 4, 5)]
    only_position = await sub.history(limit=0)
    assert (only_position.publications, only_position.epoch, only_position.offset) == ([], epoch, 5)
    with pytest.raises(centrifuge.ReplyError) as py_error:
        await sub.history(limit=-1, since=centrifuge.StreamPosition(offset=2, epoch="wrongepo"))
    assert py_error.value.code == 112

    # centrifuge-js, through the driver.
    js = await js_factory(server)
    await js.call("connect", token=server.token("hist-js"), wait=True)
    await js.call("subscribe", channel=ch, wait=True)
    js_two = await js.call("history", channel=ch, limit=2)
    assert [(p["offset"], p["data"]) for p in js_two["publications"]] == [(1, {"n": 1}), (2, {"n": 2})]
    assert (js_two["epoch"], js_two["offset"]) == (epoch, 5)
    js_reverse = await js.call("history", channel=ch, limit=-1, reverse=True)
    assert [p["offset"] for p in js_reverse["publications"]] == [5, 4, 3, 2, 1]
    js_since = await js.call("history", channel=ch, limit=-1, since={"offset": 2, "epoch": epoch})
    assert [(p["offset"], p["data"]) for p in js_since["publications"]] == [(i, {"n": i}) for i in (3, 4, 5)]
    js_position = await js.call("history", channel=ch, limit=0)
    assert (js_position["publications"], js_position["epoch"], js_position["offset"]) == ([], epoch, 5)
    with pytest.raises(JsCallError) as js_error:
        await js.call("history", channel=ch, limit=-1, since={"offset": 2, "epoch": "wrongepo"})
    assert js_error.value.code == 112


# -- recovery --------------------------------------------------------------------------------------------


async def test_python_recovers_missed_publications_after_reconnect(server: ServerProcess,
                                                                   py_factory: PyFactory) -> None:
    ch = unique_channel("feed:")
    user = unique_user("rec-py")
    py = await py_factory(server, user, **PY_SLOW_RECONNECT)
    await py.subscribe(ch)  # "feed" forces recovery and positioning: no options needed
    first = py.events("subscribed", ch)[0].ctx
    assert (first.recoverable, first.positioned, first.was_recovering) == (True, True, False)

    await publish_many(server, ch, range(1, 2))
    assert (await py.wait("publication", ch)).ctx.pub.offset == 1

    await server.api_result("disconnect", {"user": user, "disconnect": RECONNECT})
    going = await py.wait_event(lambda e: e.kind == "connecting" and e.ctx.code != 0)
    assert (going.ctx.code, going.ctx.reason) == (4000, "reconnect")
    missed = await publish_many(server, ch, range(2, 7))
    assert [p["offset"] for p in missed] == [2, 3, 4, 5, 6]
    assert len(py.events("connected")) == 1, "reconnected before the publications were made: nothing to recover"

    resubscribed = (await py.wait("subscribed", ch, timeout=10)).ctx
    assert (resubscribed.recovered, resubscribed.was_recovering) == (True, True)
    recovered = await py_publications(py, ch, 5)
    assert [(p.offset, p.data) for p in recovered] == [(i, {"n": i}) for i in range(2, 7)]

    await publish_many(server, ch, range(7, 8))
    live = (await py.wait("publication", ch)).ctx.pub
    assert (live.offset, live.data) == (7, {"n": 7})
    # Nothing lost, nothing twice.
    assert [e.ctx.pub.offset for e in py.events("publication", ch)] == list(range(1, 8))


async def test_js_recovers_missed_publications_after_reconnect(server: ServerProcess,
                                                               js_factory: JsFactory) -> None:
    ch = unique_channel("feed:")
    user = unique_user("rec-js")
    js = await js_factory(server, JS_SLOW_RECONNECT)
    await js.call("connect", token=server.token(user), wait=True)
    await js.call("subscribe", channel=ch, wait=True)
    first = await js.wait("subscribed", channel=ch)
    assert (first["recoverable"], first["positioned"], first["wasRecovering"]) == (True, True, False)

    await publish_many(server, ch, range(1, 2))
    assert (await js.wait("publication", channel=ch))["offset"] == 1

    await server.api_result("disconnect", {"user": user, "disconnect": RECONNECT})
    going = await js.wait_event(lambda e: e.get("event") == "connecting" and e["code"] != 0)
    assert (going["code"], going["reason"]) == (4000, "reconnect")
    missed = await publish_many(server, ch, range(2, 7))
    assert [p["offset"] for p in missed] == [2, 3, 4, 5, 6]
    assert len(js.events("connected")) == 1, "reconnected before the publications were made: nothing to recover"

    resubscribed = await js.wait("subscribed", timeout=10, channel=ch)
    assert (resubscribed["recovered"], resubscribed["wasRecovering"]) == (True, True)
    recovered = await js_publications(js, ch, 5)
    assert [(p["offset"], p["data"]) for p in recovered] == [(i, {"n": i}) for i in range(2, 7)]
    # Recovered publications come right after the subscribed event.
    assert recovered[0]["seq"] > resubscribed["seq"]

    await publish_many(server, ch, range(7, 8))
    live = await js.wait("publication", channel=ch)
    assert (live["offset"], live["data"]) == (7, {"n": 7})
    assert [e["offset"] for e in js.events("publication")] == list(range(1, 8))


async def test_js_since_with_wrong_epoch_is_not_recovered(server: ServerProcess, js_factory: JsFactory) -> None:
    ch = unique_channel("chat:")
    published = await publish_many(server, ch, range(1, 4))
    epoch = published[0]["epoch"]
    js = await js_factory(server)
    await js.call("connect", token=server.token("epoch-js"), wait=True)

    await js.call("subscribe", channel=ch, recoverable=True, since={"offset": 1, "epoch": "wrongepo"}, wait=True)
    wrong = await js.wait("subscribed", channel=ch)
    assert (wrong["wasRecovering"], wrong["recovered"]) == (True, False)
    assert wrong["streamPosition"] == {"offset": 3, "epoch": epoch}

    # The control: the right epoch recovers offsets 2 and 3 on another channel with the same history.
    ch2 = unique_channel("chat:")
    epoch2 = (await publish_many(server, ch2, range(1, 4)))[0]["epoch"]
    await js.call("subscribe", channel=ch2, recoverable=True, since={"offset": 1, "epoch": epoch2}, wait=True)
    right = await js.wait("subscribed", channel=ch2)
    assert (right["wasRecovering"], right["recovered"]) == (True, True)
    assert [p["offset"] for p in await js_publications(js, ch2, 2)] == [2, 3]
    # The wrong epoch brought no publications.
    assert js.events("publication") and all(e["channel"] == ch2 for e in js.events("publication"))


async def test_cache_recovery_mode_delivers_only_the_latest_publication(server_factory: ServerFactory,
                                                                        py_factory: PyFactory) -> None:
    srv = await server_factory({"channel": {"namespaces": [{
        "name": "cache", "history_size": 10, "history_ttl": "300s", "force_recovery": True,
        "force_recovery_mode": "cache", "allow_subscribe_for_client": True,
    }]}})
    ch = unique_channel("cache:")
    py = await py_factory(srv, "cache-py", **PY_SLOW_RECONNECT)
    await py.subscribe(ch)
    await publish_many(srv, ch, range(1, 2))
    assert (await py.wait("publication", ch)).ctx.pub.offset == 1

    await srv.api_result("disconnect", {"user": "cache-py", "disconnect": RECONNECT})
    going = await py.wait_event(lambda e: e.kind == "connecting" and e.ctx.code != 0)
    assert going.ctx.code == 4000
    assert [p["offset"] for p in await publish_many(srv, ch, range(2, 5))] == [2, 3, 4]
    assert len(py.events("connected")) == 1, "reconnected before the publications were made: nothing to recover"

    resubscribed = (await py.wait("subscribed", ch, timeout=10)).ctx
    assert (resubscribed.recovered, resubscribed.was_recovering) == (True, True)
    latest = (await py.wait("publication", ch)).ctx.pub
    assert (latest.offset, latest.data) == (4, {"n": 4})
    await publish_many(srv, ch, range(5, 6))
    assert (await py.wait("publication", ch)).ctx.pub.offset == 5
    # Offsets 2 and 3 were skipped: cache mode hands over the latest state only.
    assert [e.ctx.pub.offset for e in py.events("publication", ch)] == [1, 4, 5]


# -- presence and join/leave -----------------------------------------------------------------------------


async def test_presence_and_stats_from_python_js_and_api(server: ServerProcess, js_factory: JsFactory,
                                                         py_factory: PyFactory) -> None:
    ch = unique_channel("chat:")
    js = await js_factory(server)
    alice = (await js.call("connect", token=server.token("alice"), wait=True))["client"]
    await js.call("subscribe", channel=ch, wait=True)
    bob1 = await py_factory(server, "bob")
    await bob1.subscribe(ch)
    bob2 = await py_factory(server, "bob")
    await bob2.subscribe(ch)
    expected = {alice: "alice", bob1.client.client_id: "bob", bob2.client.client_id: "bob"}
    assert len(expected) == 3

    api = await server.api_result("presence", {"channel": ch})
    assert {cid: info["user"] for cid, info in api["presence"].items()} == expected
    assert all(info["client"] == cid for cid, info in api["presence"].items())
    assert await server.api_result("presence_stats", {"channel": ch}) == {"num_clients": 3, "num_users": 2}

    py_presence = await bob1.client.get_subscription(ch).presence()
    assert {cid: info.user for cid, info in py_presence.clients.items()} == expected
    assert all(info.client == cid for cid, info in py_presence.clients.items())
    py_stats = await bob1.client.get_subscription(ch).presence_stats()
    assert (py_stats.num_clients, py_stats.num_users) == (3, 2)

    js_presence = await js.call("presence", channel=ch)
    assert {cid: info["user"] for cid, info in js_presence["clients"].items()} == expected
    assert all(info["client"] == cid for cid, info in js_presence["clients"].items())
    js_stats = await js.call("presence_stats", channel=ch)
    assert (js_stats["numClients"], js_stats["numUsers"]) == (3, 2)

    # One of bob's connections goes: three clients become two, still two users.
    gone = bob2.client.client_id
    await bob2.client.disconnect()

    async def stats() -> dict[str, Any] | None:
        result = await server.api_result("presence_stats", {"channel": ch})
        return result if result["num_clients"] == 2 else None

    assert await wait_until(stats, what="presence_stats num_clients == 2") == {"num_clients": 2, "num_users": 2}
    del expected[gone]
    assert {cid: info["user"] for cid, info in (await js.call("presence", channel=ch))["clients"].items()} \
        == expected
    assert (await bob1.client.presence_stats(ch)).num_clients == 2

    assert await server.api_result("presence", {"channel": unique_channel("chat:")}) == {"presence": {}}


async def test_join_and_leave_between_js_and_python(server: ServerProcess, js_factory: JsFactory,
                                                    py_factory: PyFactory) -> None:
    ch = unique_channel("chat:")
    js = await js_factory(server)
    alice = (await js.call("connect", token=server.token("alice"), wait=True))["client"]
    await js.call("subscribe", channel=ch, joinLeave=True, wait=True)

    py = await py_factory(server, "bob")
    bob = py.client.client_id
    await py.subscribe(ch, join_leave=True)
    join = await js.wait_event(lambda e: e.get("event") == "join" and e["info"]["client"] == bob)
    assert (join["channel"], join["info"]["user"]) == (ch, "bob")

    # The other way round: Python sees alice leave and come back.
    await js.call("unsubscribe", channel=ch)
    left = await py.wait_event(lambda e: e.kind == "leave" and e.ctx.info.client == alice)
    assert (left.channel, left.ctx.info.user) == (ch, "alice")
    await js.call("subscribe", channel=ch, wait=True)
    joined = await py.wait_event(lambda e: e.kind == "join" and e.ctx.info.client == alice)
    assert (joined.channel, joined.ctx.info.user) == (ch, "alice")

    await py.client.get_subscription(ch).unsubscribe()
    leave = await js.wait_event(lambda e: e.get("event") == "leave" and e["info"]["client"] == bob)
    assert (leave["channel"], leave["info"]["user"]) == (ch, "bob")


# -- fossil delta ----------------------------------------------------------------------------------------


def _big_document() -> dict[str, Any]:
    return {
        "version": 0,
        "title": "inventory",
        "items": [{"id": i, "name": f"item number {i}", "tags": ["alpha", "beta", "gamma"], "qty": i * 7}
                  for i in range(60)],
    }


def _incoming_messages(js: JsClient) -> list[dict[str, Any]]:
    """Every message the traced client received (a JSON frame may carry several, one per line)."""
    out = []
    for frame in js.events("frame_in"):
        data = frame["data"]
        if isinstance(data, str):
            out += [json.loads(line) for line in data.splitlines() if line.strip()]
    return out


async def test_fossil_delta_decodes_to_the_same_data(server: ServerProcess, js_factory: JsFactory,
                                                     py_factory: PyFactory) -> None:
    ch = unique_channel("chat:")
    js_delta = await js_factory(server, {"trace": True}, name="js-delta")
    await js_delta.call("connect", token=server.token("delta-js"), wait=True)
    await js_delta.call("subscribe", channel=ch, delta="fossil", positioned=True, wait=True)
    js_plain = await js_factory(server, name="js-plain")
    await js_plain.call("connect", token=server.token("plain-js"), wait=True)
    await js_plain.call("subscribe", channel=ch, wait=True)
    py_delta = await py_factory(server, "delta-py")
    await py_delta.subscribe(ch, positioned=True, delta=centrifuge.DeltaType.FOSSIL)
    py_plain = await py_factory(server, "plain-py")
    await py_plain.subscribe(ch)

    docs = []
    doc = _big_document()
    for version in range(1, 7):
        doc = copy.deepcopy(doc)
        doc["version"] = version
        doc["items"][version * 5]["qty"] += 1000
        docs.append(doc)
        await server.api_result("publish", {"channel": ch, "data": doc, "delta": True})

    count = len(docs)
    assert [p["data"] for p in await js_publications(js_delta, ch, count)] == docs
    assert [p["data"] for p in await js_publications(js_plain, ch, count)] == docs
    assert [p.data for p in await py_publications(py_delta, ch, count)] == docs
    assert [p.data for p in await py_publications(py_plain, ch, count)] == docs

    # On the wire: the subscribe reply negotiated delta, the first publication is the full payload (as a JSON
    # string), every later one a fossil patch much smaller than the payload.
    messages = _incoming_messages(js_delta)
    assert any(m.get("subscribe", {}).get("delta") is True for m in messages), messages[:5]
    pubs = [m["push"]["pub"] for m in messages if "pub" in m.get("push", {})]
    assert len(pubs) == count
    assert not pubs[0].get("delta") and json.loads(pubs[0]["data"]) == docs[0]
    full_size = len(json.dumps(docs[-1]))
    for pub in pubs[1:]:
        assert pub.get("delta") is True, pub
        assert isinstance(pub["data"], str) and len(pub["data"]) < full_size // 4, (len(pub["data"]), full_size)
