"""Every proxy hook driven through the real SDKs against real backends started by the test: an aiohttp app
(HTTP proxy JSON) and a grpc.aio server (``CentrifugoProxy``), including a backend that is down, slow, answers
5xx or answers garbage."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import aiohttp
import centrifuge
import pytest
from harness import JsFactory, PyFactory, ServerFactory, ServerProcess, unique_channel, wait_until
from jsclient import JsCallError
from proxy_backends import GrpcBackend, HttpBackend, dead_endpoint, self_signed


def proxy_config(http: HttpBackend | None = None, grpc: GrpcBackend | None = None, *, timeout: str = "1s",
                 **extra: Any) -> dict[str, Any]:
    """A Centrifugo v6 config with every hook proxied: connect/refresh/channel hooks to ``http`` (default
    proxies), namespace ``g`` and RPC namespace ``g`` to the named GRPC proxy ``grpc_backend``."""
    cfg: dict[str, Any] = {"prometheus": {"enabled": True}, "client": {"proxy": {}}, "channel": {"proxy": {}},
                           "rpc": {}}
    if http is not None:
        common = {"timeout": timeout, "http_headers": ["X-Test-Auth"], "include_connection_meta": True}
        cfg["client"]["proxy"] = {
            "connect": {"enabled": True, "endpoint": http.endpoint("connect"), **common},
            "refresh": {"enabled": True, "endpoint": http.endpoint("refresh"), **common},
        }
        cfg["channel"]["proxy"] = {hook: {"endpoint": http.endpoint(hook), **common}
                                   for hook in ("subscribe", "publish", "sub_refresh")}
        cfg["rpc"]["proxy"] = {"endpoint": http.endpoint("rpc"), **common}
    namespaces = [] if http is None else [{"name": "px", "subscribe_proxy_enabled": True, "publish_proxy_enabled": True,
                   "sub_refresh_proxy_enabled": True, "presence": True, "history_size": 10, "history_ttl": "60s"}]
    rpc_namespaces: list[dict[str, Any]] = []
    if grpc is not None:
        cfg["proxies"] = [{"name": "grpc_backend", "endpoint": grpc.endpoint, "timeout": timeout,
                           "grpc_metadata": ["x-test-auth"], "include_connection_meta": True}]
        namespaces.append({"name": "gr", "subscribe_proxy_enabled": True, "subscribe_proxy_name": "grpc_backend",
                           "publish_proxy_enabled": True, "publish_proxy_name": "grpc_backend"})
        rpc_namespaces.append({"name": "gr", "proxy_enabled": True, "proxy_name": "grpc_backend"})
    cfg["channel"]["namespaces"] = namespaces
    cfg["rpc"].update({"without_namespace": {"proxy_enabled": http is not None}, "namespaces": rpc_namespaces})
    for key, value in extra.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return cfg


async def metric(server: ServerProcess, metric_name: str, **labels: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(server.http_url + "/metrics") as resp:
        text = await resp.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(metric_name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def connect_ok(user: str, **result: Any) -> Any:
    return lambda body: {"result": {"user": user, **result}}


# --- connect -------------------------------------------------------------------------------------------------

async def test_http_connect_proxy_authenticates_without_token(server_factory: ServerFactory,
                                                               py_factory: PyFactory) -> None:
    async with HttpBackend() as backend:
        feed = unique_channel("chat:")
        backend.answers["connect"] = connect_ok("alice", info={"name": "Alice"}, data={"hello": 1},
                                                channels=[feed], meta={"plan": "pro"})
        srv = await server_factory(proxy_config(backend))
        py = await py_factory(srv, token="", headers={"X-Test-Auth": "cookie-1", "X-Other": "no"},
                              data={"auth": "me"})
        connected = py.events("connected")[0]
        assert connected.ctx.data == {"hello": 1}
        call = backend.of("connect")[0]
        assert call.body["transport"] == "websocket" and call.body["protocol"] == "json"
        assert call.body["encoding"] == "json" and call.body["data"] == {"auth": "me"}
        assert call.body["name"] == "python" and call.body["client"]
        assert call.headers["x-test-auth"] == "cookie-1" and "x-other" not in call.headers
        # The server-side subscription from the result's channels works.
        await py.wait("server_subscribed", feed)
        await srv.api_result("publish", {"channel": feed, "data": {"n": 1}})
        assert (await py.wait("server_publication", feed)).ctx.pub.data == {"n": 1}
        presence = await srv.api_result("presence", {"channel": feed})
        assert [e["user"] for e in presence["presence"].values()] == ["alice"]
        assert [e["conn_info"] for e in presence["presence"].values()] == [{"name": "Alice"}]


async def test_connect_proxy_refusals_reach_the_sdk(server_factory: ServerFactory, py_factory: PyFactory) -> None:
    async with HttpBackend() as backend:
        backend.answers["connect"] = lambda body: {"disconnect": {"code": 4501, "reason": "banned"}}
        srv = await server_factory(proxy_config(backend))
        py = await py_factory(srv, token="", connect=False)
        await py.connect(wait=False)
        event = await py.wait("disconnected")
        assert event.ctx.code == 4501 and event.ctx.reason == "banned"
        backend.answers["connect"] = lambda body: {"error": {"code": 4000, "message": "come back later"}}
        py2 = await py_factory(srv, token="", connect=False)
        await py2.connect(wait=False)
        # A non-temporary connect error ends the SDK's connecting with that code.
        assert (await py2.wait("disconnected")).ctx.code == 4000


@pytest.mark.parametrize("fault", ["down", "slow", "5xx", "garbage"])
async def test_connect_proxy_faults_give_error_100_within_the_timeout(
        server_factory: ServerFactory, js_factory: JsFactory, fault: str) -> None:
    async with HttpBackend() as backend:
        cfg = proxy_config(backend, timeout="300ms")
        if fault == "down":
            cfg["client"]["proxy"]["connect"]["endpoint"] = dead_endpoint()
        else:
            backend.faults["connect"] = fault
        srv = await server_factory(cfg)
        js = await js_factory(srv)
        started = time.monotonic()
        await js.call("connect", token="")
        event = await js.wait("error", timeout=10)
        assert event["error"]["code"] == 100, event  # temporary: the SDK keeps reconnecting
        assert time.monotonic() - started < 5
        outcome = {"down": "unavailable", "slow": "timeout", "5xx": "bad_status", "garbage": "bad_response"}[fault]
        assert await metric(srv, "centrifugo_proxy_call_outcomes_total", type="connect", outcome=outcome) >= 1
        # The loop is not blocked: the server API answers while connects fail.
        assert (await srv.api_result("info"))["nodes"]


async def test_status_to_code_transforms_map_an_http_status(server_factory: ServerFactory,
                                                            py_factory: PyFactory) -> None:
    async with HttpBackend() as backend:
        backend.faults["connect"] = "status:403"
        cfg = proxy_config(backend)
        cfg["client"]["proxy"]["connect"]["http"] = {"status_to_code_transforms": [
            {"status_code": 403, "to_disconnect": {"code": 4503, "reason": "forbidden"}}]}
        srv = await server_factory(cfg)
        py = await py_factory(srv, token="", connect=False)
        await py.connect(wait=False)
        assert (await py.wait("disconnected")).ctx.code == 4503


async def test_token_connections_skip_the_connect_proxy(server_factory: ServerFactory,
                                                        py_factory: PyFactory) -> None:
    async with HttpBackend() as backend:
        srv = await server_factory(proxy_config(backend))
        await py_factory(srv, "bob")
        assert backend.of("connect") == []


async def test_unidirectional_connect_goes_through_the_proxy(server_factory: ServerFactory) -> None:
    async with HttpBackend() as backend:
        backend.answers["connect"] = connect_ok("uni-user")
        srv = await server_factory(proxy_config(backend, uni_http_stream={"enabled": True}))
        async with aiohttp.ClientSession() as s, s.post(srv.http_url + "/connection/uni_http_stream",
                                                       json={"name": "curl"}) as resp:
            first = await resp.content.readline()
        assert b'"connect"' in first and b'"client"' in first
        assert backend.of("connect")[0].body["transport"] == "uni_http_stream"
        assert backend.of("connect")[0].body["name"] == "curl"


async def test_emulated_headers_are_forwarded_only_when_listed(server_factory: ServerFactory,
                                                                js_factory: JsFactory) -> None:
    """centrifuge-js ``headers`` (headers emulation: sent inside the connect command) reach a proxy only for the
    names in its ``emulated_headers``, for the connection's lifetime; a name only in ``http_headers`` is taken
    from the real request alone (Centrifugo v6.9), so a client cannot forge it."""
    async with HttpBackend() as http, GrpcBackend() as grpc:
        http.answers["connect"] = connect_ok("emma")
        cfg = proxy_config(http, grpc)
        cfg["client"]["proxy"]["connect"]["emulated_headers"] = ["X-Emu-Token"]
        cfg["proxies"][0]["emulated_headers"] = ["x-emu-token"]
        srv = await server_factory(cfg)
        js = await js_factory(srv, {"headers": {"X-Emu-Token": "t-1", "X-Test-Auth": "forged", "X-Other": "o"}})
        await js.call("connect", token="", wait=True)
        connect = http.of("connect")[0].headers
        assert connect["x-emu-token"] == "t-1"
        assert "x-test-auth" not in connect and "x-other" not in connect
        # The subscribe proxy lists no emulated header: it gets none.
        await js.call("subscribe", channel=unique_channel("px:"), wait=True)
        assert "x-emu-token" not in http.of("subscribe")[0].headers
        # The named GRPC proxy lists it: it comes as metadata, on a later call of the same connection.
        await js.call("subscribe", channel=unique_channel("gr:"), wait=True)
        metadata = grpc.of("subscribe")[0].headers
        assert metadata["x-emu-token"] == "t-1" and "x-test-auth" not in metadata


# --- refresh ---------------------------------------------------------------------------------------------------

async def test_refresh_proxy_prolongs_and_expires_connections(server_factory: ServerFactory,
                                                              py_factory: PyFactory) -> None:
    async with HttpBackend() as backend:
        backend.answers["connect"] = lambda body: {"result": {"user": "carol", "expire_at": int(time.time()) + 1,
                                                              "meta": {"tier": 1}}}
        backend.answers["refresh"] = lambda body: {"result": {"expire_at": int(time.time()) + 3600,
                                                              "info": {"refreshed": True}}}
        srv = await server_factory(proxy_config(backend))
        py = await py_factory(srv, token="")
        call = await wait_until(lambda: backend.of("refresh"), what="a refresh call")
        assert call[0].body["user"] == "carol" and call[0].body["meta"] == {"tier": 1}
        assert py.events("disconnected") == []
        backend.answers["connect"] = lambda body: {"result": {"user": "dave", "expire_at": int(time.time()) + 1}}
        backend.answers["refresh"] = lambda body: {"result": {"expired": True}}
        py2 = await py_factory(srv, token="")
        # 3005 makes the SDK reconnect (and the backend is asked again).
        event = await py2.wait_event(lambda e: e.kind == "connecting" and e.ctx.code == 3005)
        assert event.ctx.reason == "connection expired"


# --- subscribe, publish, sub_refresh ---------------------------------------------------------------------------

async def test_subscribe_and_publish_proxies(server_factory: ServerFactory, py_factory: PyFactory) -> None:
    async with HttpBackend() as backend:
        backend.answers["connect"] = connect_ok("erin", meta={"m": 1})
        backend.answers["subscribe"] = lambda body: (
            {"error": {"code": 103, "message": "permission denied"}} if body["channel"].endswith("deny")
            else {"result": {"info": {"role": "reader"}, "data": {"welcome": body["channel"]},
                             "override": {"presence": {"value": False}}}})
        backend.answers["publish"] = lambda body: (
            {"error": {"code": 4100, "message": "spam"}} if body["data"].get("spam")
            else {"result": {"data": {"checked": body["data"]}}})
        srv = await server_factory(proxy_config(backend))
        py = await py_factory(srv, token="", headers={"X-Test-Auth": "k"})
        ch = unique_channel("px:")
        await py.subscribe(ch)
        assert py.events("subscribed", ch)[0].ctx.data == {"welcome": ch}
        sub_call = backend.of("subscribe")[0]
        assert sub_call.body["user"] == "erin" and sub_call.body["meta"] == {"m": 1}
        assert sub_call.headers["x-test-auth"] == "k"
        # The override turned presence off for this subscription.
        assert (await srv.api_result("presence", {"channel": ch}))["presence"] == {}
        sub = py.client.get_subscription(ch)
        await sub.publish({"text": "hi"})
        pub = await py.wait("publication", ch)
        assert pub.ctx.pub.data == {"checked": {"text": "hi"}}
        assert pub.ctx.pub.info.chan_info == {"role": "reader"}
        with pytest.raises(centrifuge.ReplyError) as refused:
            await sub.publish({"spam": True})
        assert refused.value.code == 4100
        await py.subscribe(ch + "deny", wait=False)
        assert (await py.wait("unsubscribed", ch + "deny")).ctx.code == 103


@pytest.mark.parametrize("fault", ["down", "slow", "5xx", "garbage"])
async def test_subscribe_and_publish_faults(server_factory: ServerFactory, py_factory: PyFactory,
                                            fault: str) -> None:
    async with HttpBackend() as backend:
        cfg = proxy_config(backend, timeout="300ms")
        cfg["client"]["proxy"] = {}
        if fault == "down":
            cfg["channel"]["proxy"]["subscribe"]["endpoint"] = dead_endpoint()
            cfg["channel"]["proxy"]["publish"]["endpoint"] = dead_endpoint()
        else:
            backend.faults["subscribe"] = backend.faults["publish"] = fault
        srv = await server_factory(cfg)
        py = await py_factory(srv)
        with pytest.raises(centrifuge.ReplyError) as refused:
            await py.client.publish(unique_channel("px:"), {"x": 1})
        assert refused.value.code == 100
        sub = py.new_subscription(unique_channel("px:"))
        await sub.subscribe()
        # Error 100 is temporary: the SDK keeps retrying the subscription instead of giving up.
        await py.wait_event(lambda e: e.kind == "sub_error")
        assert py.events("subscribed") == []
        assert await metric(srv, "centrifugo_proxy_call_outcomes_total", type="publish") >= 1


async def test_a_backend_that_stalls_on_a_kept_alive_connection_gives_error_100(
        server_factory: ServerFactory, py_factory: PyFactory) -> None:
    """The common call reuses a kept-alive connection and is bounded by the pool's one timer (not a timer of its
    own): a backend that answered and then stops answering gives error 100 and a ``timeout`` outcome."""
    async with HttpBackend() as backend:
        cfg = proxy_config(backend, timeout="1s")  # the calls that should succeed get time on a loaded machine
        cfg["client"]["proxy"] = {}
        srv = await server_factory(cfg)
        py = await py_factory(srv)
        channel = unique_channel("px:")
        for i in range(3):  # the connection to the backend opened, then reused
            await py.client.publish(channel, {"n": i})
        backend.faults["publish"] = "slow"
        for _ in range(2):  # and the timer goes on working after it fired once
            with pytest.raises(centrifuge.ReplyError) as refused:
                await py.client.publish(channel, {"x": 1})
            assert refused.value.code == 100
        assert await metric(srv, "centrifugo_proxy_call_outcomes_total", type="publish", outcome="timeout") == 2
        assert await metric(srv, "centrifugo_proxy_call_outcomes_total", type="publish", outcome="ok") == 3
        del backend.faults["publish"]
        await py.client.publish(channel, {"n": 3})  # a new connection replaces the dropped one
        assert [c.body["data"] for c in backend.of("publish")][-1] == {"n": 3}


async def test_sub_refresh_proxy_prolongs_subscriptions(server_factory: ServerFactory,
                                                        py_factory: PyFactory) -> None:
    async with HttpBackend() as backend:
        backend.answers["subscribe"] = lambda body: {"result": {"expire_at": int(time.time()) + 1}}
        backend.answers["sub_refresh"] = lambda body: {"result": {"expire_at": int(time.time()) + 3600}}
        cfg = proxy_config(backend)
        cfg["client"] = {"proxy": {}, "presence_update_interval": "500ms", "expired_sub_close_delay": "0s"}
        srv = await server_factory(cfg)
        py = await py_factory(srv)
        ch = unique_channel("px:")
        await py.subscribe(ch)
        call = await wait_until(lambda: backend.of("sub_refresh"), what="a sub_refresh call")
        assert call[0].body["channel"] == ch and call[0].body["user"] == "py"
        await srv.api_result("publish", {"channel": ch, "data": {"still": "here"}})
        assert (await py.wait("publication", ch)).ctx.pub.data == {"still": "here"}
        assert py.events("unsubscribed", ch) == []


async def test_refresh_and_sub_refresh_faults_keep_connection_and_subscription(server_factory: ServerFactory,
                                                                            py_factory: PyFactory) -> None:
    """As Centrifugo: a refresh or sub_refresh call that fails (here a 500) gives one more minute instead of
    expiring the connection or the subscription (the retry after it is in test_proxy_inprocess_hooks.py)."""
    async with HttpBackend() as backend:
        backend.answers["connect"] = lambda body: {"result": {"user": "frank", "expire_at": int(time.time()) + 1}}
        backend.answers["subscribe"] = lambda body: {"result": {"expire_at": int(time.time()) + 1}}
        backend.faults["refresh"] = backend.faults["sub_refresh"] = "5xx"
        cfg = proxy_config(backend)
        cfg["client"].update({"presence_update_interval": "500ms", "expired_sub_close_delay": "0s"})
        srv = await server_factory(cfg)
        py = await py_factory(srv, token="")
        ch = unique_channel("px:")
        await py.subscribe(ch)

        async def failed(hook: str) -> bool:
            return await metric(srv, "centrifugo_proxy_call_outcomes_total", type=hook, outcome="bad_status") >= 1

        await wait_until(lambda: failed("refresh"), what="a failed refresh call", timeout=15)
        await wait_until(lambda: failed("sub_refresh"), what="a failed sub_refresh call", timeout=15)
        await srv.api_result("publish", {"channel": ch, "data": {"still": "here"}})
        assert (await py.wait("publication", ch)).ctx.pub.data == {"still": "here"}
        assert py.events("disconnected") == [] and py.events("unsubscribed", ch) == []
        assert len(backend.of("refresh")) == 1 and len(backend.of("sub_refresh")) == 1  # next ask in a minute


# --- RPC -------------------------------------------------------------------------------------------------------

async def test_rpc_proxy_per_rpc_namespace(server_factory: ServerFactory, py_factory: PyFactory) -> None:
    async with HttpBackend() as http, GrpcBackend() as grpc_backend:
        http.answers["rpc"] = lambda body: {"result": {"data": {"via": "http", "method": body["method"]}}}
        grpc_backend.answers["rpc"] = lambda body: {"result": {"b64data": "eyJ2aWEiOiJncnBjIn0="}}
        cfg = proxy_config(http, grpc_backend)
        cfg["client"]["proxy"] = {}
        srv = await server_factory(cfg)
        py = await py_factory(srv)
        assert (await py.client.rpc("sum", {"a": 1})).data == {"via": "http", "method": "sum"}
        assert http.of("rpc")[0].body["data"] == {"a": 1}
        assert (await py.client.rpc("gr:sum", {"a": 2})).data == {"via": "grpc"}
        assert grpc_backend.of("rpc")[0].body["method"] == "gr:sum"
        with pytest.raises(centrifuge.ReplyError) as unknown:
            await py.client.rpc("nope:sum", {})
        assert unknown.value.code == 104


# --- GRPC --------------------------------------------------------------------------------------------------------

async def test_grpc_connect_subscribe_publish(server_factory: ServerFactory, py_factory: PyFactory) -> None:
    async with GrpcBackend() as backend:
        backend.answers["connect"] = lambda body: {"result": {"user": "gina", "b64info": "eyJnIjoxfQ=="}}
        backend.answers["subscribe"] = lambda body: {"result": {"b64data": "eyJvayI6dHJ1ZX0="}}
        backend.answers["publish"] = lambda body: {"result": {"b64data": "eyJyZXdyaXR0ZW4iOnRydWV9"}}
        cfg = proxy_config(grpc=backend)
        cfg["client"]["proxy"] = {"connect": {"enabled": True, "endpoint": backend.endpoint,
                                              "grpc_metadata": ["x-test-auth"]}}
        srv = await server_factory(cfg)
        py = await py_factory(srv, token="", headers={"X-Test-Auth": "grpc-cookie"})
        call = backend.of("connect")[0]
        assert call.body["transport"] == "websocket" and call.headers["x-test-auth"] == "grpc-cookie"
        ch = unique_channel("gr:")
        await py.subscribe(ch)
        assert py.events("subscribed", ch)[0].ctx.data == {"ok": True}
        await py.client.get_subscription(ch).publish({"orig": 1})
        pub = await py.wait("publication", ch)
        assert pub.ctx.pub.data == {"rewritten": True} and pub.ctx.pub.info.user == "gina"


@pytest.mark.parametrize("fault", ["down", "slow", "5xx", "garbage"])
async def test_grpc_faults_give_error_100(server_factory: ServerFactory, py_factory: PyFactory,
                                          fault: str) -> None:
    async with GrpcBackend() as backend:
        cfg = proxy_config(grpc=backend, timeout="300ms")
        if fault == "down":
            cfg["proxies"][0]["endpoint"] = dead_endpoint("grpc")
        else:
            backend.faults["publish"] = fault
        srv = await server_factory(cfg)
        py = await py_factory(srv)
        started = time.monotonic()
        with pytest.raises(centrifuge.ReplyError) as refused:
            await py.client.publish(unique_channel("gr:"), {"x": 1})
        assert refused.value.code == 100 and time.monotonic() - started < 5
        assert await metric(srv, "centrifugo_proxy_call_outcomes_total", name="grpc_backend", type="publish") >= 1


async def test_rpc_faults_for_both_protocols(server_factory: ServerFactory, js_factory: JsFactory) -> None:
    """Each fault of an HTTP and of a GRPC backend gives centrifuge-js error 100 for an RPC, within the timeout,
    counted per proxy name and outcome."""
    async with HttpBackend() as http, GrpcBackend() as grpc:
        cfg = proxy_config(http, grpc, timeout="300ms")
        cfg["client"]["proxy"] = {}
        cfg["proxies"] += [{"name": "http_down", "endpoint": dead_endpoint(), "timeout": "300ms"},
                           {"name": "grpc_down", "endpoint": dead_endpoint("grpc"), "timeout": "300ms"}]
        cfg["rpc"]["namespaces"] += [{"name": name, "proxy_enabled": True, "proxy_name": name}
                                     for name in ("http_down", "grpc_down")]
        srv = await server_factory(cfg)
        js = await js_factory(srv)
        await js.call("connect", token=srv.token("rita"), wait=True)
        cases = [("http_down:m", "http_down", "unavailable"), ("grpc_down:m", "grpc_down", "unavailable")]
        # The GRPC backend's "garbage" is an aborted call (DATA_LOSS): a bad status rather than a bad body.
        for fault, outcome, grpc_outcome in (("slow", "timeout", "timeout"), ("5xx", "bad_status", "bad_status"),
                                             ("garbage", "bad_response", "bad_status")):
            cases += [(f"m_{fault}", "default", outcome), (f"gr:m_{fault}", "grpc_backend", grpc_outcome)]
        for method, name, outcome in cases:
            http.faults["rpc"] = grpc.faults["rpc"] = method.rpartition("_")[2]
            started = time.monotonic()
            with pytest.raises(JsCallError) as failed:
                await js.call("rpc", method=method, data={})
            assert failed.value.code == 100, method
            assert time.monotonic() - started < 5, method
            assert await metric(srv, "centrifugo_proxy_call_outcomes_total", name=name, type="rpc",
                                outcome=outcome) >= 1, method


async def test_static_headers_binary_encoding_and_grpc_credentials(server_factory: ServerFactory,
                                                                  py_factory: PyFactory) -> None:
    async with HttpBackend() as http, GrpcBackend() as grpc:
        http.answers["publish"] = lambda body: {"result": {"b64data": body["b64data"]}}  # echoed as it came
        cfg = proxy_config(http, grpc)
        cfg["client"]["proxy"] = {}
        cfg["channel"]["proxy"]["publish"].update(binary_encoding=True,
                                                  http={"static_headers": {"X-Static": "s-1"}})
        cfg["proxies"][0]["grpc"] = {"static_metadata": {"x-env": "test"}, "credentials_key": "authorization",
                                     "credentials_value": "Bearer k"}
        srv = await server_factory(cfg)
        py = await py_factory(srv, headers={"X-Test-Auth": "a-1"})
        ch = unique_channel("px:")
        await py.subscribe(ch)
        await py.client.get_subscription(ch).publish({"bin": 1})
        assert (await py.wait("publication", ch)).ctx.pub.data == {"bin": 1}
        call = http.of("publish")[0]
        assert call.body["encoding"] == "binary" and "data" not in call.body
        assert json.loads(base64.b64decode(call.body["b64data"])) == {"bin": 1}
        # Static headers go with the forwarded ones.
        assert call.headers["x-static"] == "s-1" and call.headers["x-test-auth"] == "a-1"
        await py.client.rpc("gr:m", {})
        metadata = grpc.of("rpc")[0].headers
        assert metadata["x-env"] == "test" and metadata["authorization"] == "Bearer k"
        assert metadata["x-test-auth"] == "a-1"


async def test_every_channel_hook_through_centrifuge_js(server_factory: ServerFactory, js_factory: JsFactory) -> None:
    async with HttpBackend() as backend:
        backend.answers["connect"] = connect_ok("jess", data={"hi": "js"})
        backend.answers["subscribe"] = lambda body: {"result": {"data": {"sub": body["channel"]}}}
        backend.answers["publish"] = lambda body: {"result": {"data": {"js": body["data"]}}}
        backend.answers["rpc"] = lambda body: {"result": {"data": {"sum": body["data"]["a"] + body["data"]["b"]}}}
        srv = await server_factory(proxy_config(backend))
        js = await js_factory(srv)
        await js.call("connect", token="", wait=True)
        assert js.events("connected")[0]["data"] == {"hi": "js"}
        ch = unique_channel("px:")
        await js.call("subscribe", channel=ch, wait=True)
        assert (await js.wait("subscribed", channel=ch))["data"] == {"sub": ch}
        await js.call("publish", channel=ch, data={"n": 1})
        assert (await js.wait("publication", channel=ch))["data"] == {"js": {"n": 1}}
        assert (await js.call("rpc", method="sum", data={"a": 2, "b": 3}))["data"] == {"sum": 5}
        assert backend.of("rpc")[0].body["user"] == "jess"


async def test_tls_to_https_and_grpc_backends(server_factory: ServerFactory, py_factory: PyFactory) -> None:
    cert, key = self_signed()
    async with HttpBackend(tls=(cert, key)) as https, GrpcBackend(tls=(cert, key)) as grpcs:
        https.answers["connect"] = connect_ok("tls-user")
        grpcs.answers["publish"] = lambda body: {"result": {"b64data": "eyJ0bHMiOnRydWV9"}}
        cfg = proxy_config(grpc=grpcs)
        cfg["client"]["proxy"] = {"connect": {"enabled": True, "endpoint": https.endpoint("connect"),
                                              "http": {"tls": {"enabled": True, "server_ca_pem": cert}}}}
        cfg["proxies"][0]["grpc"] = {"tls": {"enabled": True, "server_ca_pem": cert}}
        srv = await server_factory(cfg)
        py = await py_factory(srv, token="")
        ch = unique_channel("gr:")
        await py.subscribe(ch)
        await py.client.get_subscription(ch).publish({"plain": True})
        assert (await py.wait("publication", ch)).ctx.pub.data == {"tls": True}
        assert https.of("connect") and grpcs.of("publish")
        # Without the CA the backend's certificate is refused: the call fails (error 100), it is not sent in clear.
        cfg["client"]["proxy"]["connect"]["http"]["tls"] = {"enabled": True}
        untrusting = await server_factory(cfg)
        js_like = await py_factory(untrusting, token="", connect=False)
        await js_like.connect(wait=False)
        assert (await js_like.wait("error")).ctx.error.code == 100
