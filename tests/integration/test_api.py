"""The server HTTP API over real HTTP: auth, error shapes, legacy form, batch, broadcast, idempotency, and
server-side actions observed on raw WebSocket connections."""

from __future__ import annotations

import json
import signal

import cent
import pytest
from harness import ServerFactory, ServerProcess, unique_channel
from test_protocol_raw import raw


@pytest.fixture(scope="module")
def srv(module_server: ServerProcess) -> ServerProcess:
    return module_server


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}, {"Authorization": "apikey wrong"},
                                     {"Authorization": "bearer fugato-test-api-key"}])
async def test_unauthorized_is_401(srv: ServerProcess, headers: dict[str, str]) -> None:
    status, body = await srv.api_raw("publish", {"channel": "a", "data": {}}, headers=headers, auth=False)
    assert status == 401 and body == b""


async def test_authorization_header_form_is_accepted(srv: ServerProcess) -> None:
    status, body = await srv.api_raw("info", {}, headers={"Authorization": f"apikey {srv.api_key}"}, auth=False)
    assert status == 200 and "nodes" in json.loads(body)["result"]


async def test_malformed_json_is_400(srv: ServerProcess) -> None:
    status, _ = await srv.api_raw("publish", body=b"{nope")
    assert status == 400


async def test_error_shapes(srv: ServerProcess) -> None:
    assert await srv.api("publish", {"channel": "nope:x", "data": {}}) == \
        {"error": {"code": 102, "message": "unknown channel"}}
    assert (await srv.api("publish", {"channel": "", "data": {}}))["error"]["code"] == 107
    assert (await srv.api("publish", {"channel": "x"}))["error"]["code"] == 107
    assert (await srv.api("history", {"channel": "plain"}))["error"]["code"] == 108
    assert (await srv.api("rpc", {"method": "anything"}))["error"]["code"] == 104
    status, body = await srv.api_raw("publish", {"channel": "nope:x", "data": {}},
                                     headers={"X-Centrifugo-Error-Mode": "transport"})
    assert status == 404 and json.loads(body) == {"code": 102, "message": "unknown channel"}


async def test_publish_with_history_returns_position_and_tags_arrive(srv: ServerProcess) -> None:
    ch = unique_channel("chat:")
    async with raw(srv) as c:
        await c.connect(srv.token("u"))
        await c.send({"id": 2, "subscribe": {"channel": ch}})
        await c.reply(2)
        first = await srv.api_result("publish", {"channel": ch, "data": {"n": 1}, "tags": {"k": "v"}})
        second = await srv.api_result("publish", {"channel": ch, "data": {"n": 2}})
        assert first["offset"] == 1 and second["offset"] == 2 and first["epoch"] == second["epoch"]
        assert len(first["epoch"]) == 8
        pub = (await c.recv())["push"]["pub"]
        assert pub == {"data": {"n": 1}, "offset": 1, "tags": {"k": "v"}}
        assert (await c.recv())["push"]["pub"]["offset"] == 2


async def test_idempotent_publish_is_delivered_once(srv: ServerProcess) -> None:
    ch = unique_channel("chat:")
    async with raw(srv) as c:
        await c.connect(srv.token("u"))
        await c.send({"id": 2, "subscribe": {"channel": ch}})
        await c.reply(2)
        a = await srv.api_result("publish", {"channel": ch, "data": 1, "idempotency_key": "k1"})
        b = await srv.api_result("publish", {"channel": ch, "data": 1, "idempotency_key": "k1"})
        await srv.api_result("publish", {"channel": ch, "data": 2})
        assert a == b
        assert (await c.recv())["push"]["pub"]["data"] == 1
        assert (await c.recv())["push"]["pub"]["data"] == 2, "the duplicate must not be delivered"


async def test_legacy_api_form(srv: ServerProcess) -> None:
    body = b'{"id":1,"method":"publish","params":{"channel":"nope:x","data":{}}}\n' \
           b'{"id":2,"method":"info","params":{}}\n{"method":9}'
    status, data = await srv.api_raw("", body=body)
    assert status == 200
    lines = [json.loads(line) for line in data.split(b"\n")]
    assert lines[0] == {"id": 1, "error": {"code": 102, "message": "unknown channel"}}
    assert lines[1]["id"] == 2 and "nodes" in lines[1]["result"]
    assert "nodes" in lines[2]["result"]
    assert (await srv.api_raw("", body=b""))[0] == 400


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("path", ["batch", "batch?aiohttp=1"])  # the fast path, and aiohttp (a query string)
async def test_batch_and_broadcast(srv: ServerProcess, path: str, parallel: bool) -> None:
    a, b = unique_channel("plain"), unique_channel("chat:")
    # Centrifugo's batch response is ``{"replies": [...]}`` at the top level, not wrapped in ``result``.
    response = await srv.api(path, {"commands": [
        {"publish": {"channel": a, "data": {}}},
        {"publish": {"channel": "x:b", "data": {}}},
        {"info": {}},
        {"publish": {"channel": b, "data": {"n": 1}}},
        {"publish": {"channel": b, "data": {"n": 2}}},
        {},
    ], "parallel": parallel})
    assert set(response) == {"replies"}
    replies = response["replies"]
    assert replies[0] == {"publish": {}}
    assert replies[1] == {"error": {"code": 102, "message": "unknown channel"}}
    assert "nodes" in replies[2]["info"]
    assert sorted(r["publish"]["offset"] for r in replies[3:5]) == [1, 2]
    if not parallel:
        assert [r["publish"]["offset"] for r in replies[3:5]] == [1, 2]  # in order, one after the other
    assert replies[5] == {"error": {"code": 104, "message": "not found"}}
    result = await srv.api_result("broadcast", {"channels": [a, b, "x:c"], "data": {"t": 1}})
    responses = result["responses"]
    assert responses[0] == {"result": {}}
    assert responses[1]["result"]["offset"] == 3
    assert responses[2]["error"]["code"] == 102


async def test_cent_batch(srv: ServerProcess) -> None:
    """``cent``'s ``Client.batch()`` reads the top-level ``replies`` (a ``result`` wrapper was a KeyError)."""
    ch = unique_channel("chat:")
    async with srv.cent() as api:
        for parallel in (False, True):
            result = await api.batch(cent.BatchRequest(requests=[
                cent.PublishRequest(channel=ch, data={"i": 1}),
                cent.PresenceStatsRequest(channel=ch),
                cent.HistoryRequest(channel=ch, limit=10),
            ], parallel=parallel))
            assert len(result.replies) == 3
    history = await srv.api_result("history", {"channel": ch, "limit": 10})
    assert [p["data"] for p in history["publications"]] == [{"i": 1}, {"i": 1}]


async def test_server_side_subscribe_unsubscribe_disconnect(srv: ServerProcess) -> None:
    ch = unique_channel("plain")
    async with raw(srv) as c, raw(srv) as other:
        client_id = (await c.connect(srv.token("bob")))["connect"]["client"]
        await other.connect(srv.token("carol"))
        await srv.api_result("subscribe", {"user": "bob", "channel": ch})
        assert await c.recv() == {"push": {"channel": ch, "subscribe": {}}}
        channels = (await srv.api_result("channels", {}))["channels"]
        assert channels[ch] == {"num_clients": 1}
        await srv.api_result("publish", {"channel": ch, "data": "x"})
        assert (await c.recv())["push"]["pub"]["data"] == "x"
        await srv.api_result("unsubscribe", {"user": "bob", "channel": ch})
        unsub = {"code": 2000, "reason": "server unsubscribe"}
        assert await c.recv() == {"push": {"channel": ch, "unsubscribe": unsub}}
        assert ch not in (await srv.api_result("channels", {}))["channels"]
        await srv.api_result("disconnect", {"user": "bob", "client": client_id})
        assert await c.closed() == (3503, "force disconnect")
        await srv.api_result("disconnect", {"user": "carol", "disconnect": {"code": 4501, "reason": "bye"}})
        assert await other.closed() == (4501, "bye")


async def test_refresh_pushes_new_ttl_and_expired_disconnects(srv: ServerProcess) -> None:
    async with raw(srv) as c:
        await c.connect(srv.token("dan", ttl=60))
        await srv.api_result("refresh", {"user": "dan", "expire_at": 2_000_000_000})
        push = (await c.recv())["push"]["refresh"]
        assert push["expires"] is True and push["ttl"] > 10_000
        await srv.api_result("refresh", {"user": "dan", "expired": True})
        assert (await c.closed())[0] == 3005


async def test_sigterm_disconnects_clients_with_3001_and_exits_zero(server_factory: ServerFactory) -> None:
    srv = await server_factory({"shutdown": {"timeout": "5s"}})
    async with raw(srv) as c:
        await c.connect(srv.token("u"))
        srv.send_signal(signal.SIGTERM)
        assert await c.closed() == (3001, "shutdown")
    assert await srv.wait_exit(timeout=10) == 0


async def test_publish_into_a_map_namespace_is_107(server_factory: ServerFactory) -> None:
    """Centrifugo's publish is stream-only (internal/api/api.go: map and shared poll namespaces are 107); the
    map's own write goes through."""
    srv = await server_factory({"channel": {"namespaces": [
        {"name": "board", "subscription_type": "map", "map": {"mode": "persistent"}}]}})
    ch = unique_channel("board:")
    assert (await srv.api("publish", {"channel": ch, "data": {"n": 1}}))["error"]["code"] == 107
    assert (await srv.api("batch", {"commands": [{"publish": {"channel": ch, "data": {}}}]}))["replies"][0][
        "error"]["code"] == 107
    assert (await srv.api_result("map_publish", {"channel": ch, "key": "k", "data": {"n": 1}}))["offset"] == 1
