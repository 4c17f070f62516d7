"""Issue-level behaviour exercised through the real SDKs: permissions and their codes, token expiry and
refresh, private and user-limited channels, server-side subscriptions, insecure and anonymous modes."""

from __future__ import annotations

import time

import centrifuge
import pytest
from harness import JsFactory, PyFactory, ServerFactory, ServerProcess, unique_channel
from jsclient import JsCallError


@pytest.fixture
async def server(module_server: ServerProcess) -> ServerProcess:
    return module_server


async def test_client_publish_allowed_for_subscriber_denied_otherwise(server: ServerProcess,
                                                                      py_factory: PyFactory) -> None:
    py = await py_factory(server, "pub")
    ch = unique_channel("chat:")
    # "chat" allows publishing for subscribers only: before subscribing the publish is refused with 103.
    with pytest.raises(centrifuge.ReplyError) as info:
        await py.client.publish(ch, {"early": True})
    assert info.value.code == 103
    sub = await py.subscribe(ch)
    await sub.publish({"late": True})
    pub = await py.wait("publication", ch)
    assert pub.ctx.pub.data == {"late": True}


async def test_subscribe_errors_reach_sdks_as_unsubscribed_codes(server: ServerProcess, js_factory: JsFactory,
                                                                 py_factory: PyFactory) -> None:
    js = await js_factory(server)
    await js.call("connect", token=server.token("alice"), wait=True)
    await js.call("subscribe", channel="nope:x")
    event = await js.wait("unsubscribed", channel="nope:x")
    assert event["code"] == 102
    await js.call("subscribe", channel="secret:x")
    assert (await js.wait("unsubscribed", channel="secret:x"))["code"] == 103
    py = await py_factory(server)
    await py.subscribe("nope:y", wait=False)
    event = await py.wait("unsubscribed", "nope:y")
    assert event.ctx.code == 102


async def test_expired_token_makes_js_fetch_a_new_one(server: ServerProcess, js_factory: JsFactory) -> None:
    js = await js_factory(server)
    await js.call("connect", token=server.token("alice", ttl=-60), getToken=[server.token("alice")], wait=True)
    assert (await js.wait("get_token"))["n"] == 0, "error 109 must make the SDK ask for a fresh token"
    assert len(js.events("connected")) == 1


async def test_expired_token_makes_python_fetch_a_new_one(server: ServerProcess, py_factory: PyFactory) -> None:
    calls: list[float] = []

    async def get_token() -> str:
        calls.append(time.time())
        return server.token("py")

    py = await py_factory(server, token=server.token("py", ttl=-60), get_token=get_token, connect=False)
    await py.connect()
    assert len(calls) == 1


async def test_connection_refresh_before_expiry_keeps_the_client(server_factory: ServerFactory,
                                                                 js_factory: JsFactory) -> None:
    srv = await server_factory({"client": {"expired_close_delay": "0s"}})
    js = await js_factory(srv)
    ch = unique_channel()
    await js.call("connect", token=srv.token("alice", ttl=2), getToken=[srv.token("alice", ttl=3600)], wait=True)
    await js.call("subscribe", channel=ch, wait=True)
    await js.wait("get_token", timeout=10)  # the SDK refreshes ahead of the 2 s expiry
    await srv.api_result("publish", {"channel": ch, "data": {"after": "refresh"}})
    assert (await js.wait("publication", channel=ch))["data"] == {"after": "refresh"}
    # Well past the first token's expiry (close delay 0): still one connection, never disconnected.
    info = await srv.api_result("info")
    assert info["nodes"][0]["num_clients"] == 1
    assert js.events("disconnected") == [] and len(js.events("connected")) == 1


async def test_unrefreshed_connection_is_closed_3005(server_factory: ServerFactory, py_factory: PyFactory) -> None:
    srv = await server_factory({"client": {"expired_close_delay": "0s"}})
    # No get_token callback: the SDK cannot refresh, so the server closes the connection at expiry.
    py = await py_factory(srv, token=srv.token("py", ttl=2))
    event = await py.wait_event(lambda e: e.kind in ("connecting", "disconnected") and e.ctx.code == 3005, 10)
    assert event.ctx.reason == "connection expired"


async def test_private_channel_needs_subscription_token(server: ServerProcess, js_factory: JsFactory) -> None:
    js = await js_factory(server)
    await js.call("connect", token=server.token("alice"), wait=True)
    ch = "$" + unique_channel("priv")
    await js.call("subscribe", channel=ch)
    assert (await js.wait("unsubscribed", channel=ch))["code"] == 103
    ch2 = "$" + unique_channel("priv")
    await js.call("subscribe", channel=ch2, token=server.sub_token("alice", ch2, info={"role": "x"}), wait=True)
    await server.api_result("publish", {"channel": ch2, "data": "secret"})
    assert (await js.wait("publication", channel=ch2))["data"] == "secret"
    # A token for another user: the server disconnects with 3500 (terminal).
    ch3 = "$" + unique_channel("priv")
    await js.call("subscribe", channel=ch3, token=server.sub_token("mallory", ch3))
    assert (await js.wait("disconnected"))["code"] == 3500


async def test_user_limited_channel(server_factory: ServerFactory, py_factory: PyFactory) -> None:
    srv = await server_factory({"channel": {"namespaces": [{"name": "dm", "allow_user_limited_channels": True}]}})
    alice = await py_factory(srv, "alice")
    await alice.subscribe("dm:#alice,bob")
    eve = await py_factory(srv, "eve")
    await eve.subscribe("dm:#alice,bob", wait=False)
    assert (await eve.wait("unsubscribed", "dm:#alice,bob")).ctx.code == 103


async def test_token_channels_claim_makes_server_side_subscriptions(server: ServerProcess,
                                                                    js_factory: JsFactory,
                                                                    py_factory: PyFactory) -> None:
    ch = unique_channel("plain")
    js = await js_factory(server)
    await js.call("connect", token=server.token("alice", channels=[ch]), wait=True)
    assert (await js.wait("server_subscribed"))["channel"] == ch
    py = await py_factory(server, token=server.token("py", channels=[ch]))
    await py.wait("server_subscribed", ch)
    await server.api_result("publish", {"channel": ch, "data": {"srv": 1}})
    assert (await js.wait("server_publication"))["data"] == {"srv": 1}
    assert (await py.wait("server_publication", ch)).ctx.pub.data == {"srv": 1}


async def test_api_subscribe_unsubscribe_disconnect_with_python_sdk(server: ServerProcess,
                                                                     py_factory: PyFactory) -> None:
    ch = unique_channel("plain")
    py = await py_factory(server, "zed")
    await server.api_result("subscribe", {"user": "zed", "channel": ch})
    await py.wait("server_subscribed", ch)
    await server.api_result("publish", {"channel": ch, "data": 5})
    assert (await py.wait("server_publication", ch)).ctx.pub.data == 5
    await server.api_result("unsubscribe", {"user": "zed", "channel": ch})
    await py.wait("server_unsubscribed", ch)
    await server.api_result("disconnect", {"user": "zed"})
    event = await py.wait("disconnected")
    assert (event.ctx.code, event.ctx.reason) == (3503, "force disconnect")


async def test_insecure_mode_allows_everything_without_token(server_factory: ServerFactory,
                                                             js_factory: JsFactory) -> None:
    srv = await server_factory({"client": {"insecure": True}})
    js = await js_factory(srv)
    await js.call("connect", wait=True)
    await js.call("subscribe", channel="secret:anything", wait=True)
    assert await js.call("publish", channel="secret:anything", data={"x": 1}) == {}
    assert (await js.wait("publication", channel="secret:anything"))["data"] == {"x": 1}


async def test_anonymous_connect_needs_opt_in(server_factory: ServerFactory, js_factory: JsFactory) -> None:
    closed = await server_factory()
    js = await js_factory(closed)
    await js.call("connect")
    assert (await js.wait("disconnected"))["code"] == 3501
    srv = await server_factory({
        "client": {"allow_anonymous_connect_without_token": True},
        "channel": {"namespaces": [{"name": "public", "allow_subscribe_for_client": True,
                                    "allow_subscribe_for_anonymous": True}]},
    })
    anon = await js_factory(srv)
    await anon.call("connect", wait=True)
    await anon.call("subscribe", channel="public:news", wait=True)
    await anon.call("subscribe", channel="chat:room")  # chat does not admit anonymous subscribers
    assert (await anon.wait("unsubscribed", channel="chat:room"))["code"] == 103
    with pytest.raises(JsCallError) as info:
        await anon.call("rpc", method="anything", data={})
    assert info.value.code == 108
