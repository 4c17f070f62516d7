"""Shared poll channels on a node (``Node.sharedpoll``): the subscribe of type 4, track/untrack of keys, and one
refresh worker per channel that asks the backend for every key tracked on this node once per
``refresh_interval`` (in ``refresh_batch_size`` batches spread over the interval) and pushes what changed.

As in Centrifugo OSS each node polls for the keys its own connections track: the backend sees
O(unique keys x nodes) calls per interval, never O(clients). Only shared_poll_publish goes through the broker,
on the channel's relay channel.

Change detection: ``versioned`` mode compares the backend's versions (and sends the version this node holds, 0
when some tracker still needs data, so a backend may leave unchanged data out); ``versionless`` mode compares a
hash of the data and numbers the changes itself (synthetic versions, valid with the channel's epoch, which the
subscribe reply carries). Every tracker holds the version it was sent last: a change reaches only the trackers
behind it, and a reconnecting client that says it holds the current version gets nothing again.

A key tracked with version 0 that this node does not poll yet (or that some tracker lacks) is polled at once
instead of at the next cycle. ``removed: true`` from the backend removes the key from every tracker, which is
told so with centrifuge's removal publication (key and ``removed``, no data, no version). Tracks whose
signature expired more than ``track_expired_extra_delay`` ago are dropped silently.

Fossil delta (a subscribe's ``delta`` that the namespace's ``allowed_delta_types`` allows) is per key, as in
centrifuge: a connection's first data of a key is full, later data a patch against the backend's ``prev_data``
for the trackers that hold the version it belongs to; the patch is made once per update.

Nothing here awaits between taking a track and queueing its reply, so no update of a key can overtake it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

from node.config import ChannelOptions
from node.delta import fossil
from node.errors import (
    DISCONNECT_BAD_REQUEST,
    ERROR_BAD_REQUEST,
    ERROR_INTERNAL,
    ERROR_LIMIT_EXCEEDED,
    ERROR_NOT_AVAILABLE,
    ERROR_PERMISSION_DENIED,
    ERROR_TOKEN_EXPIRED,
    DisconnectError,
    ReplyError,
)
from node.models import ClientInfo, ClientState, Publication, PublishOptions, StreamPosition
from node.protocol.codec import is_json
from node.protocol.codec import param as _param
from node.sharedpoll import signature, wire
from node.sharedpoll.host import PollClient, PollHost
from node.sharedpoll.options import SharedPollConfig, SharedPollOptions
from node.sharedpoll.refresh import Answer
from node.subscriptions import ChannelState

if TYPE_CHECKING:
    from node.protocol.codec import Command

logger = logging.getLogger(__name__)

# A shared_poll_publish crosses the broker as a publication with these tags, on the channel's relay channel.
TAG_KEY, TAG_VERSION, TAG_EPOCH = "sp_key", "sp_version", "sp_epoch"
TYPE_TRACK: Final = 1
_PLAIN, _FULL, _PATCH = 0, 1, 2  # a publication's form: raw payload; a delta subscriber's full one; a patch
TYPE_UNTRACK: Final = 2
MAX_KEY_LENGTH: Final = 1024

# (namespace, channel, [(key, version)]) -> the backend's answer; raises when there is none.
Refresh = Callable[[ChannelOptions, str, Sequence[tuple[str, int]]], Awaitable[Answer]]
C = TypeVar("C", bound=PollClient)  # the node's connections


class _Tracker:
    """One connection's interest in one key: the version it was sent last (or said it holds), and whether it
    holds that version's data, so that a fossil patch against it can be applied (delta subscriptions)."""

    __slots__ = ("delta_ready", "expire_at", "version")

    def __init__(self, version: int, expire_at: int) -> None:
        self.version = version
        self.expire_at = expire_at
        self.delta_ready = False  # centrifuge's keyedKeyState.deltaReady: set by the first delivery to it


class _Sub:
    """One connection's subscription to a shared poll channel."""

    __slots__ = ("client", "delta", "keys", "min_expire")

    def __init__(self, client: PollClient, delta: bool) -> None:
        self.client = client
        self.delta = delta  # fossil delta negotiated: payloads per key as patches against the previous one
        self.keys: dict[str, _Tracker] = {}
        self.min_expire = 0  # the earliest signature expiry among keys (0: none expires)


class _Key:
    """A key this node polls: the version it holds and who tracks it."""

    __slots__ = ("behind", "digest", "fresh", "subs", "version")

    def __init__(self) -> None:
        self.version = 0
        self.fresh = False  # set by shared_poll_publish: the next regular cycle skips the key
        self.digest = 0
        self.behind = True  # some tracker needs the key's data although it did not change
        self.subs: dict[str, _Sub] = {}


class _Channel:
    __slots__ = ("counter", "epoch", "keys", "name", "ns", "observed", "soon", "stop", "subs", "task", "wake")

    def __init__(self, name: str, ns: ChannelOptions) -> None:
        self.name = name
        self.ns = ns
        # Versionless: the synthetic versions are valid with this epoch only. Versioned: the backend's epoch.
        self.epoch = "" if ns.shared_poll.versioned else f"{time.time_ns():x}"
        self.counter = 0
        self.keys: dict[str, _Key] = {}
        self.subs: dict[str, _Sub] = {}
        self.soon: set[str] = set()  # keys to poll now rather than at the next cycle
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.stop: asyncio.TimerHandle | None = None
        self.observed = False  # publish_enabled: this node gets the channel's shared_poll_publish calls

    @property
    def opts(self) -> SharedPollOptions:
        return self.ns.shared_poll


def relay_channel(channel: str) -> str:
    """The broker channel a shared poll channel's shared_poll_publish calls cross: not the channel itself, whose
    server-side (stream) subscribers must not get them. Centrifuge's form, ``<len>:<channel>``, less its key
    (centrifuge has one per key)."""
    return f"{len(channel)}:{channel}"


def _keys(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
        raise DisconnectError(DISCONNECT_BAD_REQUEST)
    return value


class SharedPollService(Generic[C]):
    def __init__(self, node: PollHost[C], refresh: Refresh) -> None:
        self._node = node
        self._refresh = refresh
        self._channels: dict[str, _Channel] = {}
        limit = node.config.shared_poll.concurrency_limit
        self._limit = asyncio.Semaphore(limit) if limit > 0 else None
        self.calls = 0  # refresh calls made (the benchmark reads it)

    @property
    def _config(self) -> SharedPollConfig:
        return self._node.config.shared_poll

    async def close(self) -> None:
        channels = list(self._channels.values())
        self._channels.clear()
        for ch in channels:
            await self._stop_worker(ch)

    # --- subscribe -----------------------------------------------------------------------------------------

    def namespace(self, channel: str, params: Mapping[str, Any]) -> ChannelOptions:
        """The shared poll namespace of a subscribe of type 4 (108 when it is none, 107 for another type)."""
        try:
            ns: ChannelOptions | None = self._node.policy.namespace(channel)
        except ReplyError:
            ns = None
        shared = ns is not None and ns.subscription_type == "shared_poll"
        if _param(params, "type", int, 0) != wire.TYPE_SHARED_POLL:
            raise ReplyError(ERROR_BAD_REQUEST)
        if ns is None or not shared:
            raise ReplyError(ERROR_NOT_AVAILABLE)
        return ns

    async def subscribe(self, client: C, cmd: Command,
                        ask: Callable[[], Awaitable[Any]] | None) -> bytes | None:
        """Subscribe without data: data flows once keys are tracked. No broker subscription, no recovery. The
        caller has checked the channel's length, that it is not subscribed already and the channel limit."""
        node, channel = self._node, cmd.params.get("channel", "")
        ns = self.namespace(channel, cmd.params)
        client.start_subscribing(channel)
        try:
            opts = await node.policy.subscribe(client, channel, cmd.params, ask)
        finally:
            client.done_subscribing(channel)
        if client.state is ClientState.CLOSED:
            return None
        opts = dataclasses.replace(opts, enable_positioning=False, enable_recovery=False, delta=False)
        info = client.info if opts.chan_info is None else ClientInfo(
            client=client.id, user=client.user, conn_info=client.conn_info, chan_info=opts.chan_info)
        client.channels[channel] = ChannelState(opts=opts, server_side=False, expire_at=opts.expire_at, info=info)
        node.metrics.subscriptions.inc()
        ch = self._channel(channel, ns)
        # Delta as centrifuge negotiates it for a shared poll subscribe: asked for and among the namespace's
        # allowed_delta_types, else simply not negotiated (no error for an unknown type, unlike streams).
        delta = cmd.params.get("delta") == "fossil" and "fossil" in ns.allowed_delta_types
        ch.subs[client.id] = _Sub(client, delta)
        if ch.opts.publish_enabled and not ch.observed:
            ch.observed = True
            try:
                await node.subscriptions.observe(relay_channel(channel), self._published)
            except Exception:
                ch.observed = False
                logger.warning("shared poll: %s not subscribed for shared_poll_publish (engine unavailable)",
                               channel)
        ttl = max(int(opts.expire_at - time.time()), 0) if opts.expire_at else None
        client.enqueue(client.codec.reply(cmd.id, "subscribe",
                                          wire.subscribe_result(client.protocol, ch.epoch, ttl, delta)))
        await node.after_subscribe(client, channel, opts)
        return None

    def _channel(self, name: str, ns: ChannelOptions) -> _Channel:
        ch = self._channels.get(name)
        if ch is None:
            ch = self._channels[name] = _Channel(name, ns)
            ch.task = asyncio.get_running_loop().create_task(self._work(ch))
        elif ch.stop is not None:
            ch.stop.cancel()
            ch.stop = None
        return ch

    def unsubscribed(self, client: C, channel: str) -> None:
        """The connection left the channel (unsubscribe, expiry, disconnect): it tracks nothing there."""
        ch = self._channels.get(channel)
        sub = ch.subs.pop(client.id, None) if ch is not None else None
        if ch is None or sub is None:
            return
        for name in list(sub.keys):
            self._drop(ch, sub, name)
        self._maybe_stop(ch)

    # --- track / untrack (sub_refresh of type 1 / 2) -------------------------------------------------------

    def handles(self, client: C, params: Mapping[str, Any]) -> bool:
        """Whether a sub_refresh is a track or untrack of a shared poll subscription of ``client`` (one of a
        channel the connection is not subscribed to is refused with 103, as Centrifugo does)."""
        kind = params.get("type")
        if kind not in (TYPE_TRACK, TYPE_UNTRACK):
            return False
        channel = params.get("channel", "")
        if channel not in client.channels:
            raise ReplyError(ERROR_PERMISSION_DENIED)
        ch = self._channels.get(channel)
        return ch is not None and client.id in ch.subs

    def track(self, client: C, cmd: Command) -> bytes:
        params, now = cmd.params, time.time()
        ch = self._channels[params["channel"]]
        sub = ch.subs[client.id]
        if params["type"] == TYPE_UNTRACK:
            untrack = _keys(params.get("untrack") or [])
            if not untrack:
                raise ReplyError(ERROR_BAD_REQUEST)
            self._untrack(ch, sub, untrack)
            return client.codec.empty
        batches = params.get("track") or []
        if not isinstance(batches, list) or not all(isinstance(b, dict) for b in batches):
            raise DisconnectError(DISCONNECT_BAD_REQUEST)
        flat: dict[str, tuple[int, int]] = {}  # key -> (version, batch): the last batch naming a key wins
        signed: list[tuple[list[str], str]] = []
        for i, batch in enumerate(batches):
            items = _param(batch, "items", list, [])
            keys = []
            for item in items:
                if not isinstance(item, dict):
                    raise DisconnectError(DISCONNECT_BAD_REQUEST)
                key, version = _param(item, "key", str, ""), _param(item, "version", int, 0)
                if not key or len(key) > MAX_KEY_LENGTH or version < 0:
                    raise ReplyError(ERROR_BAD_REQUEST)
                keys.append(key)
                flat[key] = (version, i)
            signed.append((keys, _param(batch, "signature", str, "")))
        if not flat:
            raise ReplyError(ERROR_BAD_REQUEST)
        dropped = set(_keys(params.get("untrack") or []))  # untracked locally since the signature was made
        added = sum(1 for k in flat if k not in sub.keys and k not in dropped)
        freed = sum(1 for k in dropped if k in sub.keys)
        if len(sub.keys) - freed + added > ch.opts.max_keys_per_connection:
            raise ReplyError(ERROR_LIMIT_EXCEEDED)
        expiries = [self._verify(client, ch.name, keys, sig, now) for keys, sig in signed]
        for key, (version, i) in flat.items():
            self._track(ch, sub, key, version, expiries[i])
        if dropped:
            self._untrack(ch, sub, list(dropped))
        if ch.soon:
            ch.wake.set()
        first = min((e for e in expiries if e), default=0)
        return wire.track_result(client.protocol, max(first - int(now), 0) if first else None)

    def _verify(self, client: C, channel: str, keys: list[str], sig: str, now: float) -> int:
        if not self._config.hmac_secret_key:
            logger.error("shared poll: hmac_secret_key is not configured, track on %s refused", channel)
            raise ReplyError(ERROR_INTERNAL)
        try:
            return signature.verify(self._config, client.user, channel, keys, sig, now)
        except signature.SignatureExpired:
            raise ReplyError(ERROR_TOKEN_EXPIRED) from None
        except signature.SignatureInvalid:
            logger.info("shared poll: invalid track signature on %s (client %s)", channel, client.id)
            raise ReplyError(ERROR_PERMISSION_DENIED) from None

    def _track(self, ch: _Channel, sub: _Sub, name: str, version: int, expire_at: int) -> None:
        tracker = sub.keys.get(name)
        if tracker is None:
            tracker = sub.keys[name] = _Tracker(version, expire_at)
        else:  # a track replaces the key's state, as centrifuge's does: its next data comes in full
            tracker.version, tracker.expire_at, tracker.delta_ready = version, expire_at, False
        if expire_at and (not sub.min_expire or expire_at < sub.min_expire):
            sub.min_expire = expire_at
        key = ch.keys.get(name)
        if key is None:
            key = ch.keys[name] = _Key()
            if version == 0:
                ch.soon.add(name)  # a cold key: data without waiting for the next cycle
        elif version == 0 or version < key.version:
            key.behind = True  # a warm key this tracker lacks: poll it now and deliver even if unchanged
            ch.soon.add(name)
        key.subs[sub.client.id] = sub

    def _untrack(self, ch: _Channel, sub: _Sub, names: list[str]) -> None:
        for name in names:
            if name in sub.keys:
                del sub.keys[name]
                self._drop(ch, sub, name)

    def _drop(self, ch: _Channel, sub: _Sub, name: str) -> None:
        key = ch.keys.get(name)
        if key is not None:
            key.subs.pop(sub.client.id, None)
            if not key.subs:
                del ch.keys[name]
                ch.soon.discard(name)

    # --- the refresh worker --------------------------------------------------------------------------------

    def _maybe_stop(self, ch: _Channel) -> None:
        """A channel nobody subscribes to stops polling after ``channel_shutdown_delay`` (absorbs churn)."""
        if ch.subs or ch.stop is not None:
            return
        ch.stop = asyncio.get_running_loop().call_later(ch.opts.channel_shutdown_delay, self._shutdown, ch)

    def _shutdown(self, ch: _Channel) -> None:
        ch.stop = None
        if ch.subs or self._channels.get(ch.name) is not ch:
            return
        del self._channels[ch.name]
        if ch.observed:
            self._node.subscriptions.unobserve(relay_channel(ch.name), self._published)
        if ch.task is not None:
            ch.task.cancel()

    async def _stop_worker(self, ch: _Channel) -> None:
        if ch.stop is not None:
            ch.stop.cancel()
        if ch.task is not None:
            ch.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ch.task

    async def _work(self, ch: _Channel) -> None:
        """The channel's refresh loop; a bug in one cycle is logged and the next cycle runs all the same."""
        while True:
            try:
                await self._cycles(ch)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("shared poll refresh of %s failed; polling goes on", ch.name)
                await asyncio.sleep(ch.opts.refresh_interval)

    async def _cycles(self, ch: _Channel) -> None:
        loop = asyncio.get_running_loop()
        interval = ch.opts.refresh_interval
        next_cycle = loop.time() + interval
        while True:
            if not ch.soon:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(next_cycle - loop.time(), 0)):
                        await ch.wake.wait()
            ch.wake.clear()
            if ch.soon:
                soon = list(ch.soon)
                ch.soon = set()
                await self._poll_all(ch, soon, spread=0.0)
                continue
            if loop.time() < next_cycle:
                continue
            started = loop.time()
            self._expire_tracks(ch)
            names = [n for n, k in ch.keys.items() if not k.fresh]
            for key in ch.keys.values():
                key.fresh = False
            await self._poll_all(ch, names, spread=interval)
            next_cycle = max(started + interval, loop.time())

    async def _poll_all(self, ch: _Channel, names: list[str], spread: float) -> None:
        """Poll ``names`` in batches, their starts spread evenly over ``spread`` seconds."""
        size = ch.opts.refresh_batch_size
        batches = [names[i:i + size] for i in range(0, len(names), size)]
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i, batch in enumerate(batches):
            if i and spread:
                await asyncio.sleep(max(start + i * spread / len(batches) - loop.time(), 0))
            await self._poll(ch, batch)

    async def _poll(self, ch: _Channel, names: list[str]) -> None:
        items = [(n, 0 if k.behind else k.version) for n in names if (k := ch.keys.get(n)) is not None]
        if not items:
            return
        self.calls += 1
        try:
            if self._limit is None:
                answer = await self._refresh(ch.ns, ch.name, items)
            else:
                async with self._limit:
                    answer = await self._refresh(ch.ns, ch.name, items)
        except Exception as e:  # the proxy logged and counted it: this cycle is skipped, the next one retries
            logger.debug("shared poll refresh of %s failed: %s", ch.name, e)
            return
        self._apply(ch, answer)

    def _apply(self, ch: _Channel, answer: Answer) -> None:
        if ch.opts.versioned and answer.epoch != ch.epoch:
            self._new_epoch(ch, answer.epoch)
        versionless = not ch.opts.versioned
        for item in answer.items:
            key = ch.keys.get(item.key)
            if key is None:
                continue  # untracked meanwhile, or a key nobody asked for
            if item.removed:
                self._remove(ch, item.key, key)
                continue
            if item.data is None:
                continue  # unchanged (versioned mode may leave data out)
            prev: tuple[int, bytes] | None = None
            if versionless and item.version == 0:
                digest = hash(item.data)
                if key.version == 0 or digest != key.digest:
                    ch.counter += 1
                    key.version, key.digest = ch.counter, digest
                elif not key.behind:
                    continue
            elif item.version > key.version:
                if item.prev_data:  # the data of the version held so far: the base of delta subscribers' patches
                    prev = (key.version, item.prev_data)
                key.version = item.version
            elif item.version < key.version or not key.behind:
                continue  # stale, or unchanged with every tracker up to date
            key.behind = False
            self._deliver(ch, item.key, key, key.version, item.data, prev=prev)

    def _new_epoch(self, ch: _Channel, epoch: str) -> None:
        """The publisher restarted (versioned mode): versions held so far mean nothing. Subscribers are
        unsubscribed with 2500 and track again from version 0 with the new epoch, as in Centrifugo."""
        ch.epoch = epoch
        for key in ch.keys.values():
            key.version, key.digest, key.behind = 0, 0, True
        for sub in list(ch.subs.values()):
            # Its keys go now, not when the unsubscribe runs: centrifuge unsubscribes before it applies the
            # answer that changed the epoch, so that answer reaches only the subscriptions made again.
            self._untrack(ch, sub, list(sub.keys))
            sub.client.insufficient_state(ch.name)

    def _deliver(self, ch: _Channel, name: str, key: _Key, version: int, data: bytes | None,
                 epoch: str = "", prev: tuple[int, bytes] | None = None) -> None:
        """Push the key's data (None: its removal) to each tracker behind ``version``, encoded once per kind of
        connection. ``epoch`` is set for a shared_poll_publish only: centrifuge's publications of a refresh
        carry none. ``prev`` (version, data): the previous data the backend gave; a delta subscriber that got
        data of the key before and holds exactly that version is sent a fossil patch against it, computed once,
        when it is smaller than the data (centrifuge's keyedWritePublication); every other one the full data."""
        frames: dict[tuple[str, bool, str, int], bytes] = {}
        json_ok: bool | None = None
        patch: bytes | None = None  # b"": computed, not smaller than the data
        for sub in list(key.subs.values()):
            tracker = sub.keys.get(name)
            if tracker is None or (data is not None and tracker.version >= version):
                continue
            client = sub.client
            if client.protocol == "json" and data is not None:
                if json_ok is None:
                    json_ok = is_json(data)
                if not json_ok:
                    continue  # binary data from a GRPC backend: a JSON connection cannot be sent it
            form = _PLAIN
            if sub.delta and data is not None:
                if prev is not None and tracker.delta_ready and tracker.version == prev[0]:
                    if patch is None:
                        patch = fossil.create(prev[1], data)
                        patch = patch if len(patch) < len(data) else b""
                    if patch:
                        form = _PATCH
                if form == _PLAIN and client.protocol == "json":
                    form = _FULL  # protobuf's full data is the same message as a non-delta subscriber's
                tracker.delta_ready = True
            tracker.version = version
            kind = (client.protocol, client.unidirectional, client.framing, form)
            frame = frames.get(kind)
            if frame is None:
                out = client.codec
                if data is None:
                    pub = wire.removal(client.protocol, name)
                elif form == _PATCH:
                    pub = wire.publication(client.protocol, name, version, patch or b"", epoch, patch=True)
                else:
                    pub = wire.publication(client.protocol, name, version, data, epoch, as_string=form == _FULL)
                frame = frames[kind] = client.frame(out.push(out.push_publication(ch.name, pub),
                                                             client.unidirectional))
            client.enqueue_framed(frame)
        if json_ok is False:
            logger.warning("shared poll: %s key %s has non-JSON data, not sent to JSON connections", ch.name, name)

    def _remove(self, ch: _Channel, name: str, key: _Key) -> None:
        self._deliver(ch, name, key, 0, None)
        for sub in key.subs.values():
            sub.keys.pop(name, None)
        del ch.keys[name]
        ch.soon.discard(name)

    def _expire_tracks(self, ch: _Channel) -> None:
        """Drop, silently, the keys whose signature expired ``track_expired_extra_delay`` ago without a new one
        (the SDK asks its backend for a fresh signature before that)."""
        deadline = time.time() - ch.opts.track_expired_extra_delay
        for sub in list(ch.subs.values()):
            if not sub.min_expire or sub.min_expire >= deadline:
                continue
            expired = [n for n, t in sub.keys.items() if t.expire_at and t.expire_at < deadline]
            self._untrack(ch, sub, expired)
            sub.min_expire = min((t.expire_at for t in sub.keys.values() if t.expire_at), default=0)

    # --- shared_poll_publish (server API) --------------------------------------------------------------------

    async def publish(self, channel: str, key: str, version: int, epoch: str, data: bytes) -> None:
        """Push a key's new data without waiting for a poll (versioned mode, ``publish_enabled``): through the
        broker to every node, where subscribers tracking the key and holding an older version get it, and the
        next regular cycle skips the key."""
        ns = self._node.policy.namespace(channel)
        if not key or version < 1 or ns.subscription_type != "shared_poll":
            raise ReplyError(ERROR_BAD_REQUEST)
        if not ns.shared_poll.publish_enabled:
            raise ReplyError(ERROR_NOT_AVAILABLE)
        if not ns.shared_poll.versioned:
            raise ReplyError(ERROR_INTERNAL)  # as Centrifugo: not supported in versionless mode
        tags = {TAG_KEY: key, TAG_VERSION: str(version), TAG_EPOCH: epoch}
        await self._node.publish(relay_channel(channel), data, PublishOptions(tags=tags))

    def _published(self, relay: str, pub: Publication, sp: StreamPosition) -> None:
        """A shared_poll_publish from any node (the broker's reader: no awaits)."""
        ch = self._channels.get(relay.partition(":")[2])
        tags = pub.tags or {}
        if ch is None or not ch.opts.versioned or TAG_KEY not in tags:
            return
        epoch = tags.get(TAG_EPOCH, "")
        if epoch != ch.epoch:
            self._new_epoch(ch, epoch)
        key = ch.keys.get(tags[TAG_KEY])
        version = int(tags.get(TAG_VERSION, "0"))
        if key is None or version <= key.version:
            return  # not tracked here, or stale: dropped silently
        key.version, key.fresh, key.behind = version, True, False
        self._deliver(ch, tags[TAG_KEY], key, version, pub.data, epoch)

    # --- introspection (tests, benchmark) -------------------------------------------------------------------

    def tracked_keys(self, channel: str) -> int:
        ch = self._channels.get(channel)
        return len(ch.keys) if ch is not None else 0
