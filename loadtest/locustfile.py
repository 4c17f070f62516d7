"""Locust scenarios for Fugato: users that speak Centrifugo's client protocol over WebSocket.

    locust -f loadtest/locustfile.py --headless -u 200 -r 50 -t 30s --host http://127.0.0.1:8000

Environment: ``FUGATO_SECRET`` (HMAC secret for connection tokens), ``FUGATO_API_KEY``, ``FUGATO_CHANNELS``
(number of channels users spread over, default 10). Each ``Subscriber`` connects with a JWT, subscribes to a
channel and reports every publication's publish→receive time as its own metric ("WS publish→receive"); each
``Publisher`` publishes through the HTTP API with the send time in the payload.
"""

from __future__ import annotations

import json
import os
import random
import time
from typing import Any

import gevent
import jwt
import websocket
from locust import HttpUser, User, between, events, task

SECRET = os.environ.get("FUGATO_SECRET", "fugato-dev-secret-change-me-in-production")
API_KEY = os.environ.get("FUGATO_API_KEY", "dev-api-key")
CHANNELS = int(os.environ.get("FUGATO_CHANNELS", "10"))


def channel_name(i: int) -> str:
    return f"locust{i % CHANNELS}"


class Subscriber(User):
    """A WebSocket client: connect, subscribe, then receive until the test ends."""

    weight = 10
    wait_time = between(1, 2)

    def on_start(self) -> None:
        url = self.host.replace("http", "ws", 1) + "/connection/websocket"
        self.user_id = f"locust-{random.getrandbits(32):x}"
        token = jwt.encode({"sub": self.user_id, "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256")
        started = time.perf_counter()
        # A backend-like client sends no Origin header: with empty client.allowed_origins a browser Origin is
        # refused with 403 (Centrifugo's rule), and websocket-client would send one by default.
        self.ws = websocket.create_connection(url, timeout=10, suppress_origin=True)
        channel = channel_name(random.randrange(CHANNELS))
        self.ws.send(json.dumps({"id": 1, "connect": {"token": token}}) + "\n"
                     + json.dumps({"id": 2, "subscribe": {"channel": channel}}))
        replies = 0
        while replies < 2:
            for line in self.ws.recv().split("\n"):
                msg = json.loads(line)
                if msg.get("id") in (1, 2):
                    replies += 1
                    if "error" in msg:
                        raise RuntimeError(f"connect/subscribe failed: {msg['error']}")
        events.request.fire(request_type="WS", name="connect+subscribe",
                            response_time=(time.perf_counter() - started) * 1000, response_length=0, exception=None)
        self.reader = gevent.spawn(self._receive)

    def _receive(self) -> None:
        while True:
            try:
                frame = self.ws.recv()
            except (websocket.WebSocketException, OSError):
                return
            if not frame:
                return  # closed
            for line in frame.split("\n"):
                if line == "{}":
                    self.ws.send("{}")  # pong
                    continue
                msg: dict[str, Any] = json.loads(line)
                pub = msg.get("push", {}).get("pub")
                if pub is not None and isinstance(pub.get("data"), dict) and "t" in pub["data"]:
                    latency_ms = (time.time_ns() - pub["data"]["t"]) / 1e6
                    events.request.fire(request_type="WS", name="publish→receive", response_time=latency_ms,
                                        response_length=len(line), exception=None)

    @task
    def stay(self) -> None:
        """Subscribers only listen; the task keeps the user alive."""

    def on_stop(self) -> None:
        self.ws.close()
        self.reader.kill()


class Publisher(HttpUser):
    """Publishes to the channels through the server HTTP API."""

    weight = 1
    wait_time = between(0.05, 0.15)

    @task
    def publish(self) -> None:
        body = {"channel": channel_name(random.randrange(CHANNELS)), "data": {"t": time.time_ns(), "p": "x" * 80}}
        self.client.post("/api/publish", json=body, headers={"X-API-Key": API_KEY}, name="API publish")
