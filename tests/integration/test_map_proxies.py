"""Map publish / remove proxies (``map.publish_proxy_enabled`` / ``map.remove_proxy_enabled``) with a real HTTP
or GRPC backend and the real centrifuge-js SDK, on the memory engine and Redis Cluster: the backend is asked
about each client map write and decides it (allow with a replaced key, data and tags; refuse with its error;
disconnect the client) instead of the namespace's ``map.allow_*`` options; a backend that is down is 100."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from harness import JsFactory, ServerFactory, unique_channel
from jsclient import JsCallError
from proxy_backends import GrpcBackend, HttpBackend, dead_endpoint


@pytest.fixture(params=["http", "grpc"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[HttpBackend | GrpcBackend]:
    async with (HttpBackend() if request.param == "http" else GrpcBackend()) as b:
        yield b


def _endpoints(backend: HttpBackend | GrpcBackend) -> tuple[str, str]:
    if isinstance(backend, HttpBackend):
        return backend.endpoint("map_publish"), backend.endpoint("map_remove")
    return backend.endpoint, backend.endpoint


def _config(backend: HttpBackend | GrpcBackend, engine: dict[str, Any], *,
            publish_endpoint: str = "") -> dict[str, Any]:
    publish, remove = _endpoints(backend)
    return {**engine,
            "proxies": [{"name": "writes", "endpoint": publish_endpoint or publish, "timeout": "2s"},
                        {"name": "removals", "endpoint": remove, "timeout": "2s"}],
            "channel": {"namespaces": [
                {"name": "game", "subscription_type": "map", "allow_subscribe_for_client": True,
                 "map": {"mode": "persistent", "publish_proxy_enabled": True, "publish_proxy_name": "writes",
                         "remove_proxy_enabled": True, "remove_proxy_name": "removals"}},
            ]}}


def _decide(grpc: bool) -> Any:
    def answer(body: dict[str, Any]) -> dict[str, Any]:
        if body.get("key") == "deny":
            return {"error": {"code": 4000, "message": "not your slot"}}
        if body.get("key") == "kick":
            return {"disconnect": {"code": 4500, "reason": "cheater"}}
        data = json.dumps({"by": body.get("user"), "slot": body.get("key")}).encode()
        return {"result": {"key": f"u-{body.get('user')}", "tags": {"src": "proxy"},
                           "data": base64.b64encode(data).decode() if grpc else json.loads(data)}}
    return answer


async def test_the_backend_decides_client_map_writes(backend: HttpBackend | GrpcBackend,
                                                     engine_section: dict[str, Any], server_factory: ServerFactory,
                                                     js_factory: JsFactory) -> None:
    grpc = isinstance(backend, GrpcBackend)
    backend.answers["map_publish"] = _decide(grpc)
    server = await server_factory(_config(backend, engine_section))
    ch = unique_channel("game:")
    watcher = await js_factory(server)
    await watcher.call("connect", token=server.token("watcher"), wait=True)
    await watcher.call("map_subscribe", channel=ch, wait=True)
    alice = await js_factory(server)
    alice_id = (await alice.call("connect", token=server.token("alice"), wait=True))["client"]

    # map.allow_* grant nothing here: the backend allows, and replaces the key, the data and the tags.
    await alice.call("map_publish", channel=ch, key="slot1", data={"x": 1}, via="client")
    update = await watcher.wait("map_update", channel=ch, key="u-alice")
    assert update["data"] == {"by": "alice", "slot": "slot1"} and update["tags"] == {"src": "proxy"}
    call = backend.of("map_publish")[0].body
    assert (call["channel"], call["key"], call["user"], call["client"]) == (ch, "slot1", "alice", alice_id)
    sent = base64.b64decode(call["data"]) if grpc else call["data"]
    assert json.loads(sent) == {"x": 1} if grpc else sent == {"x": 1}

    # A removal goes to the remove proxy, which approves the client's key and stamps the removal's tags.
    backend.answers["map_remove"] = lambda body: {"result": {"tags": {"src": "proxy-remove"}}}
    await alice.call("map_remove", channel=ch, key="u-alice", via="client")
    removal = await watcher.wait("map_update", channel=ch, key="u-alice", removed=True)
    assert removal["tags"] == {"src": "proxy-remove"}
    assert [c.body["key"] for c in backend.of("map_remove")] == ["u-alice"]

    # The backend's error reaches the client as it is; its disconnect closes the connection.
    with pytest.raises(JsCallError) as refused:
        await alice.call("map_publish", channel=ch, key="deny", data={}, via="client")
    assert refused.value.code == 4000
    with pytest.raises(JsCallError):  # the SDK fails the pending call as the connection closes
        await alice.call("map_publish", channel=ch, key="kick", data={}, via="client")
    assert (await alice.wait("disconnected"))["code"] == 4500
    assert (await server.api_result("map_stats", {"channel": ch}))["num_keys"] == 0


async def test_a_backend_that_is_down_is_an_internal_error(server_factory: ServerFactory,
                                                           js_factory: JsFactory) -> None:
    async with HttpBackend() as backend:
        server = await server_factory(_config(backend, {}, publish_endpoint=dead_endpoint("http")))
        ch = unique_channel("game:")
        js = await js_factory(server)
        await js.call("connect", token=server.token("alice"), wait=True)
        with pytest.raises(JsCallError) as failed:
            await js.call("map_publish", channel=ch, key="k", data={}, via="client")
        assert failed.value.code == 100
        assert (await server.api_result("map_stats", {"channel": ch}))["num_keys"] == 0
