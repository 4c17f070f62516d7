"""History over NATS JetStream (Fugato only: ``broker.nats.jetstream``), so recovery, positioning and the
``history`` API work with NATS alone.

Mapping. One stream, ``<prefix>_history``, captures ``<prefix>.history.>``; a channel's publications are the
messages on ``<prefix>.history.<channel>``. The stream keeps per subject the largest ``history_size`` of all
namespaces and for the largest ``history_ttl``; a read trims to the channel's own size and TTL, which each
message carries in its headers. The stream republishes every stored message to ``<prefix>.client.<channel>``,
the subject live subscribers listen on, so live delivery happens only for what was stored, in stream order.

Offsets and epochs. Each message carries its channel offset and epoch in the wire head. A publish states the
subject sequence it expects to follow (``Nats-Expected-Last-Subject-Sequence``), so two nodes publishing to one
channel cannot both take an offset: the loser re-reads the channel's last message and retries. A channel whose
messages have all expired starts a new epoch, so clients see that their position cannot be recovered. Epochs
of empty channels live in the ``<prefix>_epochs`` key-value bucket (TTL ``channel.history_meta_ttl``), so a
client positioned on a channel before its first publication keeps a valid position.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from dataclasses import dataclass
from typing import Final

from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy, RePublish, StorageType, StreamConfig
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from node.broker import wire
from node.broker.base import new_epoch
from node.config_engine import NatsBrokerConfig
from node.models import HistoryOptions, HistoryResult, Publication, PublishOptions, PublishResult, StreamPosition

WRONG_LAST_SEQUENCE: Final = 10071  # JetStream's error code for a failed expected-last-subject-sequence check
MAX_ATTEMPTS: Final = 16
SIZE_HEADER: Final = "Fugato-History-Size"
TTL_HEADER: Final = "Fugato-History-Ttl"
IDEMPOTENCY_WINDOW: Final = 300.0
READ_TIMEOUT: Final = 5.0  # a history read that stalls this long between messages fails
USED: Final = "!"  # suffix of an epoch in the bucket once publications were made in it
REMOVED: Final = "="  # separates an epoch from the offset its history was removed at


def _name(prefix: str, suffix: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", prefix) + "_" + suffix


@dataclass(frozen=True, slots=True)
class _Top:
    """The last stored message of a channel: its stream sequence (0: none) and stream position."""

    seq: int
    offset: int
    epoch: str


class JetStreamHistory:
    def __init__(self, nc: NatsClient, cfg: NatsBrokerConfig, limits: tuple[int, float], meta_ttl: float) -> None:
        self._nc = nc  # the broker's connection (one for its whole life)
        self._cfg = cfg
        self._prefix = f"{cfg.prefix}.history."
        self.stream = _name(cfg.prefix, "history")
        self._bucket = _name(cfg.prefix, "epochs")
        self._limits = limits
        self._meta_ttl = meta_ttl
        self._js: JetStreamContext | None = None
        self._kv: KeyValue | None = None
        self._tops: dict[str, _Top] = {}  # what this node last stored per channel (a guess; JetStream checks it)
        self._locks: dict[str, asyncio.Lock] = {}

    def subject(self, channel: str) -> str:
        return self._prefix + channel

    @property
    def js(self) -> JetStreamContext:
        assert self._js is not None, "JetStreamHistory used before start()"
        return self._js

    async def start(self) -> None:
        nc = self._nc
        self._js = nc.jetstream(timeout=max(self._cfg.write_timeout, 1.0))
        size, ttl = self._limits
        config = StreamConfig(
            name=self.stream, subjects=[self._prefix + ">"], max_msgs_per_subject=max(size, 1),
            max_age=ttl if ttl > 0 else None, allow_direct=True,
            # Centrifugo's default idempotent_result_ttl (5 min), within the stream's max_age.
            duplicate_window=min(IDEMPOTENCY_WINDOW, ttl) if ttl > 0 else IDEMPOTENCY_WINDOW,
            storage=StorageType.MEMORY if self._cfg.jetstream.storage == "memory" else StorageType.FILE,
            num_replicas=self._cfg.jetstream.replicas,
            republish=RePublish(src=self._prefix + ">", dest=f"{self._cfg.prefix}.client.>"),
        )
        try:
            await self.js.add_stream(config)
        except APIError:  # it exists (another node or an earlier run): bring its limits in line with ours
            await self.js.update_stream(config)
        try:
            self._kv = await self.js.key_value(self._bucket)
        except (NotFoundError, APIError):
            self._kv = await self.js.create_key_value(bucket=self._bucket, ttl=self._meta_ttl or None,
                                                      storage=config.storage, replicas=config.num_replicas)

    async def restore(self, timeout: float = 10.0) -> None:
        """After a reconnect: wait (bounded) until JetStream answers (a restarted nats-server recovers its store
        first), then create the stream and bucket again if they are gone (a server with memory storage)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                await self.js.account_info()
                break
            except Exception:  # not ready yet (no responders, 503, timeout): ask again shortly
                await asyncio.sleep(0.1)
        self._tops.clear()
        await self.start()

    # --- positions ---------------------------------------------------------------------------------------

    async def _last(self, channel: str) -> _Top | None:
        try:
            msg = await self.js.get_last_msg(self.stream, self.subject(channel), direct=True)
        except NotFoundError:
            return None
        pos = wire.decode(msg.data or b"").position
        return _Top(msg.seq or 0, pos.offset, pos.epoch)

    async def _top(self, channel: str, *, for_publish: bool) -> _Top:
        last = await self._last(channel)
        if last is not None:
            return last
        return await self._empty_top(channel, for_publish=for_publish)

    def _key(self, channel: str) -> str:
        return base64.urlsafe_b64encode(channel.encode()).decode().rstrip("=") or "_"

    async def _empty_top(self, channel: str, *, for_publish: bool) -> _Top:
        """The position of a channel without stored messages, from the bucket, whose value is ``<epoch>`` (no
        publication yet), ``<epoch>!`` (publications were made: if none is left they all expired, so the
        epoch is replaced and positions in it become unrecoverable) or ``<epoch>=<offset>`` (history removed
        at that offset: the stream continues from it). A publish marks its epoch as used."""
        kv = self._kv
        assert kv is not None
        key = self._key(channel)
        mark = USED if for_publish else ""
        for _ in range(MAX_ATTEMPTS):
            try:
                entry = await kv.get(key)
            except KeyNotFoundError:
                epoch = new_epoch()
                try:
                    await kv.create(key, (epoch + mark).encode())
                except KeyWrongLastSequenceError:
                    continue
                return _Top(0, 0, epoch)
            value = (entry.value or b"").decode()
            epoch, removed, offset = value.partition(REMOVED)
            top = _Top(0, int(offset) if removed else 0, epoch.removesuffix(USED))
            if epoch.endswith(USED):
                top = _Top(0, 0, new_epoch())
            elif not for_publish:
                return top
            try:
                await kv.update(key, (top.epoch + mark).encode(), last=entry.revision)
            except KeyWrongLastSequenceError:
                continue
            return top
        raise RuntimeError(f"JetStream history: no stable epoch for {channel!r}")

    # --- publishing --------------------------------------------------------------------------------------

    def _lock(self, channel: str) -> asyncio.Lock:
        lock = self._locks.get(channel)
        if lock is None:
            lock = self._locks[channel] = asyncio.Lock()
        return lock

    async def publish(self, channel: str, body: bytes, opts: PublishOptions) -> PublishResult:
        # One publish per channel at a time on this node: concurrent ones would only fail each other's check.
        async with self._lock(channel):
            top = self._tops.get(channel) or await self._top(channel, for_publish=True)
            headers = {SIZE_HEADER: str(opts.history_size), TTL_HEADER: str(int(opts.history_ttl))}
            if opts.idempotency_key:  # JetStream drops a repeated Nats-Msg-Id within the stream's duplicate window
                headers["Nats-Msg-Id"] = f"{self._key(channel)}.{opts.idempotency_key}"
            for _ in range(MAX_ATTEMPTS):
                offset = top.offset + 1
                headers["Nats-Expected-Last-Subject-Sequence"] = str(top.seq)
                try:
                    ack = await self.js.publish(self.subject(channel),
                                                wire.encode_publication_message(body, offset, top.epoch),
                                                headers=headers)
                except APIError as e:
                    if e.err_code != WRONG_LAST_SEQUENCE:
                        raise
                    self._tops.pop(channel, None)
                    top = await self._top(channel, for_publish=True)
                    continue
                if ack.duplicate:  # the earlier publication with this idempotency key stands
                    earlier = await self.js.get_msg(self.stream, seq=ack.seq, direct=True)
                    return PublishResult(wire.decode(earlier.data or b"").position, suppressed=True)
                self._tops[channel] = _Top(ack.seq, offset, top.epoch)
                if len(self._locks) > 10_000 and not self._lock(channel).locked():
                    self._locks.clear()
                return PublishResult(StreamPosition(offset, top.epoch))
        raise RuntimeError(f"JetStream history: could not publish to {channel!r} (too much contention)")

    # --- reads -------------------------------------------------------------------------------------------

    async def _stored(self, channel: str) -> tuple[list[Publication], int, float]:
        """Every publication the stream keeps for the channel (oldest first), with the channel's own history
        size and TTL taken from the newest message. One ephemeral ordered consumer streams them (a read of
        N messages costs a few round trips, not N)."""
        pubs: list[Publication] = []
        size, ttl = 0, 0.0
        sub = await self.js.subscribe(self.subject(channel), stream=self.stream, ordered_consumer=True,
                                      deliver_policy=DeliverPolicy.ALL, inactive_threshold=READ_TIMEOUT * 2)
        try:
            while True:
                msg = await sub.next_msg(READ_TIMEOUT)
                decoded = wire.decode(msg.data)
                if decoded.publication is not None:
                    pubs.append(decoded.publication)
                headers = msg.headers or {}
                size, ttl = int(headers.get(SIZE_HEADER, 0)), float(headers.get(TTL_HEADER, 0))
                if msg.metadata.num_pending == 0:
                    break
        finally:
            await sub.unsubscribe()
        return pubs, size, ttl

    async def history(self, channel: str, opts: HistoryOptions) -> HistoryResult:
        top = await self._top(channel, for_publish=False)
        position = StreamPosition(top.offset, top.epoch)
        if opts.limit == 0 or top.seq == 0:
            return HistoryResult((), position)
        pubs, size, ttl = await self._stored(channel)
        if size > 0:
            pubs = pubs[-size:]
        if ttl > 0:
            oldest = int((time.time() - ttl) * 1000)
            pubs = [p for p in pubs if p.time_ms >= oldest]
        since = opts.since
        if since is not None:
            pubs = [p for p in pubs if p.offset > since.offset] if not opts.reverse else \
                [p for p in pubs if p.offset < since.offset]
        if opts.reverse:
            pubs.reverse()
        if opts.limit > 0:
            pubs = pubs[:opts.limit]
        return HistoryResult(tuple(pubs), position)

    async def remove(self, channel: str) -> None:
        """Drop the channel's stored publications; its epoch and top offset stay (in the bucket), as with Redis."""
        async with self._lock(channel):
            last = await self._last(channel)
            if last is None:
                return
            assert self._kv is not None
            await self._kv.put(self._key(channel), f"{last.epoch}{REMOVED}{last.offset}".encode())
            await self.js.purge_stream(self.stream, subject=self.subject(channel))
            self._tops.pop(channel, None)
