"""Starts the enabled consumers of a node and stops them with it.

Every worker of every node runs every enabled consumer: they compete for the same rows or messages, so a
worker that dies leaves its work to the others. A consumer whose dependency fails keeps retrying on its own;
the node keeps serving clients meanwhile (``/health`` stays green and names the failing consumer, since an
outbox database being down is no reason to take a node's connections away).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Final

from node.consumers.base import Consumer
from node.consumers.config import ConsumerConfig
from node.consumers.nats_jetstream import NatsJetStreamConsumer
from node.consumers.postgresql import PostgresConsumer
from node.consumers.redis_stream import RedisStreamConsumer

if TYPE_CHECKING:
    from node.api.executor import Executor

logger = logging.getLogger(__name__)

RESTART_DELAY: Final = 1.0
STOP_GRACE: Final = 5.0


def build_consumer(config: ConsumerConfig, executor: Executor) -> Consumer:
    if config.type == "postgresql":
        return PostgresConsumer(config.name, config.postgresql, executor)
    if config.type == "redis_stream":
        return RedisStreamConsumer(config.name, config.redis_stream, executor)
    if config.type == "nats_jetstream":
        return NatsJetStreamConsumer(config.name, config.nats_jetstream, executor)
    raise AssertionError(f"consumer type {config.type} passed validation")  # ConsumerConfig refuses it


class Consumers:
    def __init__(self, configs: tuple[ConsumerConfig, ...], executor: Executor) -> None:
        self.consumers = [build_consumer(c, executor) for c in configs if c.enabled]
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for consumer in self.consumers:
            task = asyncio.get_running_loop().create_task(self._run(consumer), name=f"consumer:{consumer.name}")
            self._tasks.append(task)
        if self.consumers:
            logger.info("consumers started: %s", ", ".join(c.name for c in self.consumers))

    @staticmethod
    async def _run(consumer: Consumer) -> None:
        while not consumer.stopping:
            try:
                await consumer.run()
            except Exception:  # a bug or an unforeseen reply: say so loudly, and keep consuming
                logger.exception("consumer %s failed; restarting it in %.0f s", consumer.name, RESTART_DELAY)
            if not consumer.stopping:
                await asyncio.sleep(RESTART_DELAY)

    async def close(self) -> None:
        """Stop consuming: the messages in hand are finished and acknowledged for up to STOP_GRACE seconds;
        after that the rest is abandoned unacknowledged (and will be delivered again)."""
        tasks, self._tasks = self._tasks, []
        if not tasks:
            return
        for consumer in self.consumers:
            consumer.stop()
        _, pending = await asyncio.wait(tasks, timeout=STOP_GRACE)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def errors(self) -> dict[str, str]:
        """The consumers that are failing right now, with their last error."""
        return {c.name: c.error for c in self.consumers if c.error}
