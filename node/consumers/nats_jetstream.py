"""The NATS JetStream consumer: messages of ``stream_name`` through the durable pull consumer
``durable_consumer_name``.

The ``method_header`` header (``centrifugo-method``) names the API method and the message data is the request
object; without the header the data is the whole command. As in Centrifugo, Fugato creates or updates the
durable consumer (explicit acks, ``deliver_policy``, ``max_ack_pending``, ``subjects`` as its filter, 30 s
ack wait) unless ``use_existing_consumer`` says to bind to one the application made; it never creates the
stream. A message is acknowledged once its command ran or was skipped as poison; one to retry is
negatively acknowledged with a delay growing with its delivery count, and a message whose node died is
redelivered by the server after the ack wait. Every worker of every node pulls from the same durable
consumer, so they share the work; ``max_ack_pending: 1`` makes the server hand out one message at a time,
which keeps the stream's order across all of them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Final

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import BadRequestError

from node.consumers.base import BaseConsumer, RetryLaterError, next_backoff
from node.consumers.config import NatsJetStreamConsumerConfig
from node.consumers.publication_mode import dispatch_publication

if TYPE_CHECKING:
    from node.api.executor import Executor

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT: Final = 5.0
ACK_WAIT: Final = 30.0  # Centrifugo's
FETCH_WAIT: Final = 2.0  # a pull request's longest wait for messages
MAX_BATCH: Final = 100


class NatsJetStreamConsumer(BaseConsumer):
    def __init__(self, name: str, config: NatsJetStreamConsumerConfig, executor: Executor) -> None:
        super().__init__(name, executor)
        self.config = config
        mode = config.publication_data_mode
        self._publication = mode if mode.enabled else None

    async def run(self) -> None:
        retries = 0
        while not self.stopping:
            nc = NatsClient()
            try:
                await self._connect(nc)
                sub, batch = await self._subscription(nc)
                retries = 0
                await self._consume(nc, sub, batch)
            except (NatsError, OSError, TimeoutError) as e:
                retries += 1
                self.failed("nats", "NATS", e)
                await asyncio.sleep(next_backoff(retries))
            finally:
                await nc.close()

    async def _connect(self, nc: NatsClient) -> None:
        cfg = self.config

        async def disconnected() -> None:
            self.failed("nats", "NATS", "disconnected")

        async def reconnected() -> None:
            self.recovered("nats")

        async def error(e: Exception) -> None:
            logger.debug("consumer %s: NATS: %s", self.name, e)

        # nats-py retries a first connect forever when reconnects are unlimited: bound it, and retry ourselves.
        async with asyncio.timeout(CONNECT_TIMEOUT * 2):
            await nc.connect(servers=[u.strip() for u in cfg.url.split(",") if u.strip()],
                             user=cfg.username or None, password=cfg.password or None, token=cfg.token or None,
                             user_credentials=cfg.credentials_file or None,
                             connect_timeout=int(CONNECT_TIMEOUT), max_reconnect_attempts=-1,
                             reconnect_time_wait=1, name=f"fugato consumer {self.name} {self.node_id}",
                             disconnected_cb=disconnected, reconnected_cb=reconnected, error_cb=error)

    async def _subscription(self, nc: NatsClient) -> tuple[Any, int]:
        """The pull subscription, and how many messages to ask for at a time."""
        cfg = self.config
        js = nc.jetstream()
        if not cfg.use_existing_consumer:
            subjects = list(cfg.subjects)
            consumer = ConsumerConfig(
                durable_name=cfg.durable_consumer_name, ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT,
                deliver_policy=DeliverPolicy.ALL if cfg.deliver_policy == "all" else DeliverPolicy.NEW,
                max_ack_pending=cfg.max_ack_pending,
                # One subject as filter_subject: servers before 2.10 know no filter_subjects.
                filter_subject=subjects[0] if len(subjects) == 1 else None,
                filter_subjects=subjects if len(subjects) > 1 else None)
            try:
                await js.add_consumer(cfg.stream_name, consumer, timeout=CONNECT_TIMEOUT)
            except BadRequestError as e:  # a durable made earlier with other settings: keep it, say so
                logger.warning("consumer %s: using the existing JetStream consumer %s as it is: %s", self.name,
                               cfg.durable_consumer_name, e.description)
        # Fails when the stream or (with use_existing_consumer) the durable consumer does not exist.
        info = await js.consumer_info(cfg.stream_name, cfg.durable_consumer_name, timeout=CONNECT_TIMEOUT)
        # A pull asks for no more than the consumer lets out unacknowledged: it would wait for the rest.
        batch = max(1, min(info.config.max_ack_pending or MAX_BATCH, MAX_BATCH))
        return await js.pull_subscribe_bind(durable=cfg.durable_consumer_name, stream=cfg.stream_name), batch

    async def _consume(self, nc: NatsClient, sub: Any, batch: int) -> None:
        while not self.stopping:
            try:
                msgs: list[Msg] = await sub.fetch(batch, timeout=FETCH_WAIT)
            except NatsTimeoutError:
                if nc.is_connected:
                    self.recovered("nats")
                continue  # nothing new (or reconnecting: the callbacks report that)
            self.recovered("nats")
            for msg in msgs:
                await self._handle(msg)

    async def _handle(self, msg: Msg) -> None:
        headers = msg.headers or {}
        method = headers.get(self.config.method_header, "") if self.config.method_header else ""
        try:
            if self._publication is not None:
                await dispatch_publication(self.dispatcher, self._publication, headers, msg.data)
            else:
                await self.dispatcher.dispatch(method, msg.data)
        except RetryLaterError as e:
            self.failed("nats", "command to retry", e)
            await msg.nak(delay=next_backoff(msg.metadata.num_delivered or 1))
            return
        await msg.ack()
        self.dispatcher.metrics.consumer_processed(self.name)

