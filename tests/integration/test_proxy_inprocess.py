"""In-process proxy handlers: the README's embedding example (examples/embedded.py) served in the test's event
loop and driven by centrifuge-python."""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator
from types import ModuleType

import centrifuge
import pytest
from aiohttp import web
from harness import REPO, PyClient, free_port

EXAMPLE = REPO / "examples" / "embedded.py"


def _load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("embedded_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
async def embedded() -> AsyncIterator[str]:
    port = free_port()
    runner = web.AppRunner(_load_example().make_app(port), shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"ws://127.0.0.1:{port}/connection/websocket"
    await runner.cleanup()


def test_the_readme_shows_the_example() -> None:
    readme = (REPO / "README.md").read_text()
    body = EXAMPLE.read_text().split('"""', 2)[2].strip()
    assert body in readme, "README's in-process handler example must be examples/embedded.py"


async def test_in_process_handlers_decide_every_hook(embedded: str) -> None:
    py = PyClient(embedded, headers={"Authorization": "Bearer ann"})
    try:
        await py.connect()
        assert py.events("connected")[0].ctx.data == {"welcome": "ann"}
        sub = await py.subscribe("chat:lobby")
        await sub.publish({"text": "hello", "extra": "dropped"})
        pub = await py.wait("publication", "chat:lobby")
        assert pub.ctx.pub.data == {"text": "hello", "from": "ann"}
        assert pub.ctx.pub.info.chan_info == {"nick": "Ann"}
        await py.subscribe("chat:bob", wait=False)
        assert (await py.wait("unsubscribed", "chat:bob")).ctx.code == 403
        ticks = await py.subscribe("ticks:clock")
        assert py.events("subscribed", "ticks:clock")[0].ctx.data == {"every": "1s"}
        assert (await py.wait("publication", "ticks:clock")).ctx.pub.data == {"tick": 0, "user": "ann"}
        await ticks.unsubscribe()
        result = await py.client.rpc("whoami", {})
        assert result.data == {"user": "ann", "meta": {"plan": "free"}}
        with pytest.raises(centrifuge.ReplyError) as unknown:
            await py.client.rpc("nope", {})
        assert unknown.value.code == 104
    finally:
        await py.close()
    anonymous = PyClient(embedded)
    try:
        await anonymous.connect(wait=False)
        assert (await anonymous.wait("disconnected")).ctx.code == 4501
    finally:
        await anonymous.close()
