"""The benchmark tools keep working: a tiny, time-bounded run of each (figures are printed, never asserted)."""

from __future__ import annotations

import asyncio
import sys

from harness import REPO


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


async def test_write_delay_bench_delivers_everything() -> None:
    code, out = await run("loadtest.bench", "--spawn", "--subscribers", "50", "--write-delay-ms", "5",
                          "--duration", "1")
    assert code == 0, out
    assert "  lost                         0" in out.splitlines(), out
