"""Process management on the supervisor side: ``fugato serve --workers N`` runs one node per worker process,
all on one port, under supervisord, and this module is everything of it that is not the node itself:

* how many workers: ``--workers auto`` is the affinity mask capped by the cgroup CPU quota (below);
* running supervisord in the foreground with ``supervisor/supervisord.conf`` (``run``);
* supervisord's event listener (``python -m node.workers``, see ``watch``): drops a dead worker's metrics,
  ends the group on a crash loop, and restarts a worker whose event loop stopped answering (liveness).

Workers share the public port through SO_REUSEPORT: each binds it itself and the kernel spreads incoming
connections over them. That keeps a worker independent (a restarted worker simply binds again; no socket is
passed around) and needs nothing from supervisord but process management. ``fugato serve`` stays in the
foreground as supervisord's parent: it forwards SIGTERM/SIGINT (graceful stop), turns SIGHUP into a SIGHUP for
every worker (reload channel options and token keys; supervisord itself would restart them all), and exits
non-zero when a crash loop made supervisord give up.

Liveness: each worker touches ``$FUGATO_RUN_DIR/live/<process name>`` from its event loop every second
(``node/liveness.py``). A file older than ``FUGATO_WORKER_LIVENESS_TIMEOUT`` seconds (default 20; 0 turns the
check off) means the loop is stuck, not merely busy: the listener kills that worker with SIGKILL (a stuck loop
would never run its SIGTERM handler) and supervisord starts it again. The check runs on supervisord's TICK_5
events, so a stuck worker is restarted between N and N + 5 seconds after its last heartbeat.

How many CPUs: ``os.cpu_count()`` sees the host's CPUs. A container's CPU limit is a CFS quota on its cgroup
instead (Kubernetes' ``resources.limits.cpu``), so the worker count is the affinity mask (cpusets, ``taskset``)
capped by the smallest quota found on the process's cgroup or any of its ancestors, rounded up: a 1.5-CPU limit
gets 2 workers, each of which is then throttled a little rather than leaving half a CPU unused. Both cgroup
layouts are read: v2 (``cpu.max``: ``"<quota> <period>"`` or ``"max <period>"``) and v1 (``cpu.cfs_quota_us``,
``-1`` for none, and ``cpu.cfs_period_us``).
"""

from __future__ import annotations

import contextlib
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict, deque
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path, PurePosixPath
from typing import Final

from node.liveness import LIVE_DIR

# Next to node/ in a checkout; an installed package (a container image) names the copy via FUGATO_SUPERVISOR_DIR.
SUPERVISOR_DIR: Final = Path(os.environ.get("FUGATO_SUPERVISOR_DIR")
                             or Path(__file__).resolve().parent.parent / "supervisor")
CONF: Final = SUPERVISOR_DIR / "supervisord.conf"


def plan(value: str, *, spans_processes: bool) -> int:
    """How many workers ``fugato serve --workers VALUE`` runs (``spans_processes``: the configured engine can
    serve several processes as one cluster); ValueError carries the message for the user."""
    try:
        workers = parse_workers(value)
    except ValueError as e:
        raise ValueError(f"--workers: {e}") from None
    if workers > 1 and not spans_processes:
        if value == "auto":
            # A container image runs `--workers auto` whatever its engine: with memory it stays one node.
            print(f"WARNING: --workers auto: 1 worker, not {workers}: the memory engine cannot span processes",
                  file=sys.stderr)
            return 1
        raise ValueError("--workers > 1 needs engine.type \"redis\" (or a NATS/Redis broker with a Redis presence "
                         "manager): the memory engine cannot span processes (each worker is its own node); use "
                         "--workers 1 or configure Redis")
    return workers


def parse_workers(value: str) -> int:
    if value == "auto":
        return cpu_count()
    workers = int(value)
    if workers < 1:
        raise ValueError("--workers must be at least 1")
    return workers


def run(workers: int, serve_args: Sequence[str], stop_wait: float) -> int:
    """Run supervisord with ``workers`` workers in the foreground; returns the exit code for the CLI."""
    if not CONF.exists():
        print(f"error: {CONF} is missing (supervisor/ must sit next to node/)", file=sys.stderr)
        return 1
    run_dir = Path(tempfile.mkdtemp(prefix="fugato-"))
    metrics_dir = run_dir / "metrics"
    metrics_dir.mkdir()
    env = {
        **os.environ,
        "FUGATO_RUN_DIR": str(run_dir),
        "FUGATO_PYTHON": sys.executable,
        "FUGATO_WORKERS": str(workers),
        "FUGATO_SERVE_ARGS": shlex.join(serve_args),
        "FUGATO_STOP_WAIT": str(math.ceil(stop_wait)),
        "FUGATO_SUPERVISOR_DIR": str(SUPERVISOR_DIR),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.Popen([sys.executable, "-m", "supervisor.supervisord", "-c", str(CONF)], env=env)

    def forward(sig: int, _frame: object) -> None:
        proc.send_signal(sig)

    def reload(_sig: int, _frame: object) -> None:
        subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", str(CONF), "signal", "HUP",
                        "fugato:*"], env=env, check=False, stdout=subprocess.DEVNULL)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, reload)
    try:
        code = proc.wait()
    finally:
        fatal = (run_dir / "fatal").exists()
        shutil.rmtree(run_dir, ignore_errors=True)
    if fatal:
        print("error: a worker kept crashing; supervisord gave up", file=sys.stderr)
        return 1
    return code


# --- how many CPUs ------------------------------------------------------------------------------------

CGROUP_ROOT: Final = Path("/sys/fs/cgroup")
PROC_CGROUP: Final = Path("/proc/self/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _own_paths(proc_cgroup: Path) -> tuple[str | None, str | None]:
    """(v2 path, v1 ``cpu`` controller path) of this process, from ``/proc/self/cgroup``."""
    v2: str | None = None
    v1: str | None = None
    for line in (_read(proc_cgroup) or "").splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def _with_ancestors(mount: Path, path: str | None) -> Iterator[Path]:
    """``mount/path`` and each of its parents up to ``mount`` itself. In a container with its own cgroup
    namespace the path is ``/`` and the mount is the container's cgroup; without one, the host path may not
    exist under the mount, and the mount itself is then the container's cgroup."""
    parts = PurePosixPath(path or "/").parts[1:]
    for n in range(len(parts), -1, -1):
        yield mount.joinpath(*parts[:n])


def _v2_quota(directory: Path) -> Fraction | None:
    text = _read(directory / "cpu.max")
    if text is None:
        return None
    fields = text.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return Fraction(quota, period) if quota > 0 and period > 0 else None


def _v1_quota(directory: Path) -> Fraction | None:
    quota_text, period_text = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
    if quota_text is None or period_text is None:
        return None
    try:
        quota, period = int(quota_text), int(period_text)
    except ValueError:
        return None
    return Fraction(quota, period) if quota > 0 and period > 0 else None  # -1: no quota


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> Fraction | None:
    """The CPU quota of this process's cgroup in CPUs (``Fraction(3, 2)`` for 1.5), or None without one."""
    v2_path, v1_path = _own_paths(proc_cgroup)
    quotas: list[Fraction] = []
    for directory in _with_ancestors(root, v2_path):
        quota = _v2_quota(directory)
        if quota is not None:
            quotas.append(quota)
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        if (root / name).is_dir():
            for directory in _with_ancestors(root / name, v1_path):
                quota = _v1_quota(directory)
                if quota is not None:
                    quotas.append(quota)
            break
    return min(quotas) if quotas else None


def available_cpus() -> int:
    """CPUs in this process's affinity mask (all CPUs where the platform has no affinity)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_count(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP, available: int | None = None) -> int:
    """Workers for ``--workers auto``: the affinity mask capped by the cgroup CPU quota rounded up; at least 1."""
    cpus = available_cpus() if available is None else available
    limit = cgroup_cpu_limit(root, proc_cgroup)
    if limit is not None:
        cpus = min(cpus, -(-limit.numerator // limit.denominator))
    return max(1, cpus)

# --- supervisord's event listener ------------------------------------------------------------------------

LIVENESS_TIMEOUT_ENV: Final = "FUGATO_WORKER_LIVENESS_TIMEOUT"
DEFAULT_LIVENESS_TIMEOUT: Final = 20.0


def fields(line: str) -> dict[str, str]:
    return dict(item.split(":", 1) for item in line.split())


def give_up(run_dir: Path, process: str, why: str) -> None:
    (run_dir / "fatal").write_text(f"{process}: {why}\n")
    sys.stderr.write(f"fugato: worker {process} keeps crashing ({why}); stopping\n")
    sys.stderr.flush()
    os.kill(os.getppid(), signal.SIGTERM)


def stuck_workers(live_dir: Path, timeout: float, now: float) -> Iterator[tuple[str, int, float]]:
    """(process name, pid, seconds since its last heartbeat) of every worker whose loop is overdue."""
    try:
        entries = list(live_dir.iterdir())
    except FileNotFoundError:
        return
    for entry in entries:
        try:
            age = now - entry.stat().st_mtime
            pid = int(entry.read_text() or "0")
        except (OSError, ValueError):
            continue  # replaced or removed meanwhile
        if age > timeout and pid > 0:
            yield entry.name, pid, age


def restart_stuck(live_dir: Path, timeout: float) -> None:
    for process, pid, age in stuck_workers(live_dir, timeout, time.time()):
        sys.stderr.write(f"fugato: worker {process} (pid {pid}): event loop unresponsive for {age:.0f}s; "
                         "restarting it\n")
        sys.stderr.flush()
        with contextlib.suppress(ProcessLookupError):  # gone already: supervisord restarts it anyway
            os.kill(pid, signal.SIGKILL)
        (live_dir / process).unlink(missing_ok=True)


def forget_heartbeat(live_dir: Path, process: str, pid: str) -> None:
    """The heartbeat file of an exited worker goes with it (unless its successor already wrote its own)."""
    path = live_dir / process
    try:
        if path.read_text() == pid:
            path.unlink()
    except OSError:
        pass


def watch() -> int:
    """supervisord event listener (PROCESS_STATE_EXITED, PROCESS_STATE_FATAL, TICK_5):

    * a worker process is gone: its "live" Prometheus gauges are dropped from the aggregated /metrics
      (prometheus_client multiprocess files of that pid), and its heartbeat file goes. An unexpected exit counts
      as a crash.
    * a crash loop ends the whole group: a worker that supervisord gave up on (PROCESS_STATE_FATAL: it kept
      dying right after start, retried with a growing delay), or one that crashed FUGATO_MAX_CRASHES times
      (default 5) within FUGATO_CRASH_WINDOW seconds (default 60). The listener writes a marker so that
      ``fugato serve`` exits non-zero, and asks supervisord to shut everything down.
    * every TICK_5: a worker whose heartbeat is older than FUGATO_WORKER_LIVENESS_TIMEOUT is killed (see above).
    """
    run_dir = Path(os.environ["FUGATO_RUN_DIR"])
    live_dir = run_dir / LIVE_DIR
    max_crashes = int(os.environ.get("FUGATO_MAX_CRASHES", "5"))
    window = float(os.environ.get("FUGATO_CRASH_WINDOW", "60"))
    liveness_timeout = float(os.environ.get(LIVENESS_TIMEOUT_ENV) or DEFAULT_LIVENESS_TIMEOUT)
    crashes: defaultdict[str, deque[float]] = defaultdict(deque)
    while True:
        sys.stdout.write("READY\n")
        sys.stdout.flush()
        header = fields(sys.stdin.readline())
        payload = fields(sys.stdin.read(int(header["len"])).split("\n", 1)[0])
        event = header.get("eventname", "")
        process = payload.get("processname", "?")
        if event == "PROCESS_STATE_EXITED":
            forget_heartbeat(live_dir, process, payload.get("pid", ""))
            if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
                from prometheus_client import multiprocess  # noqa: PLC0415 - only with metrics on

                multiprocess.mark_process_dead(int(payload["pid"]))  # type: ignore[no-untyped-call]
            if payload.get("groupname") == "fugato" and payload.get("expected") == "0":
                now = time.monotonic()
                recent = crashes[process]
                recent.append(now)
                while recent and now - recent[0] > window:
                    recent.popleft()
                if len(recent) >= max_crashes:
                    give_up(run_dir, process, f"{len(recent)} crashes in {window:.0f}s")
        elif event == "PROCESS_STATE_FATAL" and payload.get("groupname") == "fugato":
            give_up(run_dir, process, "it does not stay up after start")
        elif event.startswith("TICK") and liveness_timeout > 0:
            restart_stuck(live_dir, liveness_timeout)
        sys.stdout.write("RESULT 2\nOK")
        sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(watch())
