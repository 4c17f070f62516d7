"""Composition root: builds the aiohttp application for one node from a Config, and runs it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Final

from aiohttp import web

from node import VERSION_STRING
from node.api.executor import Executor
from node.api.http import ApiHandler
from node.auth.jwt import JWTVerifier
from node.broker.base import Engine
from node.broker.memory import MemoryBroker, MemoryPresenceManager
from node.config import Config
from node.metrics import Metrics
from node.node import Node
from node.policy import Policy
from node.transports.websocket import websocket_handler

logger = logging.getLogger(__name__)

NODE_KEY: Final = web.AppKey("node", Node)


def build_engine(config: Config) -> Engine:
    return Engine(broker=MemoryBroker(history_meta_ttl=config.channel.history_meta_ttl),
                  presence=MemoryPresenceManager())


def build_node(config: Config) -> Node:
    verifier = JWTVerifier(config.client.token, config.client.subscription_token,
                           skip_signature=config.client.insecure_skip_token_signature_verify)
    return Node(config, build_engine(config), Policy(config, verifier), Metrics(VERSION_STRING))


def build_app(config: Config) -> web.Application:
    node = build_node(config)
    app = web.Application(client_max_size=max(config.websocket.message_size_limit, 1024**2))
    app[NODE_KEY] = node

    async def ws(request: web.Request) -> web.StreamResponse:
        return await websocket_handler(request, node)

    if not config.websocket.disabled:
        app.router.add_get(config.websocket.handler_prefix, ws)
    if not config.http_api.disabled:
        app.router.add_routes(ApiHandler(Executor(node), config.http_api).routes())
    if config.health.enabled:
        async def health(request: web.Request) -> web.Response:
            return web.json_response({})

        app.router.add_get(config.health.handler_prefix, health)
    if config.prometheus.enabled:
        async def metrics(request: web.Request) -> web.Response:
            return web.Response(body=node.metrics.render(), content_type="text/plain", charset="utf-8")

        app.router.add_get(config.prometheus.handler_prefix, metrics)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await node.start()
        logger.info("node %s (%s) started", node.name, node.id)
        yield
        await node.shutdown(0)  # clients were already told in on_shutdown; this closes the engine

    async def on_shutdown(app: web.Application) -> None:
        # Runs after the listener stopped accepting and before aiohttp drops open connections, so every client
        # gets a 3001 close frame and reconnects elsewhere.
        await node.shutdown_clients(config.shutdown.timeout)

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(on_shutdown)
    return app


def run_server(config: Config) -> None:
    """Serve until SIGINT/SIGTERM, then shut down gracefully within ``shutdown.timeout``."""
    host = config.http_server.address or None
    logger.info("starting Fugato %s on %s:%d", VERSION_STRING, host or "*", config.http_server.port)
    web.run_app(build_app(config), host=host, port=config.http_server.port, print=None,
                shutdown_timeout=config.shutdown.timeout, access_log=None, handle_signals=True)
