"""Composition root: builds the aiohttp applications of one node from a Config, and runs them.

The external application serves client transports. The server API, health and metrics go on the internal
address when ``http_server.internal_port`` is set (as in Centrifugo), else on the external one too.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Final

import grpc
from aiohttp import web

from node import VERSION_STRING
from node.admin.routes import add_admin
from node.api.executor import Executor
from node.api.fastpath import FastApi
from node.api.grpc_server import start_grpc_server
from node.api.http import ApiHandler
from node.auth.jwt import JWTVerifier
from node.broker.factory import build_engine
from node.config import Config
from node.consumers.runner import Consumers
from node.errors import NodeError
from node.liveness import Heartbeat, start_heartbeat
from node.metrics import Metrics
from node.node import Node
from node.policy import Policy
from node.proxy.python import Handlers
from node.transports.routes import add_transport_routes
from node.transports.uni_grpc import start_uni_grpc_server
from node.transports.websocket import websocket_handler

logger = logging.getLogger(__name__)

NODE_KEY: Final = web.AppKey("node", Node)


def build_node(config: Config, handlers: Handlers | None = None) -> Node:
    verifier = JWTVerifier(config.client.token, config.client.subscription_token,
                           skip_signature=config.client.insecure_skip_token_signature_verify)
    node_id = str(uuid.uuid4())
    return Node(config, build_engine(config, node_id), Policy(config, verifier), Metrics(VERSION_STRING),
                node_id=node_id, handlers=handlers)


def _separate_internal(config: Config) -> bool:
    internal = config.http_server.internal_port
    return bool(internal) and internal != config.http_server.port


def _add_internal_routes(app: web.Application, node: Node, api: ApiHandler | None, consumers: Consumers) -> None:
    config = node.config
    if api is not None:
        app.router.add_routes(api.routes())
    if config.health.enabled:
        async def health(request: web.Request) -> web.Response:
            if not node.healthy():
                return web.json_response({"error": "engine unavailable"}, status=503)
            failing = consumers.errors()
            return web.json_response({"consumers": failing} if failing else {})

        app.router.add_get(config.health.handler_prefix, health)
    if config.prometheus.enabled:
        async def metrics(request: web.Request) -> web.Response:
            return web.Response(body=node.metrics.render(), content_type="text/plain", charset="utf-8")

        app.router.add_get(config.prometheus.handler_prefix, metrics)


@dataclass(frozen=True, slots=True)
class Apps:
    node: Node
    external: web.Application
    internal: web.Application | None  # None: everything is served by ``external``
    external_api: ApiHandler | None = None  # the HTTP API each application serves, if any
    internal_api: ApiHandler | None = None
    max_body: int = 1024**2


def build_apps(config: Config, handlers: Handlers | None = None) -> Apps:
    node = build_node(config, handlers)
    client_max_size = max(config.websocket.message_size_limit, 1024**2)
    app = web.Application(client_max_size=client_max_size)
    app[NODE_KEY] = node

    async def ws(request: web.Request) -> web.StreamResponse:
        return await websocket_handler(request, node)

    if not config.websocket.disabled:
        app.router.add_get(config.websocket.handler_prefix, ws)
    add_transport_routes(app, node)
    executor = Executor(node)
    api = None if config.http_api.disabled else ApiHandler(executor, config.http_api)
    consumers = Consumers(config.consumers, executor)
    internal: web.Application | None = None
    external_api = internal_api = None
    if _separate_internal(config):
        internal = web.Application(client_max_size=client_max_size)
        _add_internal_routes(internal, node, api, consumers)
        internal_api = api
        if api is not None and config.http_api.external:
            app.router.add_routes(api.routes())
            external_api = api
    else:
        _add_internal_routes(app, node, api, consumers)
        external_api = api
    if config.admin.enabled:  # an internal endpoint in Centrifugo too, unless admin.external
        add_admin(internal if internal is not None and not config.admin.external else app, node, Executor(node))

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await node.start()
        consumers.start()
        logger.info("node %s (%s) started", node.name, node.id)
        yield
        await consumers.close()
        await node.shutdown(0)  # clients were already told in on_shutdown; this closes the engine

    async def on_shutdown(app: web.Application) -> None:
        # Runs after the listener stopped accepting and before aiohttp drops open connections, so every client
        # gets a 3001 close frame and reconnects elsewhere. Consumers stop first: no new commands meanwhile.
        await consumers.close()
        await node.shutdown_clients(config.shutdown.timeout)

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(on_shutdown)
    return Apps(node, app, internal, external_api, internal_api, client_max_size)


def build_app(config: Config, *, handlers: Handlers | None = None) -> web.Application:
    """The external application alone (tests and embedding); ``handlers`` are in-process proxy hooks."""
    return build_apps(config, handlers).external


async def serve(config: Config, stop: asyncio.Event, *, reuse_port: bool = False,
                reload: Callable[[], Config] | None = None) -> None:
    """Serve until ``stop`` is set, then shut down gracefully within ``shutdown.timeout``."""
    apps = build_apps(config)
    timeout = config.shutdown.timeout
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[None]] = set()
    if reload is not None:
        def on_sighup() -> None:
            task = loop.create_task(_reload(apps.node, reload))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_sighup)
    runners: list[web.AppRunner] = []
    listeners: list[_Listener] = []
    grpc_servers: list[grpc.aio.Server] = []
    heartbeat: Heartbeat | None = None
    # handler_cancellation: a streaming response (HTTP-stream, SSE) learns that its client left only through the
    # cancellation of its handler; nothing else wakes a handler that waits for the server to end the stream.
    external = web.AppRunner(apps.external, access_log=None, shutdown_timeout=timeout, handle_signals=False,
                             handler_cancellation=True)
    await external.setup()
    runners.append(external)
    try:
        host = config.http_server.address or None
        listeners.append(await _listen(external, apps.external_api, apps.max_body, host, config.http_server.port,
                                       reuse_port))
        if apps.internal is not None:
            internal = web.AppRunner(apps.internal, access_log=None, shutdown_timeout=timeout, handle_signals=False)
            await internal.setup()
            runners.append(internal)
            listeners.append(await _listen(internal, apps.internal_api, apps.max_body,
                                           config.http_server.internal_address or None,
                                           config.http_server.internal_port, reuse_port))
        logger.info("node %s serving on %s:%d%s", apps.node.name, host or "*", config.http_server.port,
                    f" (internal :{config.http_server.internal_port})" if apps.internal is not None else "")
        if config.grpc_api.enabled:
            grpc_servers.append(await start_grpc_server(Executor(apps.node), config.grpc_api, reuse_port=reuse_port))
        if config.uni_grpc.enabled:
            grpc_servers.append(await start_uni_grpc_server(apps.node, config.uni_grpc, reuse_port=reuse_port))
        heartbeat = start_heartbeat()  # a worker under supervisord tells it that its loop runs
        # Everything built so far (modules, the node, the engine's clients) lives as long as the process: out of
        # the collector's sight, a full collection only walks what came since. Under load the publications
        # waiting for Redis's reply survive the youngest generation, and then full collections of the whole
        # heap cost ~12% of a single publish's CPU (callgrind, loadtest.publish_instructions). The startup's
        # garbage is collected first, so that what is frozen is only what is still in use.
        gc.collect()
        gc.freeze()
        await stop.wait()
        logger.info("shutting down")
    finally:
        # Refuses new calls, lets running ones finish; uni streams end when the node disconnects their clients
        # (the external runner's shutdown below), so they get the grace period too.
        await asyncio.gather(*(server.stop(timeout) for server in grpc_servers))
        for listener in listeners:
            listener.stop_accepting()
        # The external runner first: its on_shutdown disconnects clients while the API can still answer.
        for runner in runners:
            await runner.cleanup()
        for listener in listeners:
            listener.close_idle()
        await asyncio.gather(*reloads, return_exceptions=True)  # a reload under way finishes first
        if heartbeat is not None:  # last: a long graceful shutdown is not a stuck loop
            heartbeat.close()


@dataclass(slots=True)
class _Listener:
    """A listening socket whose connections start on the API fast path (``fast`` None: plain aiohttp site)."""

    server: asyncio.Server | None
    fast: FastApi | None

    def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close()

    def close_idle(self) -> None:
        if self.fast is not None:
            self.fast.close_idle()


async def _listen(runner: web.AppRunner, api: ApiHandler | None, max_body: int, host: str | None, port: int,
                  reuse_port: bool) -> _Listener:
    """Listen for ``runner``'s application; where it serves the HTTP API, connections go through the lean
    API protocol first (node/api/fastpath.py), which hands everything else to aiohttp."""
    if api is None:
        await web.TCPSite(runner, host, port, reuse_port=reuse_port or None).start()
        return _Listener(None, None)
    assert runner.server is not None
    fast = FastApi(runner.server, api, max_body)
    server = await asyncio.get_running_loop().create_server(fast, host, port, reuse_port=reuse_port or None)
    return _Listener(server, fast)


async def _reload(node: Node, reload: Callable[[], Config]) -> None:
    """SIGHUP: take channel options and token keys from the config file again (Centrifugo's reload)."""
    try:
        fresh = reload()
        verifier = JWTVerifier(fresh.client.token, fresh.client.subscription_token,
                               skip_signature=fresh.client.insecure_skip_token_signature_verify)
    except NodeError as e:
        logger.error("reload failed, keeping the running configuration: %s", e)
        return
    await node.reload(fresh.channel, fresh.client.token, fresh.client.subscription_token, verifier)
    logger.info("reloaded channel options and token keys")


def run_server(config: Config, *, reuse_port: bool = False, reload: Callable[[], Config] | None = None) -> None:
    """Serve until SIGINT/SIGTERM; SIGHUP reloads (when ``reload`` can re-read the configuration)."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, stop, reuse_port=reuse_port, reload=reload)

    logger.info("starting Fugato %s", VERSION_STRING)
    asyncio.run(main())
