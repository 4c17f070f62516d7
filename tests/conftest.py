"""Shared fixtures. They only wire up what ``harness.py`` and ``jsclient.py`` implement.

* ``server_factory``: ``await server_factory(config_override=None, *, base=True, name=None, start=True, **kw)``
  starts a ``ServerProcess`` (config merged over ``harness.BASE_CONFIG``); all are stopped at teardown.
* ``server``: one server with the base config.
* ``module_server``: one base-config server shared by a test module (started without an event loop);
  use ``unique_channel()`` so tests don't see each other's traffic.
* ``js_factory`` / ``js_client``: centrifuge-js drivers (``JsClient``), closed at teardown.
* ``py_factory`` / ``py_client``: centrifuge-python clients (``PyClient``), disconnected at teardown.
* ``cent_client``: a ``cent.AsyncClient`` for ``server``.

Real Redis servers (``redis_servers.py``; need ``redis-server``/``redis-cli`` >= 7 on PATH), started on first use
on free loopback ports and stopped at the end of the session:

* ``redis_standalone``: one ``RedisStandalone`` (``.url``, ``.address``, ``.port``).
* ``redis_shards``: two more ``RedisStandalone``, for a 2-shard setup.
* ``redis_cluster``: a shared 6-node ``RedisCluster`` (3 masters + 3 replicas); don't kill or reconfigure it.
* ``redis_cluster_factory``: ``redis_cluster_factory(**kw)`` starts a private ``RedisCluster`` for destructive
  tests (failover), stopped at test teardown.
* ``pg_prefix``: a fresh table prefix for a PostgreSQL map broker on the local server, dropped afterwards.
* ``redis_prefix``: a unique key/channel prefix per test (``"fgt" + 8 hex``) so tests sharing a server don't
  collide.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import cent
import pytest
from harness import LEAK_MARKERS, JsFactory, PyClient, PyFactory, ServerFactory, ServerProcess
from jsclient import JsClient
from postgres_server import LOCAL_PG, drop_pg_schema
from redis_servers import RedisCluster, RedisClusterFactory, RedisStandalone


class _LeakReports(logging.Handler):
    """asyncio's reports of tasks destroyed while pending and of unclosed transports and sessions."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.found: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if any(m in message for m in LEAK_MARKERS):
            self.found.append(message.splitlines()[0])


@pytest.fixture(autouse=True)
def no_leaked_tasks() -> Iterator[None]:
    """Fails a test that leaves a task pending or a resource open. Autouse, so it is torn down after the test's
    event loop; the garbage collection here finalises what the test dropped, while its reports still count.
    (Unclosed sockets and files raise ResourceWarning, which filterwarnings = error already fails.)"""
    reports = _LeakReports()
    asyncio_logger = logging.getLogger("asyncio")
    asyncio_logger.addHandler(reports)
    try:
        yield
        gc.collect()
    finally:
        asyncio_logger.removeHandler(reports)
    if reports.found:
        pytest.fail("left behind: " + "; ".join(reports.found[:5]), pytrace=False)


@pytest.fixture
async def server_factory(tmp_path: Path) -> AsyncIterator[ServerFactory]:
    factory = ServerFactory(lambda name: tmp_path / name)
    yield factory
    await factory.close()


@pytest.fixture(params=["json", "protobuf"])
def sdk_protocol(request: pytest.FixtureRequest) -> str:
    """Each of centrifuge-js's protocols in turn (a test module may still define its own ``protocol``)."""
    return str(request.param)


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


@pytest.fixture(scope="session")
def redis_standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisStandalone]:
    server = RedisStandalone(tmp_path_factory.mktemp("redis-standalone")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_shards(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisStandalone, RedisStandalone]]:
    with contextlib.ExitStack() as stack:
        shards = tuple(stack.enter_context(RedisStandalone(tmp_path_factory.mktemp(f"redis-shard{i}")))
                       for i in range(2))
        yield shards[0], shards[1]


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_cluster_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterFactory]:
    clusters: list[RedisCluster] = []

    def make(*, ports: list[int] | None = None, replicas: int = 1, node_timeout_ms: int = 2000) -> RedisCluster:
        cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster-private"), ports, replicas, node_timeout_ms)
        clusters.append(cluster)
        return cluster.start()

    yield make
    for cluster in clusters:
        cluster.stop()


@pytest.fixture
def pg_prefix() -> Iterator[str]:
    """Tables of a PostgreSQL map broker on the local server under a fresh prefix, dropped after the servers
    using them stopped (fixtures that take it before ``server_factory`` are torn down after it)."""
    prefix = "fgt" + uuid.uuid4().hex[:10]
    yield prefix
    drop_pg_schema(LOCAL_PG, prefix)


@pytest.fixture
def redis_prefix() -> str:
    return "fgt" + uuid.uuid4().hex[:8]


@pytest.fixture(params=["memory", "redis_cluster"])
def engine_section(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The config section of a test's engine, once per engine: memory (nothing to add), then Redis Cluster."""
    if request.param == "memory":
        return {}
    return {"engine": {"type": "redis", "redis": {"address": [request.getfixturevalue("redis_cluster").url],
                                                  "prefix": request.getfixturevalue("redis_prefix")}}}


@pytest.fixture
def cluster_section(redis_cluster: RedisCluster, redis_prefix: str) -> dict[str, Any]:
    """The config section of nodes sharing one Redis Cluster."""
    return {"engine": {"type": "redis", "redis": {"address": [redis_cluster.url], "prefix": redis_prefix}}}
