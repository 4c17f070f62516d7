"""Protocol edge cases over a raw WebSocket (aiohttp client), where the SDKs would hide what the server sent:
malformed input, ordering, close codes, ping/pong and the slow-consumer cut-off."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from harness import ServerFactory, ServerProcess, unique_channel


class Raw:
    """A bare protocol-v2 JSON connection."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.pending: list[dict[str, Any]] = []

    async def send(self, *commands: dict[str, Any]) -> None:
        await self.ws.send_str("\n".join(json.dumps(c) for c in commands))

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        while not self.pending:
            msg = await self.ws.receive(timeout)
            if msg.type is not aiohttp.WSMsgType.TEXT:
                raise AssertionError(f"expected a text frame, got {msg.type} {msg.data!r} {msg.extra!r}")
            self.pending.extend(json.loads(line) for line in msg.data.split("\n"))
        return self.pending.pop(0)

    async def reply(self, cmd_id: int, timeout: float = 5.0) -> dict[str, Any]:
        """The reply to command ``cmd_id``, skipping pushes and pings that arrive first."""
        while True:
            msg = await self.recv(timeout)
            if msg.get("id") == cmd_id:
                return msg

    async def closed(self, timeout: float = 10.0) -> tuple[int | None, str]:
        """Read until the server closes; return the close code and reason."""
        while True:
            msg = await self.ws.receive(timeout)
            if msg.type is aiohttp.WSMsgType.CLOSE:
                return int(msg.data), msg.extra or ""
            if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR):
                return self.ws.close_code, msg.extra or ""

    async def connect(self, token: str, **extra: Any) -> dict[str, Any]:
        await self.send({"id": 1, "connect": {"token": token, **extra}})
        return await self.reply(1)


@asynccontextmanager
async def raw(server: ServerProcess) -> AsyncIterator[Raw]:
    async with aiohttp.ClientSession() as session, session.ws_connect(server.ws_url, autoping=True) as ws:
        yield Raw(ws)


@pytest.fixture(scope="module")
def srv(module_server: ServerProcess) -> ServerProcess:
    return module_server


async def test_connect_reply_shape(srv: ServerProcess) -> None:
    async with raw(srv) as c:
        reply = await c.connect(srv.token("alice"))
    result = reply["connect"]
    assert len(result["client"]) == 36
    assert result["version"].endswith(" OSS")
    assert result["ping"] == 25 and result["pong"] is True
    assert result["expires"] is True and 3500 < result["ttl"] <= 3600


async def test_several_commands_in_one_frame_get_replies_in_order(srv: ServerProcess) -> None:
    ch = unique_channel()
    async with raw(srv) as c:
        await c.send({"id": 1, "connect": {"token": srv.token("alice")}},
                     {"id": 2, "subscribe": {"channel": ch}},
                     {"id": 3, "presence_stats": {"channel": ch}})
        replies = [await c.recv() for _ in range(3)]
    assert [r["id"] for r in replies] == [1, 2, 3]
    assert replies[1]["subscribe"] == {}
    assert replies[2]["presence_stats"] == {"num_clients": 1, "num_users": 1}


@pytest.mark.parametrize("frame", [
    "{not json",
    '{"id":1,"connect":{}}\n\n{"id":2,"subscribe":{"channel":"x"}}',
    '[1,2,3]',
    '{"id":-5,"connect":{}}',
])
async def test_malformed_frame_is_3501_and_other_clients_keep_working(srv: ServerProcess, frame: str) -> None:
    ch = unique_channel()
    async with raw(srv) as good, raw(srv) as bad:
        await good.connect(srv.token("good"))
        await good.send({"id": 2, "subscribe": {"channel": ch}})
        await good.reply(2)
        await bad.ws.send_str(frame)
        assert await bad.closed() == (3501, "bad request")
        await srv.api_result("publish", {"channel": ch, "data": {"n": 1}})
        push = await good.recv()
        assert push["push"]["pub"]["data"] == {"n": 1}


async def test_unknown_method_and_command_before_connect_are_3501(srv: ServerProcess) -> None:
    async with raw(srv) as c:
        await c.connect(srv.token("u"))
        await c.send({"id": 2, "frobnicate": {}})
        assert (await c.closed())[0] == 3501
    async with raw(srv) as c:
        await c.send({"id": 1, "subscribe": {"channel": "x"}})
        assert (await c.closed())[0] == 3501


async def test_oversize_frame_closes_1009_only_that_client(server_factory: ServerFactory) -> None:
    srv = await server_factory({"websocket": {"message_size_limit": 1024}})
    ch = unique_channel()
    async with raw(srv) as good, raw(srv) as bad:
        await good.connect(srv.token("good"))
        await good.send({"id": 2, "subscribe": {"channel": ch}})
        await good.reply(2)
        await bad.connect(srv.token("bad"))
        await bad.send({"id": 2, "publish": {"channel": ch, "data": "x" * 4096}})
        assert (await bad.closed())[0] == 1009
        await srv.api_result("publish", {"channel": ch, "data": "after"})
        assert (await good.recv())["push"]["pub"]["data"] == "after"


async def test_errors_keep_the_connection_usable(srv: ServerProcess) -> None:
    async with raw(srv) as c:
        await c.connect(srv.token("u"))
        await c.send({"id": 2, "subscribe": {"channel": "nope:x"}},
                     {"id": 3, "subscribe": {"channel": "secret:x"}},
                     {"id": 4, "rpc": {"method": "m", "data": {}}},
                     {"id": 5, "subscribe": {"channel": "c" * 256}},
                     {"id": 6, "subscribe": {"channel": "$private"}},
                     {"id": 7, "history": {"channel": "plain"}})
        errors = {i: (await c.reply(i))["error"]["code"] for i in range(2, 8)}
        assert errors == {2: 102, 3: 103, 4: 108, 5: 107, 6: 103, 7: 108}
        await c.send({"id": 8, "subscribe": {"channel": "ok"}}, {"id": 9, "subscribe": {"channel": "ok"}})
        assert (await c.reply(8))["subscribe"] == {}
        assert (await c.reply(9))["error"]["code"] == 105


async def test_expired_token_is_109_then_connection_unusable(srv: ServerProcess) -> None:
    async with raw(srv) as c:
        reply = await c.connect(srv.token("u", ttl=-10))
        assert reply["error"] == {"code": 109, "message": "token expired"}
        await c.send({"id": 2, "subscribe": {"channel": "x"}})
        assert (await c.closed())[0] == 3501


async def test_invalid_token_is_3500(srv: ServerProcess) -> None:
    async with raw(srv) as c:
        await c.send({"id": 1, "connect": {"token": srv.token("u", secret="wrong-secret-wrong-secret-wrong-secret")}})
        assert await c.closed() == (3500, "invalid token")


async def test_refresh_extends_connection(srv: ServerProcess) -> None:
    async with raw(srv) as c:
        first = await c.connect(srv.token("u", ttl=100))
        assert first["connect"]["ttl"] <= 100
        await c.send({"id": 2, "refresh": {"token": srv.token("u", ttl=5000)}})
        result = (await c.reply(2))["refresh"]
        assert result["expires"] is True and 4000 < result["ttl"] <= 5000
        await c.send({"id": 3, "refresh": {"token": srv.token("someone-else")}})
        assert (await c.closed())[0] == 3500


async def test_stale_connection_without_connect_is_closed(server_factory: ServerFactory) -> None:
    srv = await server_factory({"client": {"stale_close_delay": "300ms"}})
    async with raw(srv) as c:
        assert await c.closed() == (3502, "stale")


async def test_ping_pong(server_factory: ServerFactory) -> None:
    srv = await server_factory({"client": {"ping_interval": "1s", "pong_timeout": "500ms"}})
    async with raw(srv) as silent, raw(srv) as polite:
        assert (await silent.connect(srv.token("s")))["connect"]["ping"] == 1
        await polite.connect(srv.token("p"))

        async def answer_pings() -> None:
            for _ in range(3):
                assert await polite.recv() == {}
                await polite.ws.send_str("{}")

        answering = asyncio.create_task(answer_pings())
        assert await silent.recv() == {}, "the server pings with an empty reply"
        assert await silent.closed() == (3012, "no pong")
        await answering
        info = await srv.api_result("info")
        assert info["nodes"][0]["num_clients"] == 1


async def test_slow_consumer_is_disconnected_others_get_everything(server_factory: ServerFactory) -> None:
    srv = await server_factory({"client": {"queue_max_size": 65536}})
    ch = unique_channel()
    payload = "x" * 16000
    count = 600  # ~10 MB: far more than the kernel's socket buffers hold for a reader that never reads
    async with aiohttp.ClientSession() as session:
        slow_ws = await session.ws_connect(srv.ws_url)
        slow = Raw(slow_ws)
        await slow.connect(srv.token("slow"))
        await slow.send({"id": 2, "subscribe": {"channel": ch}})
        await slow.reply(2)
        async with raw(srv) as fast:
            await fast.connect(srv.token("fast"))
            await fast.send({"id": 2, "subscribe": {"channel": ch}})
            await fast.reply(2)
            # Stop reading on the slow socket: pause its transport so the kernel buffers fill up.
            conn = slow_ws._response.connection
            assert conn is not None and conn.transport is not None
            conn.transport.pause_reading()
            received = 0

            async def read_fast() -> None:
                nonlocal received
                while received < count:
                    msg = await fast.recv(timeout=20)
                    if "push" in msg:
                        received += 1

            reader = asyncio.create_task(read_fast())
            for i in range(count):
                await srv.api_result("publish", {"channel": ch, "data": {"i": i, "p": payload}})
            await asyncio.wait_for(reader, 30)
            assert received == count
            info = await srv.api_result("info")
            assert info["nodes"][0]["num_clients"] == 1, "the slow client must be gone"
            conn.transport.resume_reading()
        await slow_ws.close()


async def test_limits_and_channel_regex(server_factory: ServerFactory) -> None:
    srv = await server_factory({
        "client": {"channel_limit": 2, "user_connection_limit": 1},
        "channel": {"namespaces": [{"name": "ids", "channel_regex": "^[0-9]+$", "allow_subscribe_for_client": True}]},
    })
    async with raw(srv) as c, raw(srv) as twin:
        await c.connect(srv.token("limited"))
        await c.send({"id": 2, "subscribe": {"channel": "ids:123"}},
                     {"id": 3, "subscribe": {"channel": "ids:abc"}},
                     {"id": 4, "subscribe": {"channel": "a"}},
                     {"id": 5, "subscribe": {"channel": "b"}})
        assert (await c.reply(2))["subscribe"] == {}
        assert (await c.reply(3))["error"]["code"] == 107
        assert (await c.reply(4))["subscribe"] == {}
        assert (await c.reply(5))["error"] == {"code": 106, "message": "limit exceeded"}
        await twin.send({"id": 1, "connect": {"token": srv.token("limited")}})
        assert await twin.closed() == (3504, "connection limit")


async def test_origin_check(server_factory: ServerFactory) -> None:
    srv = await server_factory({"client": {"allowed_origins": ["https://*.example.com"]}})
    async with aiohttp.ClientSession() as session:
        for origin, allowed in (("https://app.example.com", True), ("https://evil.test", False), (None, True)):
            headers = {"Origin": origin} if origin else {}
            try:
                async with session.ws_connect(srv.ws_url, headers=headers) as ws:
                    await ws.send_str(json.dumps({"id": 1, "connect": {"token": srv.token("o")}}))
                    msg = await ws.receive(5)
                    assert allowed and "connect" in json.loads(msg.data)
            except aiohttp.WSServerHandshakeError as e:
                assert not allowed and e.status == 403


async def test_connection_limit_refuses_upgrade_with_503(server_factory: ServerFactory) -> None:
    srv = await server_factory({"client": {"connection_limit": 1}})
    async with raw(srv) as first:
        await first.connect(srv.token("a"))
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await session.ws_connect(srv.ws_url)
            assert info.value.status == 503


async def test_sub_refresh(srv: ServerProcess) -> None:
    ch = "$" + unique_channel("sr")
    async with raw(srv) as c:
        await c.connect(srv.token("u"))
        await c.send({"id": 2, "subscribe": {"channel": ch, "token": srv.sub_token("u", ch, ttl=100)}})
        sub = (await c.reply(2))["subscribe"]
        assert sub["expires"] is True and 0 < sub["ttl"] <= 100
        await c.send({"id": 3, "sub_refresh": {"channel": ch, "token": srv.sub_token("u", ch, ttl=5000)}},
                     {"id": 4, "sub_refresh": {"channel": "$other", "token": srv.sub_token("u", "$other")}},
                     {"id": 5, "sub_refresh": {"channel": ch}})
        refreshed = (await c.reply(3))["sub_refresh"]
        assert refreshed["expires"] is True and 4000 < refreshed["ttl"] <= 5000
        assert (await c.reply(4))["error"]["code"] == 103, "not subscribed"
        assert (await c.reply(5))["error"]["code"] == 107, "no token"


async def test_expired_subscription_is_unsubscribed_2501(server_factory: ServerFactory) -> None:
    srv = await server_factory({"client": {"expired_sub_close_delay": "0s", "presence_update_interval": "500ms"}})
    ch = "$" + unique_channel("exp")
    async with raw(srv) as c:
        await c.connect(srv.token("u"))
        await c.send({"id": 2, "subscribe": {"channel": ch, "token": srv.sub_token("u", ch, ttl=1)}})
        assert (await c.reply(2))["subscribe"]["expires"] is True
        push = await c.recv(timeout=10)
        assert push == {"push": {"channel": ch, "unsubscribe": {"code": 2501, "reason": "subscription expired"}}}


async def test_connection_token_channels_in_unknown_namespace_is_102(srv: ServerProcess) -> None:
    async with raw(srv) as c:
        reply = await c.connect(srv.token("u", channels=["nope:x"]))
        assert reply["error"]["code"] == 102
