"""Prometheus collectors, named after Centrifugo's catalogue (spec §5.5). Labels never carry channel names."""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

NAMESPACE: Final = "centrifugo"


class Metrics:
    """One registry per node so that several nodes (tests) can live in one process."""

    def __init__(self, version: str) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._reply_errors = Counter("client_num_reply_errors", "Client reply errors by method and code.",
                                     ["method", "code"], namespace=NAMESPACE, registry=r)
        self._command_duration = Histogram("client_command_duration_seconds", "Client command duration.",
                                           ["method"], namespace=NAMESPACE, registry=r)
        self._disconnects = Counter("client_num_server_disconnects", "Server-initiated disconnects by code.",
                                    ["code"], namespace=NAMESPACE, registry=r)
        self._api_duration = Histogram("api_command_duration_seconds", "Server API command duration.",
                                       ["protocol", "method"], namespace=NAMESPACE, registry=r)
        self._api_errors = Counter("api_command_errors", "Server API command errors.", ["protocol", "method", "code"],
                                   namespace=NAMESPACE, registry=r)
        self._published = Counter("node_messages_sent_count", "Messages published by this node.", ["type"],
                                  namespace=NAMESPACE, registry=r)
        self._recover = Counter("client_recover", "Subscribe recoveries by outcome.", ["recovered"],
                                namespace=NAMESPACE, registry=r)
        self.clients = Gauge("node_num_clients", "Connected clients.", namespace=NAMESPACE, registry=r)
        self.users = Gauge("node_num_users", "Unique users connected.", namespace=NAMESPACE, registry=r)
        self.subscriptions = Gauge("node_num_subscriptions", "Subscriptions.", namespace=NAMESPACE, registry=r)
        self.channels = Gauge("node_num_channels", "Channels with local subscribers.", namespace=NAMESPACE,
                              registry=r)
        build = Gauge("node_build", "Build information.", ["version"], namespace=NAMESPACE, registry=r)
        build.labels(version=version).set(1)

    def reply_error(self, method: str, code: int) -> None:
        self._reply_errors.labels(method, str(code)).inc()

    def command_duration(self, method: str, seconds: float) -> None:
        self._command_duration.labels(method).observe(seconds)

    def disconnect(self, code: int) -> None:
        self._disconnects.labels(str(code)).inc()

    def api_command(self, method: str, seconds: float, error_code: int = 0) -> None:
        self._api_duration.labels("http", method).observe(seconds)
        if error_code:
            self._api_errors.labels("http", method, str(error_code)).inc()

    def recover(self, recovered: bool) -> None:
        self._recover.labels("yes" if recovered else "no").inc()

    def published(self, kind: str) -> None:
        self._published.labels(kind).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
