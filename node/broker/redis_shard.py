"""One Redis deployment of the engine (a standalone server or a Redis Cluster): its command client, its
PUB/SUB connections and the Lua scripts, with Redis key names for channels."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import hiredis
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, NodesManager, RedisCluster
from redis.commands.core import AsyncScript
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from node.broker.redis_pipe import RECONNECT_DELAY, PipeError, RedisPipe, encode
from node.broker.redis_pubsub import (
    ClusterPubSub,
    ConnectOptions,
    ErrorHandler,
    MessageHandler,
    ResyncHandler,
    StandalonePubSub,
)
from node.broker.sharding import fnv1a64
from node.broker.tls import client_context
from node.config_engine import RedisEngineConfig
from node.errors import ConfigError

SCRIPTS: Final = ("publish", "history", "presence_add", "presence_remove", "presence_get", "map_publish",
                  "map_touch")
KEY_SLOT_CACHE_SIZE: Final = 65536  # keys whose Cluster slot is kept (the cache starts over when full)
_RETRIED_ERRORS: Final = ("NOSCRIPT", "MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN", "LOADING", "READONLY",
                          "MASTERDOWN")


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """One EVALSHA: its encoded command for the fast path, and its parts for redis-py (the fallback)."""

    name: str
    command: bytes
    keys: list[str]  # the first one routes the call (every key of a call shares one slot)
    args: list[Any]


class ScriptError(Exception):
    """A Lua script failed on the server (its error reply), for this call only."""


def _lua(name: str) -> str:
    if name == "map_publish":
        # publish.lua with a prologue spliced in at its marker line and an epilogue for its final return: a map
        # key's state changes in the same atomic step as its stream entry (see map_prologue.lua).
        publish = _lua("publish")
        splice = publish.index("-- (map_publish.lua:")
        return publish[:splice] + _lua("map_prologue") + publish[splice:publish.rindex("return")] + \
            _lua("map_epilogue")
    return resources.files("node.broker").joinpath("lua", f"{name}.lua").read_text()


def hash_tagged(channel: str) -> str:
    """The channel as a Redis Cluster hash tag, so every key of a channel lands in one slot. A channel that
    contains braces would break the tag, so it is tagged by its hash instead (and kept after the tag)."""
    if "{" in channel or "}" in channel:
        return f"{{h{fnv1a64(channel.encode()):x}}}{channel}"
    return "{" + channel + "}"


class Keys:
    """Key and PUB/SUB channel names under the configured prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.control = f"{prefix}.control".encode()

    def node(self, node_id: str) -> bytes:
        return f"{self.prefix}.node.{node_id}".encode()

    def client_channel(self, channel: str) -> bytes:
        return f"{self.prefix}.client.{hash_tagged(channel)}".encode()

    def stream(self, channel: str) -> str:
        return f"{self.prefix}.stream.{hash_tagged(channel)}"

    def meta(self, channel: str) -> str:
        return f"{self.prefix}.stream.meta.{hash_tagged(channel)}"

    def result(self, channel: str, idempotency_key: str) -> str:
        return f"{self.prefix}.result.{hash_tagged(channel)}.{idempotency_key}"

    def presence(self, channel: str) -> tuple[str, str]:
        tag = hash_tagged(channel)
        return f"{self.prefix}.presence.expire.{tag}", f"{self.prefix}.presence.data.{tag}"


class RedisShard:
    def __init__(self, url: str, cfg: RedisEngineConfig, on_message: MessageHandler, on_resync: ResyncHandler,
                 on_error: ErrorHandler) -> None:
        parts = urlsplit(url if "://" in url else "redis://" + url)
        scheme = parts.scheme
        if scheme not in ("redis", "rediss", "redis+cluster", "rediss+cluster"):
            raise ConfigError(f"engine.redis: unsupported address {url!r} (redis://, rediss://, redis+cluster://)")
        self.cluster = scheme.endswith("+cluster")
        self._host, self._port, self._db = "", 0, 0
        self._slots: NodesManager | None = None  # the Cluster's slot map (kept up to date by redis-py)
        tls = scheme.startswith("rediss")
        user = unquote(parts.username or "") or cfg.user
        password = unquote(parts.password or "") or cfg.password
        ssl_ctx = client_context(cfg.tls, required=tls)
        common: dict[str, Any] = {
            "username": user or None, "password": password or None,
            "socket_connect_timeout": cfg.connect_timeout, "socket_timeout": cfg.io_timeout,
        }
        if ssl_ctx is not None:
            common.update(ssl=True, ssl_check_hostname=ssl_ctx.check_hostname,
                          ssl_cert_reqs="required" if ssl_ctx.verify_mode != ssl.CERT_NONE else "none",
                          ssl_ca_data=cfg.tls.server_ca_pem or None)
        hosts = [h for h in parts.netloc.rpartition("@")[2].split(",") if h]
        if not hosts:
            raise ConfigError(f"engine.redis: no host in {url!r}")
        opts = ConnectOptions(username=user, password=password, ssl_context=ssl_ctx,
                              connect_timeout=cfg.connect_timeout)
        self.client: Redis | RedisCluster
        self.pubsub: StandalonePubSub | ClusterPubSub
        if self.cluster:
            nodes = [ClusterNode(*_host_port(h)) for h in hosts]
            self.client = RedisCluster(startup_nodes=nodes, **common)
            self._slots = self.client.nodes_manager
            self.pubsub = ClusterPubSub(self.client, opts, on_message, on_resync, on_error)
        else:
            db = int(parts.path.strip("/") or cfg.db)
            host, port = _host_port(hosts[0])
            self._host, self._port, self._db = host, port, db
            self.client = Redis(host=host, port=port, db=db, **common)
            self.pubsub = StandalonePubSub(host, port, opts, on_message, on_resync, on_error)
        self.publish_command = "spublish" if self.cluster else "publish"
        self._sources = [_lua(n) for n in SCRIPTS]
        self.scripts: dict[str, AsyncScript] = {n: self.client.register_script(src)
                                                for n, src in zip(SCRIPTS, self._sources, strict=True)}
        self.address = url
        self._heads = {n: encode(("EVALSHA", s.sha)).split(b"\r\n", 1)[1] for n, s in self.scripts.items()}
        self._pipes: dict[str, RedisPipe] = {}  # server ("host:port" in a Cluster) → its command connection
        self._key_slots: dict[str, int] = {}  # a Cluster's key → its hash slot (which server has it: redis-py's map)
        self._connect_opts = opts
        self._io_timeout = cfg.io_timeout
        self._tasks: set[asyncio.Task[None]] = set()  # calls gone the slow way (run_then)

    async def start(self) -> None:
        if isinstance(self.client, RedisCluster):
            await self.client.initialize()
        else:
            await self.client.ping()
        await self.pubsub.start()

    async def close(self) -> None:
        for pipe in self._pipes.values():
            pipe.close()  # calls still waiting fail over to redis-py tasks, cancelled right below
        for task in list(self._tasks):
            task.cancel()
        # A connect under way is cancelled; wait for it, so that no half-made connection outlives the engine.
        await asyncio.gather(*(p.connecting for p in self._pipes.values() if p.connecting is not None),
                             return_exceptions=True)
        await self.pubsub.close()
        await self.client.aclose()

    # --- scripts ---------------------------------------------------------------------------------------

    def _pipe(self, key: str) -> RedisPipe | None:
        """The command connection to the server holding ``key`` (its slot owner in a Cluster); None while a
        recent connect to it failed, or the slot map does not know the key (then redis-py takes the call)."""
        if self._slots is not None:
            slot = self._key_slots.get(key)
            if slot is None:  # a pure function of the key (crc16 in Python, ~0.6 µs): once per key
                if len(self._key_slots) >= KEY_SLOT_CACHE_SIZE:
                    self._key_slots.clear()
                slot = self._key_slots[key] = key_slot(key.encode())
            try:
                node = self._slots.get_node_from_slot(slot)
            except RedisError:
                return None
            name, host, port = node.name, node.host, int(node.port)
        else:
            name, host, port = "", self._host, self._port
        pipe = self._pipes.get(name)
        if pipe is None or pipe.closed:
            loop = asyncio.get_running_loop()
            if pipe is not None and loop.time() - pipe.failed_at < RECONNECT_DELAY:
                return None
            pipe = self._pipes[name] = RedisPipe(host, port, self._connect_opts, db=self._db,
                                                 io_timeout=self._io_timeout, scripts=self._sources)
            pipe.connect()
        return pipe

    def head(self, name: str, nargs: int) -> bytes:
        """The encoded start of an EVALSHA of script ``name`` with ``nargs`` arguments after the SHA."""
        return b"*%d\r\n%s" % (nargs + 2, self._heads[name])

    def call(self, name: str, keys: list[str], args: list[Any]) -> ScriptCall:
        command = encode((len(keys), *keys, *args), self._heads[name], 2)
        return ScriptCall(name, command, keys, args)

    async def script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run a Lua script on the server holding ``keys`` (they share one slot). Calls made in the same
        event-loop iteration share one write and one round trip (redis_pipe.py)."""
        return await self.run(self.call(name, keys, args))

    async def run(self, call: ScriptCall) -> Any:
        pipe = self._pipe(call.keys[0])
        if pipe is not None:
            try:
                reply = await pipe.call(call.command)
            except PipeError:
                pass  # in doubt: redis-py runs it again, with its reconnects and retries
            else:
                if type(reply) is not hiredis.ReplyError:
                    return reply
                if not _elsewhere(reply):
                    raise ScriptError(str(reply))
        return await self.scripts[call.name](keys=call.keys, args=call.args)

    def run_then(self, call: ScriptCall, done: Callable[[Any], None]) -> None:
        """``run`` without a coroutine: ``done`` gets the reply or the exception, once. The reply of the fast
        path reaches it straight from the connection's protocol callback; only a call that needs redis-py (a
        moved slot, a lost connection) gets a task."""
        pipe = self._pipe(call.keys[0])
        if pipe is None:
            self._slow(call, done)
            return

        def reply(value: Any) -> None:
            if type(value) is hiredis.ReplyError:
                if _elsewhere(value):
                    self._slow(call, done)
                else:
                    done(ScriptError(str(value)))
            elif isinstance(value, PipeError):
                self._slow(call, done)
            else:
                done(value)

        pipe.call_then(call.command, reply)

    async def _run_slow(self, call: ScriptCall, done: Callable[[Any], None]) -> None:
        try:
            result = await self.scripts[call.name](keys=call.keys, args=call.args)
        except Exception as e:
            done(e)
            return
        done(result)

    def _slow(self, call: ScriptCall, done: Callable[[Any], None]) -> None:
        """Run ``call`` through redis-py in a task of the shard's; ``done`` gets a PipeError if the task is
        cancelled, so its caller never waits for ever (and never hears twice)."""
        answered = False

        def once(value: Any) -> None:
            nonlocal answered
            if not answered:
                answered = True
                done(value)

        task = asyncio.get_running_loop().create_task(self._run_slow(call, once))
        self._tasks.add(task)

        def finished(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            if task.cancelled():
                once(PipeError("the engine is closing"))

        task.add_done_callback(finished)

    def run_many(self, calls: Sequence[ScriptCall]) -> Awaitable[list[Any]]:
        """``run`` for many calls at once: they are sent now (one future per server for the whole group), and
        the awaitable gives each call's reply or its exception, in the order of ``calls``."""
        by_pipe: dict[RedisPipe | None, list[int]] = {}
        for i, call in enumerate(calls):
            by_pipe.setdefault(self._pipe(call.keys[0]), []).append(i)
        retry = by_pipe.pop(None, [])
        sent = [(idxs, pipe.call_many([calls[i].command for i in idxs]))
                for pipe, idxs in by_pipe.items() if pipe is not None]
        return self._collect(calls, sent, retry)

    async def _collect(self, calls: Sequence[ScriptCall], sent: list[tuple[list[int], asyncio.Future[list[Any]]]],
                       retry: list[int]) -> list[Any]:
        results: list[Any] = [None] * len(calls)
        for idxs, fut in sent:
            try:
                replies = await fut
            except PipeError:
                retry.extend(idxs)
                continue
            for i, reply in zip(idxs, replies, strict=True):
                if type(reply) is not hiredis.ReplyError:
                    results[i] = reply
                elif _elsewhere(reply):
                    retry.append(i)
                else:
                    results[i] = ScriptError(str(reply))
        await self._retry(calls, sorted(retry), results)
        return results

    async def _retry(self, calls: Sequence[ScriptCall], idxs: list[int], results: list[Any]) -> None:
        """Run the calls the fast path could not through redis-py, one after another (per-channel order); once
        the server proves unreachable the rest fail the same way instead of each waiting out the retries."""
        down: Exception | None = None
        for i in idxs:
            if down is not None:
                results[i] = down
                continue
            call = calls[i]
            try:
                results[i] = await self.scripts[call.name](keys=call.keys, args=call.args)
            except (RedisConnectionError, RedisTimeoutError) as e:
                results[i] = down = e
            except Exception as e:
                results[i] = e


def _elsewhere(reply: hiredis.ReplyError) -> bool:
    """Whether an error reply means "not here / not now" (a missing script, a moved slot, a failover), which
    redis-py knows how to handle, rather than the script's own failure."""
    return str(reply).startswith(_RETRIED_ERRORS)


def _host_port(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    if not host:
        return hostport, 6379
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise ConfigError(f"engine.redis: bad port in {hostport!r}") from None
