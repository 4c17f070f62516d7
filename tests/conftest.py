"""Shared fixtures. They only wire up what ``harness.py`` and ``jsclient.py`` implement.

* ``server_factory``: ``await server_factory(config_override=None, *, base=True, name=None, start=True, **kw)``
  starts a ``ServerProcess`` (config merged over ``harness.BASE_CONFIG``); all are stopped at teardown.
* ``server``: one server with the base config.
* ``module_server``: one base-config server shared by a test module (started without an event loop);
  use ``unique_channel()`` so tests don't see each other's traffic.
* ``js_factory`` / ``js_client``: centrifuge-js drivers (``JsClient``), closed at teardown.
* ``py_factory`` / ``py_client``: centrifuge-python clients (``PyClient``), disconnected at teardown.
* ``cent_client``: a ``cent.AsyncClient`` for ``server``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import cent
import pytest
from harness import JsFactory, PyClient, PyFactory, ServerFactory, ServerProcess
from jsclient import JsClient


@pytest.fixture
async def server_factory(tmp_path: Path) -> AsyncIterator[ServerFactory]:
    factory = ServerFactory(lambda name: tmp_path / name)
    yield factory
    await factory.close()


@pytest.fixture
async def server(server_factory: ServerFactory) -> ServerProcess:
    return await server_factory()


@pytest.fixture(scope="module")
def module_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    factory = ServerFactory(tmp_path_factory.mktemp)
    yield factory.start_sync()
    factory.close_sync()


@pytest.fixture
async def js_factory() -> AsyncIterator[JsFactory]:
    clients: list[JsClient] = []

    async def make(server: ServerProcess, options: Mapping[str, Any] | None = None, name: str = "") -> JsClient:
        client = JsClient(server.ws_url, options, name=name or f"js{len(clients)}")
        clients.append(client)
        return await client.start()

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def js_client(server: ServerProcess, js_factory: JsFactory) -> JsClient:
    """A started (not yet connected) centrifuge-js driver for ``server``."""
    return await js_factory(server)


@pytest.fixture
async def py_factory() -> AsyncIterator[PyFactory]:
    clients: list[PyClient] = []

    async def make(
        server: ServerProcess, user: str = "py", *, token: str | None = None, connect: bool = True, **kwargs: Any
    ) -> PyClient:
        """A centrifuge-python client for ``user`` (token minted unless given), connected unless ``connect``
        is false; ``kwargs`` go to ``centrifuge.Client``."""
        client = PyClient(server.ws_url, server.token(user) if token is None else token,
                          name=f"py{len(clients)}", **kwargs)
        clients.append(client)
        return await client.connect() if connect else client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def py_client(server: ServerProcess, py_factory: PyFactory) -> PyClient:
    """A connected centrifuge-python client of user "py" on ``server``."""
    return await py_factory(server)


@pytest.fixture
async def cent_client(server: ServerProcess) -> AsyncIterator[cent.AsyncClient]:
    async with server.cent() as client:
        yield client
