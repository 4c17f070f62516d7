"""The NATS JetStream consumer against a real ``nats-server -js`` started by the test on a free loopback port."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from consumer_scenarios import (
    SLOW_TEST_TIMEOUT,
    barrier,
    exactly_once_across_a_killed_node,
    health_names,
    metric,
    publish_command,
    redis_engine,
    seqs,
    subscribed_client,
)
from harness import PyFactory, ServerFactory, unique_channel, wait_until
from nats.aio.client import Client as NatsClient
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType
from nats_servers import NatsServer
from redis_servers import RedisStandalone


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NatsClient]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


async def make_stream(nc: NatsClient, subjects: list[str]) -> str:
    """The application creates the stream (Centrifugo never does), on disk."""
    name = "cmds_" + uuid.uuid4().hex[:8]
    await nc.jetstream().add_stream(name=name, subjects=subjects, storage=StorageType.FILE)
    return name


def consumer(name: str, url: str, stream: str, durable: str, **options: Any) -> dict[str, Any]:
    """One consumer in Centrifugo v6's keys."""
    return {"enabled": True, "name": name, "type": "nats_jetstream",
            "nats_jetstream": {"url": url, "stream_name": stream, "durable_consumer_name": durable, **options}}


@pytest.mark.timeout(SLOW_TEST_TIMEOUT)
async def test_messages_reach_clients_exactly_once_in_order_across_a_killed_node(
        server_factory: ServerFactory, py_factory: PyFactory, nats_server: NatsServer, nc: NatsClient,
        redis_standalone: RedisStandalone, redis_prefix: str) -> None:
    partitions, per_partition, per_batch = 4, 2500, 50
    subjects = [f"{redis_prefix}.p{p}" for p in range(partitions)]
    stream = await make_stream(nc, subjects)
    js = nc.jetstream()
    # One durable consumer per partition subject, made by the application with max_ack_pending 1 (the server
    # hands out one message at a time: the subject's order holds across nodes) and a short ack wait (the
    # killed node's message comes back soon); Fugato binds to them with use_existing_consumer.
    for p, subject in enumerate(subjects):
        await js.add_consumer(stream, ConsumerConfig(
            durable_name=f"part{p}", ack_policy=AckPolicy.EXPLICIT, ack_wait=2, max_ack_pending=1,
            deliver_policy=DeliverPolicy.ALL, filter_subject=subject))
    config = {**redis_engine(redis_standalone.url, redis_prefix),
              "consumers": [consumer(f"part{p}", nats_server.url, stream, f"part{p}", use_existing_consumer=True)
                            for p in range(partitions)]}

    async def writer(subject: str, channel: str) -> None:  # one writer per subject, acknowledged batches
        for start in range(0, per_partition, per_batch):
            acks = [await js.publish(subject, json.dumps(publish_command(channel, seq)).encode(),
                                     headers={"centrifugo-method": "publish"})
                    for seq in range(start, start + per_batch)]
            assert acks[-1].stream == stream

    async def produce(channels: list[str]) -> None:
        await asyncio.gather(*(writer(s, ch) for s, ch in zip(subjects, channels, strict=True)))

    async def drained() -> bool:
        infos = [await js.consumer_info(stream, f"part{p}") for p in range(partitions)]
        return all(i.num_pending == 0 and i.num_ack_pending == 0 for i in infos)

    await exactly_once_across_a_killed_node(server_factory, py_factory, config, partitions=partitions,
                                            per_partition=per_partition, produce=produce, drained=drained)


async def test_poison_messages_are_acknowledged_and_counted_and_an_outage_heals(
        server_factory: ServerFactory, py_factory: PyFactory, nats_server: NatsServer, nc: NatsClient) -> None:
    stream = await make_stream(nc, ["poison.>"])
    js = nc.jetstream()
    # Fugato creates the durable consumer itself (deliver_policy "all": what the stream holds already too).
    await js.publish("poison.a", json.dumps({"channel": "early", "data": 1}).encode(),
                     headers={"centrifugo-method": "no_such_method"})
    server = await server_factory({"consumers": [consumer("jetstream", nats_server.url, stream, "fugato",
                                                          subjects=["poison.>"], deliver_policy="all")],
                                   "prometheus": {"enabled": True}})
    ch = unique_channel("plain")
    py = await subscribed_client(py_factory, server, [ch])
    method = {"centrifugo-method": "publish"}
    for data, headers in [
        (b"{not json", method),
        (json.dumps({"channel": ch}).encode(), {"centrifugo-method": "history"}),
        (json.dumps({"channel": "nonexistent_ns:x", "data": 1}).encode(), method),
        (json.dumps({"method": "publish", "payload": publish_command(ch, 0)}).encode(), None),
        *((json.dumps(publish_command(ch, i)).encode(), method) for i in range(1, 10)),
    ]:
        await js.publish("poison.b", data, headers=headers)
    await wait_until(lambda: seqs(py, ch) == list(range(10)), timeout=20, what="the good messages, in order")
    await wait_until(lambda: _all_acked(js, stream), timeout=10, what="every message acknowledged")
    assert await metric(server, "centrifugo_consumers_messages_skipped_total", 'reason="malformed"') == 1
    assert await metric(server, "centrifugo_consumers_messages_skipped_total", 'reason="unsupported_method"') == 2
    assert await metric(server, "centrifugo_consumers_messages_skipped_total", 'reason="rejected"') == 1
    assert await metric(server, "centrifugo_consumers_messages_processed_total") == 14

    # A killed nats-server may forget the latest acks and redeliver: the idempotency keys keep those out.
    nats_server.stop()  # /health names the consumer within seconds (and stays 200)
    await wait_until(lambda: health_names(server, "jetstream"), timeout=20, what="/health reports the consumer")
    nats_server.start()  # same port, same store: the stream and the durable consumer are still there
    await wait_until(lambda: health_names(server, ""), timeout=30, what="the consumer recovers by itself")
    await nc.jetstream().publish("poison.c", json.dumps(publish_command(ch, 10)).encode(), headers=method)
    await wait_until(lambda: seqs(py, ch) == list(range(11)), timeout=20, what="a message after the outage")
    await barrier(server, py, [ch])
    assert seqs(py, ch) == [*range(11), "end"]


async def _all_acked(js: Any, stream: str) -> bool:
    info = await js.consumer_info(stream, "fugato")
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


async def test_publication_data_mode(server_factory: ServerFactory, py_factory: PyFactory,
                                     nats_server: NatsServer, nc: NatsClient) -> None:
    stream = await make_stream(nc, ["pubdata.>"])
    server = await server_factory({"consumers": [consumer(
        "jetstream", nats_server.url, stream, "fugato", deliver_policy="all",
        publication_data_mode={"enabled": True, "channels_header": "to"})]})
    a, b = unique_channel("plain"), unique_channel("plain")
    py = await subscribed_client(py_factory, server, [a, b])
    js = nc.jetstream()
    for seq, headers in [(0, {"to": a, "centrifugo-tag-kind": "first"}),
                         (1, {"to": f"{a},{b}", "centrifugo-idempotency-key": "k1"}),
                         (1, {"to": f"{a},{b}", "centrifugo-idempotency-key": "k1"}),
                         (9, {}),  # no channels: skipped
                         (2, {"to": a})]:
        await js.publish("pubdata.x", json.dumps({"seq": seq}).encode(), headers=headers or None)
    await wait_until(lambda: seqs(py, a) == [0, 1, 2] and seqs(py, b) == [1], timeout=20,
                     what="publications routed by the message's headers")
    assert py.events("publication", a)[0].ctx.pub.tags == {"kind": "first"}
    await barrier(server, py, [a, b])
    assert (seqs(py, a), seqs(py, b)) == ([0, 1, 2, "end"], [1, "end"]), "the repeated key published once"
