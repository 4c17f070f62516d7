"""What every async consumer type must do, written once: the tests of each type supply how to produce
messages into its source and how to tell that the source is drained.

``exactly_once_across_a_killed_node``: two Fugato nodes over Redis consume the same source; an SDK client on
node B subscribes to one channel per partition; producers write ``per_partition`` commands into every
partition (``{"seq": i}`` with an idempotency key); node A is SIGKILLed once a quarter has arrived. Every
channel must then hold exactly ``0..per_partition-1``, in order.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from harness import PyClient, PyFactory, ServerFactory, ServerProcess, unique_channel, wait_until

Produce = Callable[[list[str]], Awaitable[None]]
# For the tests running exactly_once_across_a_killed_node: 10,000 commands on a shared 2-core machine.
SLOW_TEST_TIMEOUT = 300


def publish_command(channel: str, seq: int) -> dict[str, Any]:
    """The API request a producer puts into its source for message ``seq`` of ``channel``."""
    return {"channel": channel, "data": {"seq": seq}, "idempotency_key": f"{channel}-{seq}"}


def redis_engine(redis_url: str, prefix: str) -> dict[str, Any]:
    return {"engine": {"type": "redis", "redis": {"address": [redis_url], "prefix": prefix}},
            "prometheus": {"enabled": True}}


async def subscribed_client(py_factory: PyFactory, server: ServerProcess, channels: list[str]) -> PyClient:
    py = await py_factory(server, "watcher")
    for ch in channels:
        await py.subscribe(ch)
    return py


def seqs(py: PyClient, channel: str) -> list[Any]:
    return [e.ctx.pub.data.get("seq") if isinstance(e.ctx.pub.data, dict) else e.ctx.pub.data
            for e in py.events("publication", channel)]


async def barrier(server: ServerProcess, py: PyClient, channels: list[str]) -> None:
    """Publish a marker into every channel through the API and wait for each: whatever the consumers published
    into a channel before it has then reached the client (a channel's publications arrive in order)."""
    for ch in channels:
        await server.api_result("publish", {"channel": ch, "data": "end"})
    for ch in channels:
        await wait_until(lambda ch=ch: seqs(py, ch)[-1:] == ["end"], timeout=30, what=f"marker in {ch}")


async def health_names(server: ServerProcess, consumer_name: str) -> bool:
    """Whether /health (always 200) lists ``consumer_name`` as failing ("": lists none)."""
    status, _, body = await server.http("GET", "/health")
    assert status == 200
    failing = json.loads(body).get("consumers", {})
    return consumer_name in failing if consumer_name else not failing


async def metric(server: ServerProcess, name: str, label: str = "") -> float:
    """The sum of a Prometheus metric's samples (those whose labels contain ``label``)."""
    status, _, body = await server.http("GET", "/metrics")
    assert status == 200
    total = 0.0
    for line in body.decode().splitlines():
        if (line.startswith(name + "{") or line.startswith(name + " ")) and label in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def exactly_once_across_a_killed_node(
    server_factory: ServerFactory, py_factory: PyFactory, config: Mapping[str, Any], *, partitions: int,
    per_partition: int, produce: Produce, drained: Callable[[], Awaitable[bool]],
    channel_of: Callable[[int], str] | None = None,
) -> None:
    channels = [channel_of(p) if channel_of else unique_channel(f"outbox{p}_") for p in range(partitions)]
    a = await server_factory(config, name="consumer-a")
    b = await server_factory(config, name="consumer-b")
    py = await subscribed_client(py_factory, b, channels)
    total = partitions * per_partition
    producer = asyncio.create_task(produce(channels))
    try:
        await wait_until(lambda: len(py.events("publication")) >= total // 4, timeout=60,
                         what="a quarter delivered before the kill")
        assert await metric(a, "centrifugo_consumers_messages_processed_total") > 0, "node A takes part"
        await a.stop(signal.SIGKILL)
        await producer
    finally:
        if not producer.done():
            producer.cancel()
    await wait_until(lambda: len(py.events("publication")) >= total, timeout=120,
                     what=f"{total} publications delivered")
    await wait_until(drained, timeout=60, what="the source drained")
    await barrier(b, py, channels)
    for ch in channels:
        got = seqs(py, ch)[:-1]
        assert got == list(range(per_partition)), (
            f"{ch}: {len(got)} publications, duplicates or gaps or disorder: first differences "
            f"{[(i, v) for i, v in enumerate(got) if v != i][:5]}")
    assert await metric(b, "centrifugo_consumers_messages_processed_total") > 0
