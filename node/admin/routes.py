"""The admin endpoints and the UI's files, under ``admin.handler_prefix`` (Centrifugo's layout):

* ``GET  <prefix>/admin/init``: ``{"insecure", "edition", "authenticated"}`` as in Centrifugo, plus ``methods``
  (the server API methods there are) and ``node`` (which node answered): what the page needs first;
* ``POST <prefix>/admin/auth``: form field (or JSON) ``password`` → ``{"token"}``; 400 for a wrong password,
  429 with ``Retry-After`` once an address failed too often;
* ``POST <prefix>/admin/api``: ``{"method", "params"}`` run by the server API's executor (the HTTP API's legacy
  request format, as Centrifugo's admin API), with ``Authorization: token <session token>`` (or, as in
  Centrifugo, ``?token=``); never the API key;
* ``GET  <prefix>/admin/tail?channel=…``: the live tail (``tail.py``), same authorisation;
* ``GET  <prefix>/`` and the files of ``static/`` (or of ``admin.web_path``, or proxied to ``web_proxy_address``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Final

import aiohttp
import orjson
from aiohttp import web

from node.admin.session import LoginLimiter, issue_token, password_matches, token_valid
from node.admin.tail import Tails
from node.api.executor import Executor
from node.api.http import ApiHandler
from node.config import AdminConfig, HttpApiConfig
from node.node import Node

logger = logging.getLogger(__name__)

STATIC: Final = (Path(__file__).parent / "static").resolve()
# The built-in page loads nothing but its own files and talks to nothing but this server.
_BUILTIN_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class AdminUI:
    def __init__(self, node: Node, config: AdminConfig, executor: Executor) -> None:
        self.node = node
        self.config = config
        # The admin session, checked here, is what authorises a call: the API handler itself checks no key. Its
        # routes are never mounted (the admin's own route calls it), so it has no path.
        self._api = ApiHandler(executor, HttpApiConfig(handler_prefix="", insecure=True))
        self._methods = sorted(executor.methods)  # the page offers views for the methods this server has
        self.limiter = LoginLimiter()
        self.tails = Tails(node)
        self._root = Path(config.web_path).resolve() if config.web_path else STATIC

    def routes(self) -> list[web.RouteDef]:
        prefix = self.config.handler_prefix.rstrip("/")
        return [
            web.get(prefix + "/admin/init", self.init),
            web.post(prefix + "/admin/auth", self.auth),
            web.post(prefix + "/admin/api", self.api),
            web.get(prefix + "/admin/tail", self.tail),
            web.get(prefix + "/", self.page),
            *([web.get(prefix, self.to_slash)] if prefix else []),
            web.get(prefix + "/{path:.+}", self.page),
        ]

    # --- sessions --------------------------------------------------------------------------------------

    def authorized(self, request: web.Request) -> bool:
        if self.config.insecure:
            return True
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "token":
            token = request.query.get("token", "")
        return token_valid(self.config.secret, token.strip())

    async def init(self, request: web.Request) -> web.Response:
        return web.json_response({"insecure": self.config.insecure, "edition": "oss",
                                  "authenticated": self.authorized(request), "methods": self._methods,
                                  "node": {"uid": self.node.id, "name": self.node.name}})

    async def auth(self, request: web.Request) -> web.Response:
        address = request.remote or ""
        wait = self.limiter.retry_after(address)
        if wait > 0:
            return web.json_response({"error": "too many failed logins", "retry_after": int(wait) + 1}, status=429,
                                     headers={"Retry-After": str(int(wait) + 1)})
        if not self.config.password or not self.config.secret:
            logger.error("admin login refused: admin.password and admin.secret must be set")
            return web.json_response({"error": "admin login is not configured"}, status=400)
        if password_matches(await _password(request), self.config.password):
            self.limiter.succeeded(address)
            return web.json_response({"token": issue_token(self.config.secret)})
        self.limiter.failed(address)
        logger.warning("admin login failed from %s", address)
        return web.json_response({"error": "wrong password"}, status=400)

    # --- the admin endpoints ---------------------------------------------------------------------------

    async def api(self, request: web.Request) -> web.StreamResponse:
        if not self.authorized(request):
            return web.Response(status=401)
        return await self._api.legacy(request)

    async def tail(self, request: web.Request) -> web.StreamResponse:
        if not self.authorized(request):
            return web.Response(status=401)
        channel = request.query.get("channel", "")
        if not channel or len(channel) > self.node.config.channel.max_length:
            return web.json_response({"error": "bad channel"}, status=400)
        return await self.tails.stream(request, channel)

    # --- the page ---------------------------------------------------------------------------------------

    async def to_slash(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(request.path + "/")  # the page's relative URLs need the trailing slash

    async def page(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info.get("path", "") or "index.html"
        if self.config.web_proxy_address:
            return await _proxy(self.config.web_proxy_address.rstrip("/") + "/" + path)
        file = (self._root / path).resolve()
        if not file.is_relative_to(self._root) or not file.is_file():
            raise web.HTTPNotFound()
        headers = _BUILTIN_HEADERS if self._root == STATIC else {}
        return web.FileResponse(file, headers={**headers, "Cache-Control": "no-cache"})


async def _password(request: web.Request) -> str:
    if request.content_type == "application/json":
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return ""
        value = body.get("password") if isinstance(body, dict) else None
        return value if isinstance(value, str) else ""
    form = await request.post()
    value = form.get("password", "")
    return value if isinstance(value, str) else ""


async def _proxy(url: str) -> web.Response:
    """``admin.web_proxy_address``: the UI's files from a web app's development server (GET only)."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session, \
                session.get(url) as upstream:
            body = await upstream.read()
            return web.Response(body=body, status=upstream.status,
                                content_type=upstream.content_type or "application/octet-stream")
    except (aiohttp.ClientError, TimeoutError) as e:
        logger.warning("admin web proxy %s: %s", url, e)
        return web.Response(status=502, text="Bad Gateway")


def add_admin(app: web.Application, node: Node, executor: Executor) -> None:
    """Serve the admin UI from ``app`` (the caller checked ``admin.enabled``)."""
    config = node.config.admin
    ui = AdminUI(node, config, executor)
    app.router.add_routes(ui.routes())
    where = (config.handler_prefix.rstrip("/") or "") + "/"
    if config.insecure:
        logger.warning("!!! admin.insecure is on: the admin web UI at %s needs NO LOGIN and lets anyone who can "
                       "reach it publish, disconnect clients and remove history. Use it only on a trusted "
                       "network, never in production without a firewall. !!!", where)
    elif not config.password or not config.secret:
        logger.error("admin.enabled is set but admin.password and admin.secret are not: nobody can log in")
    else:
        logger.info("admin web UI at %s", where)

    async def end_tails(app: web.Application) -> None:
        ui.tails.close_all()

    app.on_shutdown.append(end_tails)


__all__ = ("AdminUI", "add_admin")
