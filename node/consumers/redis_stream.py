"""The Redis Streams consumer: entries of ``streams`` read through the consumer group ``consumer_group``.

An entry's ``method_value`` field (``method``) names the API method and its ``payload_value`` field
(``payload``) holds the request object; without a method field the payload is the whole command. An entry is
acknowledged (XACK) once its command ran or was skipped as poison; one whose command must be retried stays
in this consumer's pending list and is read again first.

Every worker reads every stream with ``num_workers`` tasks, each a group consumer of its own. With
``num_workers`` 1 (the default) a stream is consumed in order across all workers and nodes: a lease key
(``SET NX PX``, renewed while consuming, lasting ``visibility_timeout``) lets one task read the stream at a time,
and a task that takes the lease over first claims every entry the previous holder left unacknowledged, so they
run again before anything newer. With more workers the stream is shared (unordered, as Centrifugo documents):
entries pending for longer than ``visibility_timeout`` are claimed by whichever consumer looks next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from node.consumers.base import BaseConsumer, RetryLaterError, next_backoff
from node.consumers.config import RedisStreamConsumerConfig
from node.consumers.publication_mode import dispatch_publication

if TYPE_CHECKING:
    from node.api.executor import Executor

logger = logging.getLogger(__name__)

BATCH: Final = 100
MAX_BLOCK: Final = 2.0  # a blocking read's longest wait; the lease is renewed at least this often
_RENEW: Final = ("if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end "
                  "return 0")
_RELEASE: Final = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


def _client(config: RedisStreamConsumerConfig, block: float) -> Redis:
    address = config.address[0]
    parts = urlsplit(address if "://" in address else "redis://" + address)
    db = int(parts.path.strip("/") or config.db)
    return Redis(host=parts.hostname or "127.0.0.1", port=parts.port or 6379, db=db,
                 username=unquote(parts.username or "") or config.user or None,
                 password=unquote(parts.password or "") or config.password or None, ssl=parts.scheme == "rediss",
                 socket_connect_timeout=config.connect_timeout, socket_timeout=config.io_timeout + block,
                 client_name=config.client_name or None, protocol=2)


class RedisStreamConsumer(BaseConsumer):
    def __init__(self, name: str, config: RedisStreamConsumerConfig, executor: Executor) -> None:
        super().__init__(name, executor)
        self.config = config
        self.ordered = config.num_workers == 1
        self.block = min(MAX_BLOCK, config.visibility_timeout / 3)
        self.redis = _client(config, self.block)
        self._method = config.method_value.encode()
        self._payload = config.payload_value.encode()
        mode = config.publication_data_mode
        self._publication = mode if mode.enabled else None

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                for stream in self.config.streams:
                    for i in range(self.config.num_workers):
                        tg.create_task(self._worker(stream, f"{self.node_id}_{i}"))
        finally:
            await self.redis.aclose()

    async def _worker(self, stream: str, me: str) -> None:
        lease = f"fugato.consumer_lease.{self.config.consumer_group}.{stream}"
        ttl_ms = int(self.config.visibility_timeout * 1000)
        holding = False
        next_reclaim = 0.0
        retries = 0
        key = f"stream {stream} ({me})"
        try:
            while not self.stopping:
                try:
                    if self.ordered:
                        was_holding = holding
                        holding = await self._lease(lease, me, ttl_ms, holding)
                        self.recovered(key)
                        if not holding:
                            await asyncio.sleep(self.block)
                            continue
                        if not was_holding:  # taken over: the previous holder's unacknowledged entries first
                            await self._claim(stream, me, 0)
                    elif time.monotonic() >= next_reclaim:
                        await self._claim(stream, me, ttl_ms)
                        next_reclaim = time.monotonic() + self.config.visibility_timeout / 2
                    await self._batch(stream, me)
                    retries = 0
                    self.recovered(key)
                except RetryLaterError as e:
                    retries += 1
                    self.failed(key, f"{key}: command to retry", e)
                    await asyncio.sleep(next_backoff(retries))
                except (RedisError, OSError) as e:
                    retries += 1
                    holding = False  # re-check the lease (and claim again) after an outage
                    self.failed(key, key, e)
                    await asyncio.sleep(next_backoff(retries))
        finally:
            if holding:  # stopping: hand the stream over at once instead of after the lease's expiry
                with contextlib.suppress(RedisError, OSError):
                    await self.redis.eval(_RELEASE, 1, lease, me)

    async def _lease(self, key: str, me: str, ttl_ms: int, holding: bool) -> bool:
        if holding and await self.redis.eval(_RENEW, 1, key, me, ttl_ms):
            return True
        return bool(await self.redis.set(key, me, nx=True, px=ttl_ms))

    async def _ensure_group(self, stream: str) -> None:
        try:
            await self.redis.xgroup_create(stream, self.config.consumer_group, id="$", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def _claim(self, stream: str, me: str, min_idle_ms: int) -> None:
        """Move entries pending for at least ``min_idle_ms`` (at other consumers, too) into ``me``'s list."""
        start = "0-0"
        while True:
            try:  # not JUSTID: redis-py drops the cursor of such a reply
                reply = await self.redis.xautoclaim(stream, self.config.consumer_group, me, min_idle_ms, start,
                                                    count=BATCH)
            except ResponseError as e:
                if "NOGROUP" not in str(e):
                    raise
                await self._ensure_group(stream)
                return
            start = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
            if start == "0-0":
                return

    async def _read(self, stream: str, me: str, last: str, block: float | None) -> list[Any]:
        try:
            reply: Any = await self.redis.xreadgroup(self.config.consumer_group, me, {stream: last}, count=BATCH,
                                                block=None if block is None else int(block * 1000))
        except ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            await self._ensure_group(stream)
            return []
        return list(reply[0][1]) if reply else []  # RESP2: [[stream, [(id, fields), ...]]]

    async def _batch(self, stream: str, me: str) -> None:
        """Run this consumer's own pending entries, or else wait for new ones and run those."""
        entries = await self._read(stream, me, "0", None) or await self._read(stream, me, ">", self.block)
        done: list[bytes] = []
        try:
            for entry_id, fields in entries:
                if fields:  # None: the entry was deleted from the stream while pending
                    await self._dispatch(fields)
                done.append(entry_id)
        finally:
            if done:
                await self.redis.xack(stream, self.config.consumer_group, *done)
                self.dispatcher.metrics.consumer_processed(self.name, len(done))

    async def _dispatch(self, fields: dict[bytes, bytes]) -> None:
        payload = fields.get(self._payload)
        if payload is None:
            self.dispatcher.skip("malformed", f"no {self.config.payload_value!r} field in the stream entry")
            return
        if self._publication is not None:
            attributes = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in fields.items()}
            await dispatch_publication(self.dispatcher, self._publication, attributes, payload)
            return
        await self.dispatcher.dispatch(fields.get(self._method, b"").decode(errors="replace"), payload)
