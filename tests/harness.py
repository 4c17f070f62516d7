"""Shared test helpers: a real server in a subprocess, tokens, API calls, SDK clients that record events.

Fixtures in ``conftest.py`` are thin wrappers around what is here.

* ``ServerProcess``: writes a config file, runs ``python -m node serve``, waits for ``/health``, calls the
  HTTP API, mints JWTs, stops the process. The process is a plain ``subprocess.Popen``, so one server can
  outlive an event loop (module-scoped fixtures).
* ``PyClient``: a ``centrifuge.Client`` (centrifuge-python) whose client and subscription events are
  recorded into an ``EventLog`` that tests can wait on.
* ``wait_until()``: poll API-observable state until a predicate holds.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import warnings
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Self, TypeVar

import aiohttp
import cent
import centrifuge  # type: ignore[import-untyped]  # centrifuge-python ships no py.typed
import jwt
from jsclient import EventLog, JsClient

REPO = Path(__file__).resolve().parent.parent

SECRET = "fugato-test-hmac-secret-0123456789abcdef"  # >= 32 bytes: PyJWT warns about shorter HS256 keys
API_KEY = "fugato-test-api-key"

# Channels: "plain" (no namespace) lets subscribers publish and read presence/history;
# "chat:" adds presence, join/leave, history, recovery, positioning and fossil deltas on request;
# "feed:" is server-published only, with forced recovery and positioning;
# "secret:" allows nothing without a subscription token.
BASE_CONFIG: dict[str, Any] = {
    "log": {"level": "info"},
    "client": {
        "token": {"hmac_secret_key": SECRET},
        "allowed_origins": ["*"],
    },
    "http_api": {"key": API_KEY},
    "channel": {
        "without_namespace": {
            "presence": True,
            "allow_subscribe_for_client": True,
            "allow_publish_for_subscriber": True,
            "allow_presence_for_subscriber": True,
            "allow_history_for_subscriber": True,
        },
        "namespaces": [
            {
                "name": "chat",
                "presence": True,
                "join_leave": True,
                "history_size": 100,
                "history_ttl": "300s",
                "allow_subscribe_for_client": True,
                "allow_publish_for_subscriber": True,
                "allow_presence_for_subscriber": True,
                "allow_history_for_subscriber": True,
                "allow_recovery": True,
                "allow_positioning": True,
                "allowed_delta_types": ["fossil"],
            },
            {
                "name": "feed",
                "history_size": 100,
                "history_ttl": "300s",
                "force_recovery": True,
                "force_positioning": True,
                "allow_subscribe_for_client": True,
                "allow_history_for_subscriber": True,
            },
            {"name": "secret"},
        ],
    },
}

T = TypeVar("T")

# The call signatures of the js_factory / py_factory fixtures (see conftest.py).
JsFactory = Callable[..., Awaitable[JsClient]]
PyFactory = Callable[..., Awaitable["PyClient"]]

# What asyncio, aiohttp and Python print about a task, socket or session that was left behind (see
# ServerProcess.check_clean_shutdown and the conftest fixture that checks the test process itself). Files that
# libraries keep open for the life of the process (prometheus_client's multiprocess files) are not ours to close.
LEAK_MARKERS: Final = ("Task was destroyed but it is pending", "unclosed transport", "unclosed <socket",
                       "Unclosed client session", "Unclosed connector", "unclosed event loop")


# -- config ----------------------------------------------------------------------------------------------


def merge_config(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` deep-merged over ``base`` (neither is modified).

    Objects merge key by key; other values (lists included) replace, except ``channel.namespaces``, which
    merges by namespace ``name`` (a known name is deep-merged, a new one appended). Set a key to ``None``
    to delete it from the result.
    """
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        elif key == "namespaces" and isinstance(value, list) and isinstance(out.get(key), list):
            out[key] = _merge_namespaces(out[key], value)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _merge_namespaces(base: list[Any], override: list[Any]) -> list[Any]:
    merged = [copy.deepcopy(ns) for ns in base]
    index = {ns.get("name"): i for i, ns in enumerate(merged) if isinstance(ns, Mapping)}
    for ns in override:
        name = ns.get("name") if isinstance(ns, Mapping) else None
        if name in index:
            merged[index[name]] = merge_config(merged[index[name]], ns)
        else:
            merged.append(copy.deepcopy(ns))
    return merged


def make_config(override: Mapping[str, Any] | None = None, *, base: bool = True) -> dict[str, Any]:
    """The base test config with ``override`` merged over it (or ``override`` alone if ``base`` is false)."""
    return merge_config(BASE_CONFIG if base else {}, override or {})


def engine_config(engine: str, cluster_url: str = "", prefix: str = "") -> dict[str, Any]:
    """The config section of a test's engine: "memory" (the default, nothing to add) or "redis_cluster" (the
    given cluster, keys under ``prefix``)."""
    if engine == "memory":
        return {}
    return {"engine": {"type": "redis", "redis": {"address": [cluster_url], "prefix": prefix}}}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (another process may still take it before we bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def unique_channel(prefix: str = "chat:") -> str:
    """A channel name no other test uses: ``prefix`` + a random suffix."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


async def wait_until(
    predicate: Callable[[], T | Awaitable[T]], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> T:
    """Re-evaluate ``predicate`` (sync or async) every ``interval`` seconds until it returns something truthy;
    return that. For state only observable by asking (API results); events should be awaited instead."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() >= deadline:
            raise AssertionError(f"condition {what or getattr(predicate, '__name__', predicate)} still false "
                                 f"after {timeout}s (last value: {value!r})")
        await asyncio.sleep(interval)


# -- the server ------------------------------------------------------------------------------------------


class ServerProcess:
    """One ``python -m node serve`` process with its config file and log file.

    ``start()`` may be called again after ``stop()``: same config, same port (for restart tests).
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        workdir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        name: str = "server",
        env: Mapping[str, str] | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.config: dict[str, Any] = copy.deepcopy(dict(config))
        self.workdir = workdir
        self.host = host
        self._port_fixed = port is not None
        self.port = port if port is not None else free_port(host)
        self.name = name
        self.env = dict(env or {})
        self.extra_args = extra_args
        self.config_path = workdir / f"{name}.json"
        self.log_path = workdir / f"{name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self.stopped_by_test = False

    # -- addresses and credentials --

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        prefix = self.config.get("websocket", {}).get("handler_prefix", "/connection/websocket")
        return f"ws://{self.host}:{self.port}{prefix}"

    @property
    def api_url(self) -> str:
        """The base URL of the HTTP API (``cent.AsyncClient`` posts to ``<api_url>/<method>``)."""
        prefix = self.config.get("http_api", {}).get("handler_prefix", "/api")
        return f"{self.http_url}{prefix}"

    @property
    def api_key(self) -> str:
        return str(self.config.get("http_api", {}).get("key", ""))

    @property
    def secret(self) -> str:
        return str(self.config.get("client", {}).get("token", {}).get("hmac_secret_key", ""))

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle --

    def _launch(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config, indent=2))
        # Unclosed sockets and files are reported in the log (Python hides ResourceWarning by default); see
        # stop_sync, which fails the test when a server that stopped gracefully left any behind.
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "always::ResourceWarning", **self.env}
        self._log_file = self.log_path.open("ab")
        self._log_file.write(f"=== start: port {self.port} ===\n".encode())
        self._log_file.flush()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "node", "serve", "--config", str(self.config_path),
             "--port", str(self.port), "--host", self.host, *self.extra_args],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=str(REPO),
            env=env,
        )
        self.stopped_by_test = False

    def _port_conflict(self) -> bool:
        tail = self.log_tail(20).lower()
        return "address already in use" in tail or "errno 98" in tail

    async def start(self, timeout: float = 40.0) -> Self:
        """Launch and wait until ``GET /health`` answers 200; fail with the log tail otherwise."""
        for attempt in range(3):
            self._launch()
            if await self._wait_healthy(timeout):
                return self
            if self._port_conflict() and not self._port_fixed and attempt < 2:
                self._close_log()
                self.port = free_port(self.host)
                continue
            break
        return self._fail_start(timeout)

    def start_sync(self, timeout: float = 40.0) -> Self:
        """``start()`` for code without an event loop (module-scoped fixtures)."""
        for attempt in range(3):
            self._launch()
            if self._wait_healthy_sync(timeout):
                return self
            if self._port_conflict() and not self._port_fixed and attempt < 2:
                self._close_log()
                self.port = free_port(self.host)
                continue
            break
        return self._fail_start(timeout)

    def _fail_start(self, timeout: float) -> Self:
        rc = self.returncode
        if rc is None:
            self._kill_sync()
            reason = f"did not answer GET /health with 200 within {timeout}s"
        else:
            reason = f"exited with code {rc} before answering GET /health"
        raise AssertionError(f"{self.name} (port {self.port}) {reason}\n{self.log_report()}")

    async def _wait_healthy(self, timeout: float) -> bool:
        # Polling (every 50 ms) is the only option: the server process offers nothing to wait on.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        client_timeout = aiohttp.ClientTimeout(total=1.0)
        async with aiohttp.ClientSession(timeout=client_timeout) as session:
            while loop.time() < deadline:
                if not self.running:
                    return False
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(f"{self.http_url}/health") as resp:
                        if resp.status == 200:
                            return True
                await asyncio.sleep(0.05)
        return False

    def _wait_healthy_sync(self, timeout: float) -> bool:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no env proxies for localhost
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                return False
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                opener.open(f"{self.http_url}/health", timeout=1.0) as resp,
            ):
                if resp.status == 200:
                    return True
            time.sleep(0.05)
        return False

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send ``sig``, wait up to ``timeout`` s for the exit (then SIGKILL); return the exit code."""
        return await asyncio.to_thread(self.stop_sync, sig, timeout)

    def stop_sync(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        proc = self._proc
        if proc is None:
            raise AssertionError(f"{self.name} was never started")
        self.stopped_by_test = True
        graceful = False
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
                graceful = sig in (signal.SIGTERM, signal.SIGINT)
            except subprocess.TimeoutExpired:
                self._kill_sync()
        self._close_log()
        if graceful:
            self.check_clean_shutdown()
        return int(proc.returncode)

    def check_clean_shutdown(self) -> None:
        """An orderly shutdown awaits every task and closes every resource: asyncio's "Task was destroyed but it
        is pending!" or an unclosed socket, file or session in the log is a failure."""
        leaks = [line for line in self.log_text().splitlines() if any(m in line for m in LEAK_MARKERS)]
        if leaks:
            raise AssertionError(f"{self.name} did not shut down cleanly:\n" + "\n".join(leaks[:20]))

    async def wait_exit(self, timeout: float = 15.0) -> int:
        """Wait for the process to exit on its own (after a signal the test sent); return the exit code."""
        proc = self._proc
        if proc is None:
            raise AssertionError(f"{self.name} was never started")
        self.stopped_by_test = True
        try:
            await asyncio.to_thread(proc.wait, timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} did not exit within {timeout}s\n{self.log_report(30)}") from None
        self._close_log()
        return int(proc.returncode)

    def send_signal(self, sig: int) -> None:
        """Signal the process without waiting (SIGHUP reload, say)."""
        if self._proc is None or self._proc.poll() is not None:
            raise AssertionError(f"{self.name} is not running\n{self.log_report()}")
        self._proc.send_signal(sig)

    def _kill_sync(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    # -- logs --

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def log_report(self, lines: int = 60) -> str:
        """A header plus the last lines of the log, for assertion messages."""
        return f"--- last {lines} lines of {self.log_path} ---\n{self.log_tail(lines)}"

    # -- HTTP --

    async def http(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, dict[str, str], bytes]:
        """A raw HTTP request to the server: (status, headers, body)."""
        data: bytes | None = body
        hdrs = dict(headers or {})
        if json_body is not None:
            data = json.dumps(json_body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.request(method, f"{self.http_url}{path}", data=data, headers=hdrs) as resp,
        ):
            return resp.status, dict(resp.headers), await resp.read()

    async def api_raw(
        self,
        method: str,
        payload: Any = None,
        *,
        headers: Mapping[str, str] | None = None,
        auth: bool = True,
        body: bytes | None = None,
    ) -> tuple[int, bytes]:
        """``POST /api/<method>``: (status, body). Sends ``X-API-Key`` with the configured key unless ``auth`` is
        false or ``headers`` has one; ``body`` replaces the JSON-encoded ``payload``."""
        hdrs = dict(headers or {})
        if auth and not any(k.lower() == "x-api-key" for k in hdrs):
            hdrs["X-API-Key"] = self.api_key
        if body is None:
            body = json.dumps({} if payload is None else payload).encode()
            hdrs.setdefault("Content-Type", "application/json")
        path = self.api_url[len(self.http_url):] + (f"/{method}" if method else "")
        status, _, data = await self.http("POST", path, body=body, headers=hdrs)
        return status, data

    async def api(self, method: str, payload: Any = None, **kwargs: Any) -> dict[str, Any]:
        """``POST /api/<method>`` and return the parsed JSON body (asserts HTTP 200 and a JSON object)."""
        status, data = await self.api_raw(method, payload, **kwargs)
        if status != 200:
            raise AssertionError(f"API {method} {payload!r}: HTTP {status} {data[:500]!r}\n{self.log_report(30)}")
        try:
            parsed = json.loads(data)
        except ValueError:
            raise AssertionError(f"API {method}: body is not JSON: {data[:500]!r}\n{self.log_report(30)}") from None
        if not isinstance(parsed, dict):
            raise AssertionError(f"API {method}: body is not a JSON object: {parsed!r}")
        return parsed

    async def api_result(self, method: str, payload: Any = None) -> dict[str, Any]:
        """``api()``, asserting the reply has no ``error``; returns its ``result`` (``{}`` if absent)."""
        reply = await self.api(method, payload)
        if "error" in reply:
            raise AssertionError(f"API {method} {payload!r} failed: {reply['error']}")
        result = reply.get("result", {})
        assert isinstance(result, dict), reply
        return result

    def cent(self, timeout: float = 10.0) -> cent.AsyncClient:
        """A ``cent.AsyncClient`` for this server; use ``async with`` (or ``close()``) to release it."""
        return cent.AsyncClient(self.api_url, self.api_key, timeout=timeout)

    # -- tokens --

    def token(self, user: str, ttl: float | None = 3600, *, secret: str | None = None, **claims: Any) -> str:
        """A connection JWT (HS256) for ``user``: ``sub``, ``exp`` = now + ``ttl`` (none if ``ttl`` is None),
        plus ``claims`` (which may override both)."""
        payload: dict[str, Any] = {"sub": user}
        if ttl is not None:
            payload["exp"] = int(time.time() + ttl)
        payload.update(claims)
        return _hs256(payload, self.secret if secret is None else secret)

    def sub_token(
        self, user: str, channel: str, ttl: float | None = 3600, *, secret: str | None = None, **claims: Any
    ) -> str:
        """A subscription JWT (HS256): ``sub``, ``channel``, ``exp`` plus ``claims``. Signed with the
        ``client.subscription_token`` key when one is configured, else the connection token key."""
        payload: dict[str, Any] = {"sub": user, "channel": channel}
        if ttl is not None:
            payload["exp"] = int(time.time() + ttl)
        payload.update(claims)
        if secret is None:
            sub_cfg = self.config.get("client", {}).get("subscription_token", {})
            secret = sub_cfg.get("hmac_secret_key") if sub_cfg.get("enabled") else None
        return _hs256(payload, secret or self.secret)


def _hs256(payload: Mapping[str, Any], secret: str) -> str:
    with warnings.catch_warnings():
        # Tests may configure short secrets on purpose; PyJWT's key-length warning is not about the server.
        warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
        return jwt.encode(dict(payload), secret, algorithm="HS256")


class ServerFactory:
    """Starts servers for one test (or module) and stops them all at the end."""

    def __init__(self, workdir_factory: Callable[[str], Path]) -> None:
        self._workdir_factory = workdir_factory
        self.servers: list[ServerProcess] = []

    def _make(
        self, config: Mapping[str, Any] | None, base: bool, name: str | None, kwargs: Mapping[str, Any]
    ) -> ServerProcess:
        label = name or f"server{len(self.servers)}"
        server = ServerProcess(make_config(config, base=base), self._workdir_factory(label), name=label, **kwargs)
        self.servers.append(server)
        return server

    async def __call__(
        self,
        config: Mapping[str, Any] | None = None,
        *,
        base: bool = True,
        name: str | None = None,
        start: bool = True,
        **kwargs: Any,
    ) -> ServerProcess:
        """A server with ``config`` merged over the base test config (``base=False``: ``config`` alone).
        ``kwargs`` go to ``ServerProcess`` (port, env, extra_args, host)."""
        server = self._make(config, base, name, kwargs)
        return await server.start() if start else server

    def start_sync(
        self, config: Mapping[str, Any] | None = None, *, base: bool = True, name: str | None = None,
        **kwargs: Any,
    ) -> ServerProcess:
        return self._make(config, base, name, kwargs).start_sync()

    async def close(self) -> None:
        await asyncio.to_thread(self.close_sync)

    def close_sync(self) -> None:
        """Stop every server; fail if one had died on its own (a crash the test did not ask for)."""
        crashed: list[str] = []
        for server in self.servers:
            if server._proc is None:
                continue
            if not server.running and not server.stopped_by_test and server.returncode != 0:
                crashed.append(f"{server.name} exited by itself with code {server.returncode}\n"
                               f"{server.log_report()}")
            try:
                server.stop_sync()
            except AssertionError as e:  # an unclean shutdown: stop the others all the same, then report it
                crashed.append(str(e))
        self.servers.clear()
        if crashed:
            raise AssertionError("\n\n".join(crashed))


# -- centrifuge-python client ----------------------------------------------------------------------------


@dataclass
class PyEvent:
    """One recorded SDK event: ``kind`` is the handler name without ``on_`` (server-side subscription events
    get a ``server_`` prefix, subscription errors are ``sub_error``); ``channel`` is set for channel events."""

    kind: str
    channel: str | None
    ctx: Any
    at: float = field(default_factory=time.monotonic)


class _ClientRecorder(centrifuge.ClientEventHandler):  # type: ignore[misc]
    def __init__(self, log: EventLog[PyEvent]) -> None:
        self.log = log

    async def on_connecting(self, ctx: centrifuge.ConnectingContext) -> None:
        self.log.append(PyEvent("connecting", None, ctx))

    async def on_connected(self, ctx: centrifuge.ConnectedContext) -> None:
        self.log.append(PyEvent("connected", None, ctx))

    async def on_disconnected(self, ctx: centrifuge.DisconnectedContext) -> None:
        self.log.append(PyEvent("disconnected", None, ctx))

    async def on_error(self, ctx: centrifuge.ErrorContext) -> None:
        self.log.append(PyEvent("error", None, ctx))

    async def on_subscribed(self, ctx: centrifuge.ServerSubscribedContext) -> None:
        self.log.append(PyEvent("server_subscribed", ctx.channel, ctx))

    async def on_subscribing(self, ctx: centrifuge.ServerSubscribingContext) -> None:
        self.log.append(PyEvent("server_subscribing", ctx.channel, ctx))

    async def on_unsubscribed(self, ctx: centrifuge.ServerUnsubscribedContext) -> None:
        self.log.append(PyEvent("server_unsubscribed", ctx.channel, ctx))

    async def on_publication(self, ctx: centrifuge.ServerPublicationContext) -> None:
        self.log.append(PyEvent("server_publication", ctx.channel, ctx))

    async def on_join(self, ctx: centrifuge.ServerJoinContext) -> None:
        self.log.append(PyEvent("server_join", ctx.channel, ctx))

    async def on_leave(self, ctx: centrifuge.ServerLeaveContext) -> None:
        self.log.append(PyEvent("server_leave", ctx.channel, ctx))


class _SubRecorder(centrifuge.SubscriptionEventHandler):  # type: ignore[misc]
    def __init__(self, log: EventLog[PyEvent], channel: str) -> None:
        self.log = log
        self.channel = channel

    async def on_subscribing(self, ctx: centrifuge.SubscribingContext) -> None:
        self.log.append(PyEvent("subscribing", self.channel, ctx))

    async def on_subscribed(self, ctx: centrifuge.SubscribedContext) -> None:
        self.log.append(PyEvent("subscribed", self.channel, ctx))

    async def on_unsubscribed(self, ctx: centrifuge.UnsubscribedContext) -> None:
        self.log.append(PyEvent("unsubscribed", self.channel, ctx))

    async def on_publication(self, ctx: centrifuge.PublicationContext) -> None:
        self.log.append(PyEvent("publication", self.channel, ctx))

    async def on_join(self, ctx: centrifuge.JoinContext) -> None:
        self.log.append(PyEvent("join", self.channel, ctx))

    async def on_leave(self, ctx: centrifuge.LeaveContext) -> None:
        self.log.append(PyEvent("leave", self.channel, ctx))

    async def on_error(self, ctx: centrifuge.SubscriptionErrorContext) -> None:
        self.log.append(PyEvent("sub_error", self.channel, ctx))


class PyClient:
    """A centrifuge-python ``Client`` whose events land in ``self.log`` (an ``EventLog[PyEvent]``)."""

    def __init__(self, url: str, token: str = "", *, name: str = "py", **client_kwargs: Any) -> None:
        self.name = name
        self.log: EventLog[PyEvent] = EventLog(name, self.describe)
        client_kwargs.setdefault("proxy", None)  # never route test traffic through an env-configured proxy
        client_kwargs.setdefault("min_reconnect_delay", 0.05)
        client_kwargs.setdefault("max_reconnect_delay", 1.0)
        self.client = centrifuge.Client(url, events=_ClientRecorder(self.log), token=token, **client_kwargs)

    async def connect(self, wait: bool = True, timeout: float = 10.0) -> Self:
        """Start connecting; with ``wait``, return once connected (fails if it ends disconnected)."""
        await self.client.connect()
        if wait:
            event = await self.wait_event(lambda e: e.kind in ("connected", "disconnected"), timeout)
            if event.kind != "connected":
                raise AssertionError(f"{self.name}: disconnected instead of connecting: {event.ctx}\n"
                                     f"{self.describe()}")
        return self

    def new_subscription(self, channel: str, **kwargs: Any) -> centrifuge.Subscription:
        """``client.new_subscription`` with recording handlers (kwargs: token, recoverable, join_leave, ...)."""
        return self.client.new_subscription(channel, events=_SubRecorder(self.log, channel), **kwargs)

    async def subscribe(
        self, channel: str, wait: bool = True, timeout: float = 10.0, **kwargs: Any
    ) -> centrifuge.Subscription:
        """Create (or reuse) the subscription and subscribe; with ``wait``, return once subscribed."""
        sub = self.client.get_subscription(channel) or self.new_subscription(channel, **kwargs)
        await sub.subscribe()
        if wait:
            event = await self.wait_event(
                lambda e: e.channel == channel and e.kind in ("subscribed", "unsubscribed"), timeout
            )
            if event.kind != "subscribed":
                raise AssertionError(f"{self.name}: {channel} unsubscribed instead: {event.ctx}\n{self.describe()}")
        return sub

    def events(self, kind: str | None = None, channel: str | None = None) -> list[PyEvent]:
        return [e for e in self.log.items
                if (kind is None or e.kind == kind) and (channel is None or e.channel == channel)]

    async def wait_event(self, predicate: Callable[[PyEvent], bool], timeout: float = 10.0) -> PyEvent:
        return await self.log.wait(predicate, timeout)

    async def wait(self, kind: str, channel: str | None = None, timeout: float = 10.0) -> PyEvent:
        """The next unconsumed ``kind`` event (of ``channel``, if given)."""
        def predicate(e: PyEvent) -> bool:
            return e.kind == kind and (channel is None or e.channel == channel)
        predicate.__name__ = f"{kind}({channel or '*'})"
        return await self.log.wait(predicate, timeout)

    def describe(self, last: int = 25) -> str:
        lines = [f"--- last {last} events of {self.name} ---"]
        lines += [f"{e.kind} {e.channel or ''} {e.ctx!r}"[:500] for e in self.log.items[-last:]]
        return "\n".join(lines)

    async def close(self) -> None:
        await self.client.disconnect()
        # The SDK closes its WebSocket in a background task; let it finish (bounded) so the socket is not left
        # open when the test's event loop ends (a ResourceWarning later, which filterwarnings=error fails).
        pending = [t for t in self.client._background_tasks if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=2.0)
        self.log.close()

    async def __aenter__(self) -> Self:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def js_connected(server: ServerProcess, js_factory: JsFactory, user: str = "alice",
                       protocol: str = "json") -> JsClient:
    """A centrifuge-js driver connected to ``server`` as ``user`` ("" = anonymous) over ``protocol``; a JSON one
    also reports its WebSocket frames."""
    js = await js_factory(server, {"protocol": protocol, "trace": protocol == "json"})
    await js.call("connect", token=server.token(user) if user else "", wait=True)
    return js


def js_value(data: Any) -> Any:
    """A JSON payload as the application published it: the protobuf build hands payloads over as bytes."""
    if isinstance(data, dict) and "__bytes__" in data:
        return json.loads(base64.b64decode(data["__bytes__"]))
    return data


def engine_server(request: Any, tmp_path_factory: Any, config: Mapping[str, Any]) -> Iterator[ServerProcess]:
    """For a module-scoped server fixture parametrized by engine: a server with ``config`` on the memory engine
    or ("redis_cluster") on the session's Redis Cluster under a prefix of its own; stopped after the module."""
    config = dict(config)
    if request.param == "redis_cluster":
        cluster = request.getfixturevalue("redis_cluster")
        config["engine"] = {"type": "redis", "redis": {"address": [cluster.url],
                                                       "prefix": "fgt" + uuid.uuid4().hex[:8]}}
    factory = ServerFactory(tmp_path_factory.mktemp)
    yield factory.start_sync(config)
    factory.close_sync()
