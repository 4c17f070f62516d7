"""CPU, memory and file descriptors of every worker process, read from ``/proc`` when ``/metrics`` is scraped.

prometheus_client's own process collector describes the one process that answers the scrape, and in
multiprocess mode it is not merged at all. Here the scraping process reports each live worker, labelled
``worker`` (its ``--worker-index``, ``0`` for a single process) and ``pid``, with the standard ``process_*``
names, so that a dashboard can show a worker that burns a core while its siblings idle. Workers are the pids
that own live gauge files in ``PROMETHEUS_MULTIPROC_DIR`` (every worker creates them at start).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Final

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LABELS: Final = ("worker", "pid")
_PROC: Final = Path("/proc")


def _sysconf(name: str, fallback: int) -> int:
    try:
        return os.sysconf(name)
    except (ValueError, OSError):
        return fallback


_TICKS: Final = _sysconf("SC_CLK_TCK", 100)
_PAGE: Final = _sysconf("SC_PAGE_SIZE", 4096)


def _boot_time() -> float:
    try:
        for line in (_PROC / "stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except OSError:
        pass
    return 0.0


def worker_pids(multiproc_dir: str) -> list[int]:
    """Pids with live gauge files (``gauge_live<mode>_<pid>.db``) in the multiprocess directory."""
    try:
        names = os.listdir(multiproc_dir)
    except OSError:
        return []
    pids = {int(n[:-3].rsplit("_", 1)[1]) for n in names if n.startswith("gauge_live") and n.endswith(".db")}
    return sorted(pids)


def _worker_index(pid: int) -> str:
    try:
        args = (_PROC / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return ""
    if b"--worker-index" in args:
        at = args.index(b"--worker-index") + 1
        if at < len(args):
            return args[at].decode(errors="replace")
    return "0"


class WorkerProcessCollector(Collector):
    """Per-worker ``process_*`` metrics: of ``multiproc_dir``'s live workers, or of this process alone (None)."""

    def __init__(self, multiproc_dir: str | None) -> None:
        self._dir = multiproc_dir
        self._boot = _boot_time()

    def _pids(self) -> Iterable[int]:
        return worker_pids(self._dir) if self._dir is not None else (os.getpid(),)

    def collect(self) -> Iterator[Metric]:
        cpu = CounterMetricFamily("process_cpu_seconds", "User and system CPU time of a worker, in seconds.",
                                  labels=LABELS)
        rss = GaugeMetricFamily("process_resident_memory_bytes", "Resident memory of a worker, in bytes.",
                                labels=LABELS)
        start = GaugeMetricFamily("process_start_time_seconds", "Start time of a worker since the epoch, in seconds.",
                                  labels=LABELS)
        fds = GaugeMetricFamily("process_open_fds", "Open file descriptors of a worker.", labels=LABELS)
        for pid in self._pids():
            try:
                # Fields after the parenthesised command name, which may itself contain spaces.
                stat = (_PROC / str(pid) / "stat").read_bytes().rsplit(b")", 1)[1].split()
                open_fds = len(os.listdir(_PROC / str(pid) / "fd"))
            except (OSError, IndexError):
                continue  # exited meanwhile, or not ours to read
            labels = [_worker_index(pid), str(pid)]
            cpu.add_metric(labels, (int(stat[11]) + int(stat[12])) / _TICKS)
            rss.add_metric(labels, float(int(stat[21]) * _PAGE))
            start.add_metric(labels, self._boot + int(stat[19]) / _TICKS)
            fds.add_metric(labels, float(open_fds))
        yield from (cpu, rss, start, fds)
