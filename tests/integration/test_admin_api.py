"""The admin endpoints over plain HTTP: login, sessions, what they open and what they don't, the live tail."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
from admin_support import ADMIN_PASSWORD, admin_call, admin_config, admin_login
from aiohttp import web
from harness import REPO, PyFactory, ServerFactory, ServerProcess, free_port, unique_channel, wait_until
from redis_servers import RedisCluster
from test_redis_nodes import redis_engine


async def test_disabled_admin_serves_nothing(server: ServerProcess) -> None:
    for method, path in [("GET", "/"), ("GET", "/admin.js"), ("GET", "/admin/init"), ("POST", "/admin/auth"),
                         ("POST", "/admin/api"), ("GET", "/admin/tail?channel=a")]:
        status, _, _ = await server.http(method, path)
        assert status in (404, 405), (method, path, status)
        assert status == 404 or method == "POST", (method, path, status)


async def test_login_session_and_what_it_opens(server_factory: ServerFactory) -> None:
    server = await server_factory(admin_config())
    status, _, body = await server.http("GET", "/admin/init")
    init = json.loads(body)
    assert (status, init["authenticated"], init["insecure"], init["edition"]) == (200, False, False, "oss")
    assert "publish" in init["methods"]
    status, _, body = await server.http("POST", "/admin/auth", json_body={"password": "wrong"})
    assert status == 400 and b"token" not in body
    token = await admin_login(server)
    _, _, body = await server.http("GET", "/admin/init", headers={"Authorization": f"token {token}"})
    assert json.loads(body)["authenticated"] is True

    # The admin endpoints answer 401 without a session, or with anything but a session token.
    for headers in [{}, {"Authorization": "token nope"}, {"Authorization": f"Bearer {token}"},
                    {"X-API-Key": server.api_key}, {"Authorization": f"apikey {server.api_key}"}]:
        status, _, _ = await server.http("POST", "/admin/api", json_body={"method": "info"}, headers=headers)
        assert status == 401, headers
        status, _, _ = await server.http("GET", "/admin/tail?channel=a", headers=headers)
        assert status == 401, headers
    status, reply = await admin_call(server, token, "info")
    assert status == 200 and len(reply["result"]["nodes"]) == 1
    status, reply = await admin_call(server, token, "publish", {"channel": "chat:x", "data": {"n": 1}})
    assert reply["result"]["offset"] == 1
    status, reply = await admin_call(server, token, "publish", {"channel": "nope:x", "data": {}})
    assert reply["error"]["code"] == 102

    # The session never opens the server API: /api keeps its own key.
    for headers in [{"Authorization": f"token {token}"}, {"X-API-Key": token}, {"Authorization": f"apikey {token}"}]:
        status, _, _ = await server.http("POST", "/api/info", json_body={}, headers=headers)
        assert status == 401, headers
        status, _, _ = await server.http("POST", "/api", json_body={"method": "info"}, headers=headers)
        assert status == 401, headers
    status, _, _ = await server.http("POST", f"/api/info?api_key={token}", json_body={})
    assert status == 401


async def test_login_is_rate_limited(server_factory: ServerFactory) -> None:
    server = await server_factory(admin_config())
    statuses = []
    for _ in range(6):
        status, _, _ = await server.http("POST", "/admin/auth", json_body={"password": "guess"})
        statuses.append(status)
    assert statuses == [400] * 5 + [429]
    # Blocked means blocked: even the right password is not checked until the window passes.
    status, headers, body = await server.http("POST", "/admin/auth", json_body={"password": ADMIN_PASSWORD})
    assert status == 429 and int(headers["Retry-After"]) > 0 and b"token" not in body
    assert "admin login failed" in server.log_text()


async def test_insecure_mode_needs_no_login_and_warns(server_factory: ServerFactory) -> None:
    server = await server_factory({"admin": {"enabled": True, "insecure": True}})
    _, _, body = await server.http("GET", "/admin/init")
    assert json.loads(body)["authenticated"] is True
    status, _, body = await server.http("POST", "/admin/api", json_body={"method": "info", "params": {}})
    assert status == 200 and json.loads(body)["result"]["nodes"]
    assert "NO LOGIN" in server.log_text() and "WARNING" in server.log_text()
    status, _, _ = await server.http("POST", "/api/info", json_body={})
    assert status == 401  # insecure admin, not an insecure API


async def test_handler_prefix_and_internal_port(server_factory: ServerFactory) -> None:
    internal = free_port()
    server = await server_factory(admin_config(handler_prefix="/ops") | {"http_server": {"internal_port": internal}},
                                  start=False)
    server.config_path.parent.mkdir(parents=True, exist_ok=True)
    server.config_path.write_text(json.dumps(server.config))
    log = server.log_path.open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "node", "serve", "--config", str(server.config_path), "--port", str(server.port),
        "--host", "127.0.0.1", cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        async with aiohttp.ClientSession() as session:
            base = f"http://127.0.0.1:{internal}"

            async def get(url: str) -> tuple[int, str, dict[str, str]]:
                try:
                    async with session.get(url, allow_redirects=False) as resp:
                        return resp.status, await resp.text(), dict(resp.headers)
                except aiohttp.ClientConnectionError:
                    return 0, "", {}

            async def healthy() -> bool:
                return (await get(f"{base}/health"))[0] == 200

            await wait_until(healthy, timeout=15)
            # An internal endpoint, as in Centrifugo: on the internal port unless admin.external.
            status, text, headers = await get(f"{base}/ops/")
            assert status == 200 and "Fugato admin" in text
            assert "default-src 'none'" in headers["Content-Security-Policy"]
            status, _, headers = await get(f"{base}/ops")
            assert status == 302 and headers["Location"] == "/ops/"
            assert (await get(f"{base}/"))[0] == 404
            assert (await get(f"{base}/ops/%2e%2e/%2e%2e/etc/passwd"))[0] == 404
            assert (await get(f"{server.http_url}/ops/admin/init"))[0] == 404
    finally:
        proc.terminate()
        await proc.wait()
        log.close()

    external = await server_factory(admin_config(handler_prefix="/ops", external=True) | {
        "http_server": {"internal_port": free_port()}, "health": {"enabled": True}}, name="external", start=False)
    external.config["http_server"].pop("internal_port")  # the harness waits for /health on the main port
    external.config["admin"]["external"] = True
    await external.start()
    status, _, body = await external.http("GET", "/ops/admin.js")
    assert status == 200 and b"use strict" in body


async def test_web_path_serves_another_build(server_factory: ServerFactory, tmp_path: Path) -> None:
    web = tmp_path / "web"
    web.mkdir()
    (web / "index.html").write_text("<p>custom admin</p>")
    server = await server_factory(admin_config(web_path=str(web)))
    status, _, body = await server.http("GET", "/")
    assert status == 200 and body == b"<p>custom admin</p>"
    status, _, _ = await server.http("GET", "/admin.js")
    assert status == 404  # the built-in page is replaced, not merged


async def read_events(response: aiohttp.ClientResponse, count: int) -> list[tuple[str, str]]:
    """The next ``count`` SSE events (kind, data), comments skipped."""
    events: list[tuple[str, str]] = []
    kind, data = "message", ""
    while len(events) < count:
        line = (await asyncio.wait_for(response.content.readline(), 10)).decode().rstrip("\n")
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "" and data:
            events.append((kind, data))
            kind, data = "message", ""
    return events


async def test_live_tail(server_factory: ServerFactory, py_factory: PyFactory) -> None:
    server = await server_factory(admin_config())
    token = await admin_login(server)
    channel = unique_channel("chat:")
    subscriber = await py_factory(server, "alice")
    await subscriber.subscribe(channel)
    async with aiohttp.ClientSession() as session, session.get(
            f"{server.http_url}/admin/tail", params={"channel": channel},
            headers={"Authorization": f"token {token}"}) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
        assert (await read_events(resp, 1))[0][0] == "ready"
        await server.api_result("publish", {"channel": channel, "data": {"n": 1}})
        ((_, first),) = await read_events(resp, 1)
        assert json.loads(first) == {"channel": channel, "epoch": json.loads(first)["epoch"],
                                     "publication": {"data": {"n": 1}, "offset": 1}}
        assert (await subscriber.wait("publication", channel)).ctx.pub.data == {"n": 1}
        # The tail is no client: the node counts one connection, and the channel one subscriber.
        info = (await server.api_result("info"))["nodes"][0]
        assert (info["num_clients"], info["num_subs"]) == (1, 1)
        channels = (await server.api_result("channels"))["channels"]
        assert channels[channel]["num_clients"] == 1
        # A binary payload is not JSON: the tail sends it base64-encoded.
        await server.api_result("publish", {"channel": channel, "b64data": "AAEC"})
        ((_, second),) = await read_events(resp, 1)
        assert json.loads(second)["publication"] == {"b64data": "AAEC", "offset": 2}


async def test_tail_of_a_channel_without_subscribers_and_of_a_bad_channel(server_factory: ServerFactory) -> None:
    server = await server_factory(admin_config())
    token = await admin_login(server)
    channel = unique_channel("plain")
    status, _, _ = await server.http("GET", "/admin/tail", headers={"Authorization": f"token {token}"})
    assert status == 400
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{server.http_url}/admin/tail", params={"channel": channel},
                               headers={"Authorization": f"token {token}"}) as resp:
            assert (await read_events(resp, 1))[0][0] == "ready"
            await server.api_result("publish", {"channel": channel, "data": "text"})
            ((_, data),) = await read_events(resp, 1)
            assert json.loads(data)["publication"]["data"] == "text"

        async def no_channels() -> bool:
            return not (await server.api_result("channels"))["channels"]

        await wait_until(no_channels, what="the tail leaves no channel behind")


async def test_web_proxy_address_takes_the_page_from_a_dev_server(server_factory: ServerFactory) -> None:
    upstream = web.Application()

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=f"dev server: {request.path}", content_type="text/html")

    upstream.router.add_get("/{tail:.*}", page)
    runner = web.AppRunner(upstream)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        server = await server_factory(admin_config(handler_prefix="/admin",
                                                   web_proxy_address=f"http://127.0.0.1:{port}"))
        status, headers, body = await server.http("GET", "/admin/")
        assert (status, body) == (200, b"dev server: /index.html")
        assert headers["Content-Type"].startswith("text/html")
        status, _, body = await server.http("GET", "/admin/static/app.js")
        assert (status, body) == (200, b"dev server: /static/app.js")
        # The admin endpoints are still the server's own.
        status, _, body = await server.http("GET", "/admin/admin/init")
        assert status == 200 and json.loads(body)["authenticated"] is False
    finally:
        await runner.cleanup()
    status, _, _ = await server.http("GET", "/admin/")
    assert status == 502  # the dev server is gone


async def test_admin_without_password_or_secret_logs_nobody_in(server_factory: ServerFactory) -> None:
    server = await server_factory({"admin": {"enabled": True}})
    assert "nobody can log in" in server.log_text()
    status, _, _ = await server.http("POST", "/admin/auth", json_body={"password": ""})
    assert status == 400
    status, _, _ = await server.http("POST", "/admin/api", json_body={"method": "info"},
                                     headers={"Authorization": "token x"})
    assert status == 401


async def test_shutdown_ends_open_tails(server_factory: ServerFactory) -> None:
    server = await server_factory(admin_config() | {"shutdown": {"timeout": "5s"}})
    token = await admin_login(server)
    async with aiohttp.ClientSession() as session, session.get(
            f"{server.http_url}/admin/tail", params={"channel": unique_channel("plain")},
            headers={"Authorization": f"token {token}"}) as resp:
        assert (await read_events(resp, 1))[0][0] == "ready"
        server.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(resp.content.read(), 10) == b""  # the stream ends, not hangs
    assert await server.wait_exit() == 0


async def test_tail_on_one_node_sees_publications_from_another(server_factory: ServerFactory,
                                                               redis_cluster: RedisCluster, redis_prefix: str) -> None:
    config = redis_engine(redis_cluster.url, redis_prefix) | admin_config()
    a = await server_factory(config, name="node-a")
    b = await server_factory(config, name="node-b")
    token = await admin_login(a)
    channel = unique_channel("chat:")
    async with aiohttp.ClientSession() as session, session.get(
            f"{a.http_url}/admin/tail", params={"channel": channel},
            headers={"Authorization": f"token {token}"}) as resp:
        assert (await read_events(resp, 1))[0][0] == "ready"
        await b.api_result("publish", {"channel": channel, "data": {"from": "b"}})
        ((_, data),) = await read_events(resp, 1)
        assert json.loads(data)["publication"] == {"data": {"from": "b"}, "offset": 1}
    # The session token of one node opens the others (same admin.secret): any node behind a balancer serves it.
    async def b_sees_both() -> bool:
        status, reply = await admin_call(b, token, "info")
        assert status == 200
        return len(reply["result"]["nodes"]) == 2

    await wait_until(b_sees_both, timeout=15)
