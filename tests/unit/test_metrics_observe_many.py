"""``metrics._observe_many`` uses prometheus_client's histogram internals (there is no public call that adds
many observations at once): these tests pin that behaviour, so a prometheus_client upgrade that moves the
internals fails here instead of silently falling back to one observation at a time."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Histogram

from node import metrics

BUCKETS = (0.001, 0.01, 0.1, 1.0)


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[str, str], float]:
    return {(s.name, s.labels.get("le", "")): s.value for m in registry.collect() for s in m.samples
            if s.name.startswith(name) and not s.name.endswith("_created")}


def test_the_internals_it_relies_on_are_there() -> None:
    child = Histogram("h", "h", ["m"], buckets=BUCKETS, registry=CollectorRegistry()).labels("x")
    assert len(child._upper_bounds) == len(BUCKETS) + 1  # +Inf last
    assert len(child._buckets) == len(child._upper_bounds)
    assert hasattr(child._sum, "inc")


@pytest.mark.parametrize("amount", [0.0005, 0.05, 0.5, 7.0])
def test_many_observations_at_once_equal_as_many_single_ones(amount: float) -> None:
    many, single = CollectorRegistry(), CollectorRegistry()
    metrics._observe_many(Histogram("h", "h", ["m"], buckets=BUCKETS, registry=many).labels("x"), amount, 37)
    one_by_one = Histogram("h", "h", ["m"], buckets=BUCKETS, registry=single).labels("x")
    for _ in range(37):
        one_by_one.observe(amount)
    got, want = samples(many, "h"), samples(single, "h")
    assert got == pytest.approx(want)
    assert got[("h_count", "")] == 37


def test_different_amounts_at_once_equal_as_many_single_ones() -> None:
    amounts = [0.0005, 0.001, 0.001, 0.0011, 0.05, 0.1, 0.5, 7.0, 0.0, 0.0002] * 3
    many, single = CollectorRegistry(), CollectorRegistry()
    metrics._observe_each(Histogram("h", "h", ["m"], buckets=BUCKETS, registry=many).labels("x"), amounts)
    one_by_one = Histogram("h", "h", ["m"], buckets=BUCKETS, registry=single).labels("x")
    for amount in amounts:
        one_by_one.observe(amount)
    got, want = samples(many, "h"), samples(single, "h")
    assert got == pytest.approx(want)
    assert got[("h_count", "")] == len(amounts)


def exposed(m: metrics.Metrics, line: str) -> float:
    for row in m.render().decode().splitlines():
        if row.startswith(line + " "):
            return float(row.rsplit(" ", 1)[1])
    raise AssertionError(f"{line} not exposed")


async def test_observations_of_one_loop_iteration_are_applied_together() -> None:
    m = metrics.Metrics("test")
    for seconds in (0.0002, 0.003, 0.003):
        m.api_command("publish", seconds)
    m.published("publication")
    m.published("publication", 2)
    m.api_command("publish", 0.001, 107)
    count = 'centrifugo_api_command_duration_seconds_count{method="publish",protocol="http"}'
    assert m._observed_due, "kept until the iteration ends"
    await asyncio.sleep(0)
    assert not m._observed_due and not m._sent_due
    assert m._api_duration.labels("http", "publish")._sum.get() == pytest.approx(0.0072)
    m.api_command("publish", 0.5)
    # /metrics shows everything observed, applied or not yet.
    assert exposed(m, count) == 5
    assert exposed(m, 'centrifugo_api_command_duration_seconds_bucket{le="0.0025",method="publish",'
                      'protocol="http"}') == 2
    assert exposed(m, 'centrifugo_node_messages_sent_count_total{type="publication"}') == 3
    assert exposed(m, 'centrifugo_api_command_errors_total{code="107",method="publish",protocol="http"}') == 1
    m.received("publication", 4)
    m.received("join")
    m.observe(m.pub_sub_lag, 0.02)
    m.observe(m.pub_sub_lag, 0.0003)
    assert exposed(m, 'centrifugo_node_messages_received_count_total{type="publication"}') == 4
    assert exposed(m, 'centrifugo_node_messages_received_count_total{type="join"}') == 1
    assert exposed(m, "centrifugo_node_pub_sub_lag_seconds_count") == 2
    assert exposed(m, 'centrifugo_node_pub_sub_lag_seconds_bucket{le="0.0005"}') == 1


def test_without_a_loop_observations_apply_at_once() -> None:
    m = metrics.Metrics("test")
    m.api_command("info", 0.002)
    m.published("join")
    m.received("control")
    assert not m._observed_due and not m._sent_due and not m._received_due
    assert exposed(m, 'centrifugo_api_command_duration_seconds_count{method="info",protocol="http"}') == 1


def test_multiprocess_mode_aggregates_them(tmp_path: Path) -> None:
    """Workers run prometheus_client in multiprocess mode, where the value cells are mmap-backed: the same
    shortcut must show in what /metrics aggregates from the files."""
    script = textwrap.dedent("""
        from prometheus_client import CollectorRegistry, Histogram
        from prometheus_client.multiprocess import MultiProcessCollector
        from node import metrics
        h = Histogram("mh", "mh", ["m"], buckets=(0.01, 0.1, 1.0))
        metrics._observe_many(h.labels("x"), 0.05, 12)
        h.labels("x").observe(0.5)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        values = {(s.name, s.labels.get("le", "")): s.value for m in registry.collect() for s in m.samples}
        assert values[("mh_count", "")] == 13, values
        assert values[("mh_bucket", "0.01")] == 0, values
        assert values[("mh_bucket", "0.1")] == 12, values
        assert values[("mh_bucket", "1.0")] == 13, values
        assert abs(values[("mh_sum", "")] - (0.05 * 12 + 0.5)) < 1e-9, values
        print("ok")
    """)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", script], check=False, env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
