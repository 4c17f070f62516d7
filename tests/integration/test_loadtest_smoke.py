"""The benchmark tools keep working: a tiny, time-bounded run of each (figures are printed, never asserted)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from harness import API_KEY, REPO, SECRET, ServerFactory


async def run(*args: str, timeout: float = 90) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", *args, cwd=REPO,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_fanout_bench_delivers_everything() -> None:
    code, out = await run("loadtest.bench", "--spawn", "--subscribers", "50", "--publishers", "2", "--duration", "1")
    assert code == 0, out
    lost = [line for line in out.splitlines() if line.strip().startswith("lost")]
    assert lost == ["  lost                         0"], out
    assert "deliveries_per_server_cpu_s" in out
    busy = [float(line.split()[1]) for line in out.splitlines() if line.startswith("  machine_cpu_busy")]
    assert len(busy) == 1 and 0.0 < busy[0] <= 1.0, out


async def test_channels_and_storm_scenarios_run() -> None:
    code, out = await run("loadtest.bench", "--spawn", "--scenario", "channels", "--channels", "100",
                          "--duration", "1")
    assert code == 0, out
    code, out = await run("loadtest.bench", "--spawn", "--scenario", "storm", "--subscribers", "200")
    assert code == 0 and "connections_per_s" in out, out


async def test_engine_bench_runs_all_engines() -> None:
    code, out = await run("loadtest.engine_bench", "--messages", "500")
    assert code == 0, out
    assert "redis cluster / memory" in out


async def test_workers_bench_runs_one_then_two_workers_on_a_redis_cluster() -> None:
    code, out = await run("loadtest.bench", "--spawn", "--engine", "redis_cluster", "--workers", "1,2",
                          "--subscribers", "50", "--publishers", "2", "--duration", "1", timeout=120)
    assert code == 0, out
    lost = [line for line in out.splitlines() if line.strip().startswith("lost")]
    assert lost == ["  lost                         0"] * 2, out
    assert "2 workers / 1:" in out


async def test_nats_bench_compares_with_redis() -> None:
    code, out = await run("loadtest.bench", "--spawn", "--engine", "nats", "--subscribers", "50", "--publishers", "2",
                          "--duration", "1", timeout=120)
    assert code == 0, out
    lost = [line for line in out.splitlines() if line.strip().startswith("lost")]
    assert lost == ["  lost                         0"] * 2, out
    assert "NATS / Redis publications/s:" in out and "NATS / Redis deliveries per server CPU-second:" in out


async def test_write_delay_bench_delivers_everything() -> None:
    code, out = await run("loadtest.bench", "--spawn", "--subscribers", "50", "--write-delay-ms", "5",
                          "--duration", "1")
    assert code == 0, out
    assert "  lost                         0" in out.splitlines(), out


async def test_locust_reports_publish_to_receive_with_no_failures(server_factory: ServerFactory) -> None:
    """The README's locust run, bounded: with ``client.allowed_origins`` empty (a browser Origin is refused) the
    scenario still connects, as a backend client sends no Origin, and reports its latency entry."""
    srv = await server_factory({"client": {"allowed_origins": []}})
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("locust")), "-f", "loadtest/locustfile.py", "--headless", "-u", "20",
        "-r", "20", "-t", "5s", "--host", srv.http_url, "--only-summary", cwd=REPO,
        env={**os.environ, "FUGATO_SECRET": SECRET, "FUGATO_API_KEY": API_KEY},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out = (await asyncio.wait_for(proc.communicate(), 90))[0].decode()
    assert proc.returncode == 0, out
    # The statistics table: "WS  publish→receive  <reqs>  <fails>(<%>) | ..." (not the percentiles table).
    rows = {" ".join(line.split()[:2]): line.split() for line in out.splitlines()
            if line.startswith(("WS", "POST")) and "|" in line}
    latency = rows.get("WS publish→receive")
    assert latency is not None and int(latency[2]) > 0, out
    for row in rows.values():
        assert row[row.index("|") - 1] == "0(0.00%)", out  # no failures anywhere (a 403 would fail connects)


async def test_proxy_bench_prints_both_ratios() -> None:
    code, out = await run("loadtest.proxy_bench", "--connections", "100", "--concurrency", "10",
                          "--publications", "320", "--publishers", "8")
    assert code == 0, out
    ratios = [line for line in out.splitlines() if " per second: " in line]
    assert len(ratios) == 2 and ratios[0].startswith("connect proxy / JWT"), out
    assert all(float(line.split(": ")[1].split()[0]) > 0 for line in ratios), out


async def test_consumer_bench_runs_every_type() -> None:
    code, out = await run("loadtest.consumer_bench", "--messages", "300", "--partitions", "2", timeout=180)
    assert code == 0, out
    rates = [line.split()[0] for line in out.splitlines() if "commands/s" in line]
    assert rates == ["postgresql", "redis_stream", "nats_jetstream"], out
