"""The image built from the Dockerfile and started with the README's `docker run` line (by podman): health,
a JWT client and an API publication, uid 1000 everywhere, a read-only root, one worker per CPU of `--cpus` with
Redis, and a graceful stop (3001 to clients, exit 0 before the stop timeout's SIGKILL)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import cent
import jwt
import pytest
from container_support import Container, podman, readme_command, run_flags, sh
from harness import PyClient, PyEvent, free_port, wait_until

# A cold run debootstraps the base image and builds everything first (a few minutes); warm, nothing is built.
pytestmark = pytest.mark.timeout(900)


class RunLine:
    """The README's `docker run` line, turned into this machine's `podman run` with a host port of our own."""

    def __init__(self) -> None:
        self.argv = readme_command("Container", "docker run")
        build = readme_command("Container", "docker build")
        self.image = build[build.index("-t") + 1]
        assert self.argv[-1] == self.image, "the run line starts the image the build line builds"
        assert self.argv[:2] == ["docker", "run"]
        self.env = dict(self.argv[i + 1].split("=", 1) for i, a in enumerate(self.argv) if a == "-e")
        self.port = int(self.argv[self.argv.index("-p") + 1].split(":")[-1])

    def podman(self, image: str, name: str, host_port: int, extra: list[str] | None = None) -> list[str]:
        args = list(self.argv[2:-1])
        published = args.index("-p") + 1
        args[published] = f"127.0.0.1:{host_port}:{self.port}"  # never the shared default port
        return [*podman(), "run", *run_flags(), "--name", name, *args, *(extra or []), image]

    def token(self, user: str, **claims: object) -> str:
        return jwt.encode({"sub": user, **claims}, self.env["FUGATO_CLIENT_TOKEN_HMAC_SECRET_KEY"], "HS256")

    def cent(self, host_port: int) -> cent.AsyncClient:
        return cent.AsyncClient(f"http://127.0.0.1:{host_port}/api", self.env["FUGATO_HTTP_API_KEY"], timeout=10)


@pytest.fixture(scope="module")
def line() -> RunLine:
    return RunLine()


@pytest.fixture
def containers(tmp_path: Path) -> Iterator[list[Container]]:
    started: list[Container] = []
    yield started
    for container in reversed(started):
        container.remove()


def start(containers: list[Container], tmp_path: Path, argv: list[str], name: str) -> Container:
    container = Container(argv, name, tmp_path / f"{name}.log")
    containers.append(container)
    return container


async def healthy(container: Container, port: int) -> None:
    async def ok() -> bool:
        assert container.proc.poll() is None, f"the container exited\n{container.log()}"
        try:
            async with aiohttp.ClientSession() as session, \
                    session.get(f"http://127.0.0.1:{port}/health", timeout=aiohttp.ClientTimeout(total=2)) as r:
                return r.status == 200
        except aiohttp.ClientError:
            return False
    await wait_until(ok, timeout=90, interval=0.2, what="GET /health answers 200")


async def stop_and_expect_3001(container: Container, client: PyClient) -> int:
    """`podman stop` (SIGTERM; SIGKILL after the run line's --stop-timeout): the client is told 3001, the
    container's exit code is returned."""
    stopping = asyncio.create_task(asyncio.to_thread(container.stop))
    event = await client.wait_event(lambda e: e.kind in ("connecting", "disconnected") and e.ctx.code != 0,
                                    timeout=60)
    assert (event.ctx.code, event.ctx.reason) == (3001, "shutdown"), client.describe()
    stopped = await stopping
    assert stopped.returncode == 0, stopped.stderr
    return await asyncio.to_thread(container.wait, 60)


async def test_the_readme_run_line(image: str, line: RunLine, containers: list[Container], tmp_path: Path) -> None:
    port = free_port()
    name = f"fugato-test-{uuid.uuid4().hex[:8]}"
    container = start(containers, tmp_path, line.podman(image, name, port), name)
    await healthy(container, port)

    healthcheck = sh([*podman(), "healthcheck", "run", name], check=False)
    assert healthcheck.returncode == 0, f"the image's HEALTHCHECK fails: {healthcheck.stdout}{healthcheck.stderr}"

    processes = container.processes()
    assert any("fugato serve" in cmd for _, cmd in processes.values()), processes
    assert {uid for uid, _ in processes.values()} == {1000}, processes

    for path in ("/probe", "/run/probe", "/etc/fugato/probe"):
        touched = container.exec("touch", path)
        assert touched.returncode != 0 and "Read-only file system" in touched.stderr, (path, touched)
    assert container.exec("touch", "/tmp/probe").returncode == 0

    # A real SDK with a JWT whose `channels` claim subscribes it server-side (the image's config is `{}`).
    client = PyClient(f"ws://127.0.0.1:{port}/connection/websocket", line.token("alice", channels=["news"]))
    try:
        await client.connect()
        connected = client.events("connected")[0].ctx
        assert connected.client
        await client.wait("server_subscribed", "news")
        async with line.cent(port) as api:
            await api.publish(cent.PublishRequest(channel="news", data={"text": "from the API"}))
        publication: PyEvent = await client.wait("server_publication", "news")
        assert publication.ctx.pub.data == {"text": "from the API"}

        assert await stop_and_expect_3001(container, client) == 0, container.log()
    finally:
        await client.close()


@pytest.fixture
async def redis_network(redis_image: str, containers: list[Container], tmp_path: Path) -> AsyncIterator[str]:
    """A podman network with a Redis container named ``redis`` on it; yields the network's name."""
    network = f"fugato-test-{uuid.uuid4().hex[:8]}"
    sh([*podman(), "network", "create", network])
    try:
        name = f"{network}-redis"
        redis = start(containers, tmp_path, [*podman(), "run", *run_flags(), "--rm", "--name", name,
                                             "--network", network, "--network-alias", "redis", redis_image], name)

        def pong() -> bool:
            assert redis.proc.poll() is None, redis.log()
            return redis.exec("redis-cli", "ping").stdout.strip() == "PONG"
        await wait_until(pong, timeout=60, interval=0.2, what="redis-server answers PING")
        yield network
    finally:
        for container in containers:
            container.remove()
        sh([*podman(), "network", "rm", "--force", network], check=False)


async def test_cpus_2_with_the_redis_engine_runs_two_workers(
    image: str, line: RunLine, redis_network: str, containers: list[Container], tmp_path: Path
) -> None:
    port = free_port()
    name = f"{redis_network}-fugato"
    extra = ["--cpus", "2", "--network", redis_network,
             "-e", "FUGATO_ENGINE_TYPE=redis", "-e", "FUGATO_ENGINE_REDIS_ADDRESS=redis://redis:6379"]
    container = start(containers, tmp_path, line.podman(image, name, port, extra), name)
    await healthy(container, port)

    async def nodes() -> list[dict[str, object]]:
        async with aiohttp.ClientSession() as session, session.post(
                f"http://127.0.0.1:{port}/api/info", data=b"{}",
                headers={"X-API-Key": line.env["FUGATO_HTTP_API_KEY"]}) as r:
            found: list[dict[str, object]] = (await r.json())["result"]["nodes"]
            return found if len(found) == 2 else []
    await wait_until(nodes, timeout=60, interval=0.3, what="two workers registered as nodes over Redis")
    workers = [cmd for uid, cmd in container.processes().values() if "--worker-index" in cmd]
    assert len(workers) == 2, container.processes()

    client = PyClient(f"ws://127.0.0.1:{port}/connection/websocket", line.token("bob", channels=["news"]))
    try:
        await client.connect()
        await client.wait("server_subscribed", "news")
        assert await stop_and_expect_3001(container, client) == 0, container.log()
    finally:
        await client.close()


def test_the_image_declares_its_healthcheck_and_user(image: str) -> None:
    inspected = json.loads(sh([*podman(), "image", "inspect", image]).stdout)[0]
    health = inspected.get("Healthcheck") or {}
    assert health.get("Test", [])[:4] == ["CMD", "python", "-m", "node.healthcheck"], inspected
    assert inspected["Config"]["User"] == "1000:1000"
