"""Prometheus collectors, named after Centrifugo's catalogue (spec §5.5). Labels never carry channel names.

Counters get the ``_total`` suffix in the exposition and durations are histograms. With several workers
(``PROMETHEUS_MULTIPROC_DIR`` set by ``fugato serve --workers``) every worker writes its values to shared files
and any worker's ``/metrics`` shows the sum over the live workers.
"""

from __future__ import annotations

import asyncio
import os
from bisect import bisect_left
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

from node.broker.base import PUBSUB_ERRORS
from node.procstats import WorkerProcessCollector

NAMESPACE: Final = "centrifugo"
MULTIPROCESS: Final = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
# Per-event latencies of a real-time server are small: finer buckets than prometheus_client's defaults.
FAST_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                       5.0)


def _observe_many(histogram: Histogram, amount: float, count: int) -> None:
    """``count`` observations of the same ``amount`` at the cost of one. prometheus_client has no such call,
    and a batch of 100 publishes observing each (1.2 µs apiece) cost more than publishing them; this relies
    on the child's value cells (``_sum``, ``_buckets``, ``_upper_bounds``), which have been stable across its
    versions, and falls back to observing one by one if they are gone."""
    try:
        bounds, buckets, total = histogram._upper_bounds, histogram._buckets, histogram._sum
    except AttributeError:
        for _ in range(count):
            histogram.observe(amount)
        return
    total.inc(amount * count)
    for i, bound in enumerate(bounds):
        if amount <= bound:
            buckets[i].inc(count)
            break


def _observe_each(histogram: Histogram, amounts: list[float]) -> None:
    """Observations of several amounts with one update per bucket they fall in (the internals as in
    ``_observe_many``)."""
    try:
        bounds, buckets, total = histogram._upper_bounds, histogram._buckets, histogram._sum
    except AttributeError:
        for amount in amounts:
            histogram.observe(amount)
        return
    total.inc(sum(amounts))
    counts: dict[int, int] = {}
    for amount in amounts:
        i = bisect_left(bounds, amount)  # the first bound >= amount; the last bound is +Inf
        counts[i] = counts.get(i, 0) + 1
    for i, n in counts.items():
        buckets[i].inc(n)


def _forget_dead_workers() -> None:
    """Drop the live gauges of worker processes that no longer exist. The supervisor's event listener does
    this when a worker exits; checking here as well keeps /metrics right even if that notice was missed."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if name.startswith("gauge_live") and name.endswith(".db"):
            pid = int(name.rsplit("_", 1)[1][:-3])
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
            except PermissionError:
                pass  # alive, but not ours


class Metrics:
    """One registry per node, so that several nodes (tests) can live in one process."""

    def __init__(self, version: str) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        r.register(WorkerProcessCollector(None))
        ns = NAMESPACE
        self._reply_errors = Counter("client_num_reply_errors", "Client reply errors by method and code.",
                                     ["method", "code"], namespace=ns, registry=r)
        self._command_duration = Histogram("client_command_duration_seconds", "Client command duration.",
                                           ["method"], namespace=ns, registry=r, buckets=FAST_BUCKETS)
        self._disconnects = Counter("client_num_server_disconnects", "Server-initiated disconnects by code.",
                                    ["code"], namespace=ns, registry=r)
        self._recover = Counter("client_recover", "Subscribe recoveries by outcome.", ["recovered"],
                                namespace=ns, registry=r)
        self._ping_pong = Histogram("client_ping_pong_duration_seconds", "Time from a server ping to the pong.",
                                    ["transport"], namespace=ns, registry=r, buckets=FAST_BUCKETS)
        self._transport_connects = Counter("transport_connect_count", "Connections accepted, by transport.",
                                           ["transport"], namespace=ns, registry=r)
        self._api_duration = Histogram("api_command_duration_seconds", "Server API command duration.",
                                       ["protocol", "method"], namespace=ns, registry=r, buckets=FAST_BUCKETS)
        self._api_errors = Counter("api_command_errors", "Server API command errors.", ["protocol", "method", "code"],
                                   namespace=ns, registry=r)
        self._pubsub_errors = Counter("broker_redis_pub_sub_errors", "Redis PUB/SUB failures, by kind.", ["error"],
                                      namespace=ns, registry=r)
        for kind in PUBSUB_ERRORS:  # exported at 0 from the start, so alerts and rate() see the series
            self._pubsub_errors.labels(kind)
        self._api_durations: dict[tuple[str, str], Histogram] = {}
        self._sent_by_kind: dict[str, Counter] = {}
        # What concurrent calls observed during the current event-loop iteration, applied once when it ends
        # (``_settle``): 64 HTTP callers publishing one message each then update each series once per
        # iteration instead of once per call (a locked update per bucket and sum), with the same values.
        # ``render`` settles first.
        self._observed_due: dict[Histogram, list[float]] = {}
        self._sent_due: dict[str, int] = {}
        self._received_due: dict[str, int] = {}
        self._settling = False
        self._sent = Counter("node_messages_sent_count", "Messages this node sent to the broker, by type.", ["type"],
                             namespace=ns, registry=r)
        received = Counter("node_messages_received_count", "Messages this node received from the broker, by type.",
                           ["type"], namespace=ns, registry=r)
        self._received_by_kind = {kind: received.labels(kind) for kind in ("publication", "join", "leave", "control")}
        self.broadcast_duration = Histogram("node_broadcast_duration_seconds",
                                            "Time to fan a publication out to local subscribers.", namespace=ns,
                                            registry=r, buckets=FAST_BUCKETS)
        self.pub_sub_lag = Histogram("node_pub_sub_lag_seconds", "Publication time to arrival at this node.",
                                     namespace=ns, registry=r, buckets=FAST_BUCKETS)
        self._consumer_processed = Counter("consumers_messages_processed", "Messages a consumer processed (and "
                                           "acknowledged), by consumer.", ["consumer_name"], namespace=ns, registry=r)
        self._consumer_errors = Counter("consumers_errors", "Consumer errors (retried later), by consumer.",
                                        ["consumer_name"], namespace=ns, registry=r)
        self._consumer_poison = Counter("consumers_messages_skipped", "Poison messages a consumer logged and "
                                        "skipped, by consumer and reason.", ["consumer_name", "reason"],
                                        namespace=ns, registry=r)
        # In multiprocess mode gauges add up over live workers; a dead worker's values vanish with it.
        self.clients = Gauge("node_num_clients", "Connected clients.", namespace=ns, registry=r,
                             multiprocess_mode="livesum")
        self.users = Gauge("node_num_users", "Unique users connected.", namespace=ns, registry=r,
                           multiprocess_mode="livesum")
        self.subscriptions = Gauge("node_num_subscriptions", "Subscriptions.", namespace=ns, registry=r,
                                   multiprocess_mode="livesum")
        self.channels = Gauge("node_num_channels", "Channels with local subscribers.", namespace=ns, registry=r,
                              multiprocess_mode="livesum")
        build = Gauge("node_build", "Build information.", ["version"], namespace=ns, registry=r,
                      multiprocess_mode="livemax")
        build.labels(version=version).set(1)

    def reply_error(self, method: str, code: int) -> None:
        self._reply_errors.labels(method, str(code)).inc()

    def command_duration(self, method: str, seconds: float) -> None:
        self._command_duration.labels(method).observe(seconds)

    def pubsub_error(self, kind: str) -> None:
        self._pubsub_errors.labels(kind).inc()

    def disconnect(self, code: int) -> None:
        self._disconnects.labels(str(code)).inc()

    def ping_pong(self, transport: str, seconds: float) -> None:
        self._ping_pong.labels(transport).observe(seconds)

    def transport_connect(self, transport: str) -> None:
        self._transport_connects.labels(transport).inc()

    def api_command(self, method: str, seconds: float, error_code: int = 0, *, protocol: str = "http") -> None:
        duration = self._api_durations.get((protocol, method))
        if duration is None:  # labels() costs about as much as the observation: once per series
            duration = self._api_durations[(protocol, method)] = self._api_duration.labels(protocol, method)
        self.observe(duration, seconds)
        if error_code:
            self._api_errors.labels(protocol, method, str(error_code)).inc()

    def api_commands(self, method: str, seconds: float, count: int, error_codes: list[int], *,
                     protocol: str = "http") -> None:
        """``count`` commands that ran together for ``seconds`` (a batch's group): each is observed."""
        _observe_many(self._api_duration.labels(protocol, method), seconds, count)
        for code in error_codes:
            self._api_errors.labels(protocol, method, str(code)).inc()

    def recover(self, recovered: bool) -> None:
        self._recover.labels("yes" if recovered else "no").inc()

    def published(self, kind: str, count: int = 1) -> None:
        """Messages of ``kind`` sent to the broker."""
        sent = self._sent_due
        sent[kind] = sent.get(kind, 0) + count
        if not self._settling:
            self._settle_soon()

    def received(self, kind: str, count: int = 1) -> None:
        """Messages of ``kind`` (publication, join, leave, control) received from the broker."""
        received = self._received_due
        received[kind] = received.get(kind, 0) + count
        if not self._settling:
            self._settle_soon()

    def observe(self, histogram: Histogram, amount: float) -> None:
        """``histogram.observe(amount)``, applied when the event-loop iteration ends (see ``_observed_due``)."""
        due = self._observed_due.get(histogram)
        if due is None:
            due = self._observed_due[histogram] = []
        due.append(amount)
        if not self._settling:
            self._settle_soon()

    def _settle_soon(self) -> None:
        loop = asyncio._get_running_loop()
        if loop is None:  # no loop to come back round: now
            self._settle()
            return
        self._settling = True
        loop.call_soon(self._settle)

    def _settle(self) -> None:
        """Apply what was observed since the last call (see ``_observed_due``)."""
        self._settling = False
        observed, self._observed_due = self._observed_due, {}
        for histogram, amounts in observed.items():
            if len(amounts) == 1:
                histogram.observe(amounts[0])
            else:
                _observe_each(histogram, amounts)
        sent, self._sent_due = self._sent_due, {}
        for kind, count in sent.items():
            counter = self._sent_by_kind.get(kind)
            if counter is None:
                counter = self._sent_by_kind[kind] = self._sent.labels(kind)
            counter.inc(count)
        received, self._received_due = self._received_due, {}
        for kind, count in received.items():
            self._received_by_kind[kind].inc(count)

    def consumer_processed(self, consumer: str, n: int = 1) -> None:
        self._consumer_processed.labels(consumer).inc(n)

    def consumer_error(self, consumer: str) -> None:
        self._consumer_errors.labels(consumer).inc()

    def consumer_skipped(self, consumer: str, reason: str) -> None:
        self._consumer_poison.labels(consumer, reason).inc()

    def consumer_init(self, consumer: str) -> None:
        """Export a consumer's series at 0 from the start, as Centrifugo does."""
        self._consumer_processed.labels(consumer)
        self._consumer_errors.labels(consumer)

    def render(self) -> bytes:
        self._settle()
        if MULTIPROCESS:
            _forget_dead_workers()
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            registry.register(WorkerProcessCollector(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
            return generate_latest(registry)
        return generate_latest(self.registry)
