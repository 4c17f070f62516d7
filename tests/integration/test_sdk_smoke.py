"""End-to-end smoke tests with the real SDKs: centrifuge-js (node driver), centrifuge-python and cent.

All tests share one server (``module_server``) and use channels of their own.
"""

from __future__ import annotations

import json

import cent
import pytest
from harness import JsFactory, PyClient, PyFactory, ServerProcess, unique_channel
from jsclient import JsCallError, JsClient, match


@pytest.fixture
async def server(module_server: ServerProcess) -> ServerProcess:
    return module_server


@pytest.fixture
async def js_client(module_server: ServerProcess, js_factory: JsFactory) -> JsClient:
    return await js_factory(module_server)


@pytest.fixture
async def py_client(module_server: ServerProcess, py_factory: PyFactory) -> PyClient:
    return await py_factory(module_server)


async def test_health_answers_empty_object(server: ServerProcess) -> None:
    status, _, body = await server.http("GET", "/health")
    assert status == 200
    assert json.loads(body) == {}


async def test_api_publish_reaches_js_and_python_subscribers(
    server: ServerProcess, js_client: JsClient, py_client: PyClient, cent_client: cent.AsyncClient
) -> None:
    channel = unique_channel("chat:")
    connected = await js_client.call("connect", token=server.token("alice", info={"name": "Alice"}), wait=True)
    event = await js_client.wait("connected")
    assert event["client"] == connected["client"]
    assert event["transport"] == "websocket"

    await js_client.call("subscribe", channel=channel)
    subscribed = await js_client.wait("subscribed", channel=channel)
    assert subscribed["recoverable"] is False
    await py_client.subscribe(channel)

    result = await cent_client.publish(cent.PublishRequest(channel=channel, data={"text": "hi"}))
    # "chat" keeps history: the API answers with the publication's position.
    assert result.offset == 1
    assert result.epoch

    pub = await js_client.wait("publication", channel=channel)
    assert pub["data"] == {"text": "hi"}
    assert pub["offset"] == 1
    assert "info" not in pub  # API publications carry no publisher info

    py_pub = await py_client.wait("publication", channel)
    assert py_pub.ctx.pub.data == {"text": "hi"}
    assert py_pub.ctx.pub.offset == 1
    assert py_pub.ctx.pub.info is None


async def test_python_client_publish_reaches_js(
    server: ServerProcess, js_client: JsClient, py_client: PyClient
) -> None:
    channel = unique_channel("chat:")
    await js_client.call("connect", token=server.token("alice"), wait=True)
    await js_client.call("subscribe", channel=channel, wait=True)
    sub = await py_client.subscribe(channel)

    await sub.publish({"text": "from python"})

    pub = await js_client.wait("publication", channel=channel)
    assert pub["data"] == {"text": "from python"}
    assert pub["info"]["user"] == "py"
    assert pub["info"]["client"] == py_client.client.client_id
    # The publisher is subscribed too, so it gets its own publication back.
    own = await py_client.wait("publication", channel)
    assert own.ctx.pub.data == {"text": "from python"}
    assert own.ctx.pub.info is not None
    assert own.ctx.pub.info.user == "py"


async def test_js_client_publish_reaches_python(
    server: ServerProcess, js_client: JsClient, py_client: PyClient
) -> None:
    channel = unique_channel()  # no namespace: subscribers may publish
    sub = await py_client.subscribe(channel)
    assert sub.channel == channel
    await js_client.call("connect", token=server.token("alice"), wait=True)
    await js_client.call("subscribe", channel=channel, wait=True)

    assert await js_client.call("publish", channel=channel, data={"n": 1}) == {}

    py_pub = await py_client.wait("publication", channel)
    assert py_pub.ctx.pub.data == {"n": 1}
    assert py_pub.ctx.pub.info is not None
    assert py_pub.ctx.pub.info.user == "alice"


async def test_invalid_token_ends_js_client_disconnected_3500(server: ServerProcess, js_client: JsClient) -> None:
    bad = server.token("alice", secret="not-the-server-secret-0123456789abcdef")
    await js_client.call("connect", token=bad)

    event = await js_client.wait_event(lambda e: e.get("event") in ("connected", "disconnected"))
    assert event["event"] == "disconnected", event
    assert event["code"] == 3500
    assert event["reason"] == "invalid token"
    state = await js_client.call("state")
    assert state["state"] == "disconnected"
    assert js_client.events("connected") == []


async def test_invalid_token_ends_python_client_disconnected_3500(
    server: ServerProcess, py_factory: PyFactory
) -> None:
    client = await py_factory(server, token="not.a.jwt", connect=False)
    await client.client.connect()

    event = await client.wait_event(lambda e: e.kind in ("connected", "disconnected"))
    assert event.kind == "disconnected", client.describe()
    assert event.ctx.code == 3500
    assert event.ctx.reason == "invalid token"


async def test_api_with_wrong_key_is_401(server: ServerProcess) -> None:
    payload = {"channel": "chat:x", "data": {}}
    status, body = await server.api_raw("publish", payload, headers={"X-API-Key": "wrong"})
    assert status == 401
    assert body == b""
    status, _ = await server.api_raw("publish", payload, auth=False)
    assert status == 401
    status, _ = await server.api_raw("publish", payload)
    assert status == 200


async def test_cent_with_wrong_key_raises_unauthorized(server: ServerProcess) -> None:
    async with cent.AsyncClient(server.api_url, "wrong") as client:
        with pytest.raises(cent.CentUnauthorizedError):
            await client.publish(cent.PublishRequest(channel="chat:x", data={}))


async def test_js_call_error_carries_server_code(server: ServerProcess, js_client: JsClient) -> None:
    await js_client.call("connect", token=server.token("alice"), wait=True)
    # "secret:" allows nothing: publishing there is refused with 103 permission denied.
    with pytest.raises(JsCallError) as info:
        await js_client.call("publish", channel="secret:x", data={"a": 1}, via="client")
    assert (info.value.code, info.value.message) == (103, "permission denied")
    # Presence is off in "secret:": 108 not available (checked before permissions, spec §2.7).
    with pytest.raises(JsCallError) as info:
        await js_client.call("presence", channel="secret:x", via="client")
    assert info.value.code == 108
    assert js_client.events("driver_error") == []


async def test_driver_survives_bad_commands(js_factory: JsFactory, server: ServerProcess) -> None:
    js = await js_factory(server)
    await js.send_raw("not json")
    bad = await js.wait_event(match("result", id=None))
    assert bad["ok"] is False
    assert bad["error"]["code"] == -1
    with pytest.raises(JsCallError) as info:
        await js.call("no_such_op")
    assert info.value.code == -1
    with pytest.raises(JsCallError):
        await js.call("subscribe")  # no channel
    assert (await js.call("state"))["state"] == "disconnected"
