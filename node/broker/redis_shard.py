"""One Redis deployment of the engine (a standalone server or a Redis Cluster): its command client, its
PUB/SUB connections and the Lua scripts, with Redis key names for channels."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable
from importlib import resources
from typing import Any, Final
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from node.broker.redis_pubsub import (
    ClusterPubSub,
    ConnectOptions,
    ErrorHandler,
    MessageHandler,
    ResyncHandler,
    StandalonePubSub,
)
from node.broker.sharding import fnv1a64
from node.config import RedisEngineConfig
from node.errors import ConfigError

SCRIPTS: Final = ("publish", "history", "presence_add", "presence_remove", "presence_get")


def _lua(name: str) -> str:
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


def _ssl_context(cfg: RedisEngineConfig, tls: bool) -> ssl.SSLContext | None:
    if not (tls or cfg.tls.enabled):
        return None
    ctx = ssl.create_default_context(cadata=cfg.tls.server_ca_pem or None)
    if cfg.tls.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class RedisShard:
    def __init__(self, url: str, cfg: RedisEngineConfig, on_message: MessageHandler, on_resync: ResyncHandler,
                 on_error: ErrorHandler) -> None:
        parts = urlsplit(url if "://" in url else "redis://" + url)
        scheme = parts.scheme
        if scheme not in ("redis", "rediss", "redis+cluster", "rediss+cluster"):
            raise ConfigError(f"engine.redis: unsupported address {url!r} (redis://, rediss://, redis+cluster://)")
        self.cluster = scheme.endswith("+cluster")
        tls = scheme.startswith("rediss")
        user = unquote(parts.username or "") or cfg.user
        password = unquote(parts.password or "") or cfg.password
        ssl_ctx = _ssl_context(cfg, tls)
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
            self.pubsub = ClusterPubSub(self.client, opts, on_message, on_resync, on_error)
        else:
            db = int(parts.path.strip("/") or cfg.db)
            host, port = _host_port(hosts[0])
            self.client = Redis(host=host, port=port, db=db, **common)
            self.pubsub = StandalonePubSub(host, port, opts, on_message, on_resync, on_error)
        self.publish_command = "spublish" if self.cluster else "publish"
        self.scripts: dict[str, AsyncScript] = {n: self.client.register_script(_lua(n)) for n in SCRIPTS}
        self.address = url
        self._batch: list[tuple[str, list[str], list[Any], asyncio.Future[Any]]] = []
        self._batch_tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if isinstance(self.client, RedisCluster):
            await self.client.initialize()
        else:
            await self.client.ping()
        await self.pubsub.start()

    async def close(self) -> None:
        await self.pubsub.close()
        await self.client.aclose()

    async def script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        return await self.scripts[name](keys=keys, args=args)

    def script_batched(self, name: str, keys: list[str], args: list[Any]) -> asyncio.Future[Any]:
        """Like ``script``, but calls made in the same event-loop tick share one pipeline (one round trip per
        Redis server), which is what makes many concurrent publishes cheap."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._batch.append((name, keys, args, fut))
        if len(self._batch) == 1:
            asyncio.get_running_loop().call_soon(self._flush_batch)
        return fut

    def _flush_batch(self) -> None:
        batch, self._batch = self._batch, []
        task = asyncio.get_running_loop().create_task(self._run_batch(batch))
        self._batch_tasks.add(task)
        task.add_done_callback(self._batch_tasks.discard)

    async def _run_batch(self, batch: list[tuple[str, list[str], list[Any], asyncio.Future[Any]]]) -> None:
        if len(batch) == 1:
            name, keys, args, fut = batch[0]
            await self._settle(fut, self.script(name, keys, args))
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for name, keys, args, _ in batch:
                pipe.execute_command("EVALSHA", self.scripts[name].sha, len(keys), *keys, *args)
            results = await pipe.execute(raise_on_error=False)
        except Exception as e:
            for *_, fut in batch:
                if not fut.done():
                    fut.set_exception(e)
            return
        for (name, keys, args, fut), result in zip(batch, results, strict=True):
            if isinstance(result, NoScriptError):
                # A promoted replica or a flushed script cache: the Script object loads it and retries.
                await self._settle(fut, self.script(name, keys, args))
            elif isinstance(result, Exception):
                if not fut.done():
                    fut.set_exception(result)
            elif not fut.done():
                fut.set_result(result)

    @staticmethod
    async def _settle(fut: asyncio.Future[Any], call: Awaitable[Any]) -> None:
        try:
            result = await call
        except Exception as e:
            if not fut.done():
                fut.set_exception(e)
            return
        if not fut.done():
            fut.set_result(result)


def _host_port(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    if not host:
        return hostport, 6379
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise ConfigError(f"engine.redis: bad port in {hostport!r}") from None
