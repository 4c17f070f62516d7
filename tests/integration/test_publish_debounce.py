"""``client_publish_debounce_interval`` (Centrifugo's namespace option): the subscribe result tells the SDK
``publish_debounce`` (ms), and centrifuge-js then sends the first publish at once and, of the ones that follow
within the interval, only the latest (per channel on a stream subscription, per key on a map one). Checked
with the real SDK in both protocols, on the memory engine and Redis Cluster."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from harness import JsFactory, ServerFactory, ServerProcess, unique_channel, wait_until
from jsclient import JsClient

DEBOUNCE: dict[str, Any] = {
    "channel": {"namespaces": [
        {"name": "cursors", "allow_subscribe_for_client": True, "allow_publish_for_subscriber": True,
         "client_publish_debounce_interval": "3s"},
        {"name": "pointers", "subscription_type": "map", "allow_subscribe_for_client": True,
         "client_publish_debounce_interval": "3s",
         "map": {"mode": "ephemeral", "key_ttl": "60s", "allow_publish_for_subscriber": True}},
        {"name": "chat", "allow_subscribe_for_client": True, "allow_publish_for_subscriber": True},
    ]},
}


@pytest.fixture
async def server(engine_section: dict[str, Any], server_factory: ServerFactory) -> ServerProcess:
    return await server_factory({**DEBOUNCE, **engine_section})


@pytest.fixture(params=["json", "protobuf"])
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def _client(server: ServerProcess, js_factory: JsFactory, user: str, protocol: str = "json") -> JsClient:
    js = await js_factory(server, {"protocol": protocol, "trace": protocol == "json"})
    await js.call("connect", token=server.token(user), wait=True)
    return js


async def _pair(server: ServerProcess, js_factory: JsFactory, protocol: str, channel: str,
                subscribe: str) -> tuple[JsClient, JsClient]:
    """A watcher (JSON) and a publisher (``protocol``), both subscribed to ``channel``."""
    watcher = await _client(server, js_factory, "watcher")
    mover = await _client(server, js_factory, "mover", protocol)
    for js in (watcher, mover):
        await js.call(subscribe, channel=channel, wait=True)
    return watcher, mover


def _value(data: Any) -> Any:
    return json.loads(base64.b64decode(data["__bytes__"])) if isinstance(data, dict) and "__bytes__" in data \
        else data


def _payload(n: int, protocol: str) -> Any:
    return json.dumps({"n": n}) if protocol == "protobuf" else {"n": n}


async def test_stream_publishes_are_debounced_per_channel(server: ServerProcess, js_factory: JsFactory,
                                                          protocol: str) -> None:
    ch = unique_channel("cursors:")
    watcher, mover = await _pair(server, js_factory, protocol, ch, "subscribe")
    if protocol == "json":
        replies = [e["data"] for e in mover.events("frame_in") if '"publish_debounce"' in str(e.get("data"))]
        assert replies and '"publish_debounce":3000' in replies[0]
    for n in range(1, 6):
        await mover.call("publish", channel=ch, data=_payload(n, protocol))
    await wait_until(lambda: any(_value(e["data"]) == {"n": 5} for e in watcher.events("publication")),
                     timeout=15, what="the last publish delivered")
    # The first went at once, the three between were replaced by the last one.
    assert [_value(e["data"])["n"] for e in watcher.events("publication") if e["channel"] == ch] == [1, 5]


async def test_map_publishes_are_debounced_per_key(server: ServerProcess, js_factory: JsFactory,
                                                   protocol: str) -> None:
    ch = unique_channel("pointers:")
    watcher, mover = await _pair(server, js_factory, protocol, ch, "map_subscribe")
    for n in range(1, 5):
        for key in ("a", "b"):
            await mover.call("map_publish", channel=ch, key=key, data=_payload(n, protocol))
    await wait_until(lambda: {e["key"] for e in watcher.events("map_update") if _value(e["data"]) == {"n": 4}}
                     == {"a", "b"}, timeout=15, what="the last publish of each key delivered")
    for key in ("a", "b"):
        assert [_value(e["data"])["n"] for e in watcher.events("map_update") if e["key"] == key] == [1, 4]


async def test_no_debounce_without_the_option(server: ServerProcess, js_factory: JsFactory) -> None:
    ch = unique_channel("chat:")
    watcher, talker = await _pair(server, js_factory, "json", ch, "subscribe")
    assert not any('"publish_debounce"' in str(e.get("data")) for e in talker.events("frame_in"))
    for n in range(1, 4):
        await talker.call("publish", channel=ch, data={"n": n})
    await wait_until(lambda: len([e for e in watcher.events("publication") if e["channel"] == ch]) == 3,
                     what="every publish delivered")
    assert [e["data"]["n"] for e in watcher.events("publication") if e["channel"] == ch] == [1, 2, 3]
