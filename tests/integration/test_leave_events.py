"""Reliable disconnect and unsubscribe events (``fugato.leave_events``) to a real aiohttp backend: every way a
client leaves (close, unsubscribe, server unsubscribe, ping timeout, node shutdown, worker crash noticed by a
peer through the Redis engine), batching, retries with backoff, the idempotency keys."""

from __future__ import annotations

import signal
from typing import Any

import aiohttp
from aiohttp import web
from harness import PyFactory, ServerFactory, ServerProcess, free_port, unique_channel, wait_until
from redis_servers import RedisStandalone


class EventsBackend:
    """POST /events: records each batch; the first ``fail`` requests are answered 503."""

    def __init__(self, fail: int = 0) -> None:
        self.port = free_port()
        self.batches: list[list[dict[str, Any]]] = []
        self.fail = fail
        self.requests = 0
        self._runner: web.AppRunner | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/events"

    @property
    def events(self) -> list[dict[str, Any]]:
        return [e for batch in self.batches for e in batch]

    def of(self, kind: str, client: str = "") -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind and (not client or e["client"] == client)]

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.json()
        if self.requests <= self.fail:
            return web.Response(status=503)
        self.batches.append(body["events"])
        return web.json_response({})

    async def __aenter__(self) -> EventsBackend:
        app = web.Application()
        app.router.add_post("/events", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def leave_config(backend: EventsBackend, **leave: Any) -> dict[str, Any]:
    return {"prometheus": {"enabled": True},
            "fugato": {"leave_events": {"enabled": True, "endpoint": backend.endpoint, "batch_interval": "50ms",
                                        "max_retry_interval": "200ms", **leave}}}


async def test_close_unsubscribe_and_server_unsubscribe_are_reported(server_factory: ServerFactory,
                                                                     py_factory: PyFactory) -> None:
    async with EventsBackend(fail=2) as backend:
        srv = await server_factory(leave_config(backend))
        py = await py_factory(srv, "ann")
        client_id = py.events("connected")[0].ctx.client
        a, b, c = unique_channel(), unique_channel(), unique_channel()
        for ch in (a, b, c):
            await py.subscribe(ch)
        await py.client.get_subscription(a).unsubscribe()
        await srv.api_result("unsubscribe", {"user": "ann", "channel": b})
        await wait_until(lambda: len(backend.of("unsubscribe", client_id)) == 2, what="two unsubscribe events")
        await py.close()
        await wait_until(lambda: backend.of("disconnect", client_id), what="the disconnect event")
        unsubs = {e["channel"]: e for e in backend.of("unsubscribe", client_id)}
        assert (unsubs[a]["code"], unsubs[b]["code"], unsubs[c]["code"]) == (0, 2000, 1)
        assert unsubs[a]["id"] == f"unsubscribe:{client_id}:{a}:1"
        disconnect = backend.of("disconnect", client_id)[0]
        assert disconnect["id"] == f"disconnect:{client_id}" and disconnect["user"] == "ann"
        assert disconnect["code"] == 3000  # the client closed
        # The backend failed twice: retried until delivered, and every event arrived (at least once).
        assert backend.requests >= 3
        assert len({e["id"] for e in backend.events}) == 4


async def test_ping_timeout_is_reported(server_factory: ServerFactory) -> None:
    async with EventsBackend() as backend:
        cfg = leave_config(backend)
        cfg["client"] = {"ping_interval": "1s", "pong_timeout": "500ms"}
        srv = await server_factory(cfg)
        async with aiohttp.ClientSession() as s, s.ws_connect(srv.ws_url) as ws:
            await ws.send_json({"id": 1, "connect": {"token": srv.token("silent")}})
            reply = await ws.receive_json()
            client_id = reply["connect"]["client"]
            async for _ in ws:  # never answers the server's pings
                pass
        await wait_until(lambda: backend.of("disconnect", client_id), what="the disconnect event")
        assert backend.of("disconnect", client_id)[0]["code"] == 3012


async def test_node_shutdown_is_reported_before_exit(server_factory: ServerFactory, py_factory: PyFactory) -> None:
    async with EventsBackend() as backend:
        srv = await server_factory(leave_config(backend))
        clients = [await py_factory(srv, f"u{i}") for i in range(5)]
        ids = {c.events("connected")[0].ctx.client for c in clients}
        await srv.stop(signal.SIGTERM)
        # Delivered by the node itself while shutting down, in batches (not a request per event).
        assert {e["client"] for e in backend.of("disconnect")} == ids
        assert {e["code"] for e in backend.of("disconnect")} == {3001}
        assert len(backend.batches) < 5


async def test_a_crashed_node_is_reported_by_its_peer(server_factory: ServerFactory, py_factory: PyFactory,
                                                      redis_standalone: RedisStandalone, redis_prefix: str) -> None:
    async with EventsBackend() as backend:
        engine = {"engine": {"type": "redis", "redis": {"address": [redis_standalone.url], "prefix": redis_prefix}}}
        cfg = {**leave_config(backend), **engine}
        doomed = await server_factory(cfg)
        await server_factory(cfg)  # the peer that notices
        py = await py_factory(doomed, "victim", max_reconnect_delay=60.0, min_reconnect_delay=60.0)
        client_id = py.events("connected")[0].ctx.client
        ch = unique_channel()
        await py.subscribe(ch)
        # The connection record is in the engine (presence of the node's records channel) before the crash.
        node_id = (await doomed.api_result("info"))["nodes"][0]["uid"]
        await wait_until(lambda: _has_record(doomed, node_id, client_id, ch), what="the connection record")
        await doomed.stop(signal.SIGKILL)
        events = await wait_until(lambda: backend.of("disconnect", client_id), timeout=30,
                                  what="the disconnect event sent by the peer")
        assert events[0]["reason"] == "node lost" and events[0]["id"] == f"disconnect:{client_id}"
        unsub = backend.of("unsubscribe", client_id)
        assert [e["channel"] for e in unsub] == [ch] and unsub[0]["id"] == f"unsubscribe:{client_id}:{ch}:1"


async def _has_record(server: ServerProcess, node_id: str, client_id: str, channel: str) -> bool:
    presence = await server.api_result("presence", {"channel": f"__fugato.connections.{node_id}"})
    entry = presence["presence"].get(client_id)
    return entry is not None and channel in entry.get("chan_info", {}).get("channels", {})
