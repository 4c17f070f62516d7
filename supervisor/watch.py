"""supervisord event listener for Fugato workers.

* PROCESS_STATE_EXITED: a worker process is gone; its "live" Prometheus gauges are dropped from the aggregated
  /metrics (prometheus_client multiprocess files of that pid). An unexpected exit counts as a crash.
* A crash loop ends the whole group: a worker that supervisord gave up on (PROCESS_STATE_FATAL: it kept dying
  right after start, retried with a growing delay), or one that crashed FUGATO_MAX_CRASHES times (default 5)
  within FUGATO_CRASH_WINDOW seconds (default 60). The listener writes a marker so that `fugato serve` exits
  non-zero, and asks supervisord to shut everything down.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import defaultdict, deque
from pathlib import Path


def fields(line: str) -> dict[str, str]:
    return dict(item.split(":", 1) for item in line.split())


def give_up(run_dir: Path, process: str, why: str) -> None:
    (run_dir / "fatal").write_text(f"{process}: {why}\n")
    sys.stderr.write(f"fugato: worker {process} keeps crashing ({why}); stopping\n")
    sys.stderr.flush()
    os.kill(os.getppid(), signal.SIGTERM)


def main() -> int:
    run_dir = Path(os.environ["FUGATO_RUN_DIR"])
    max_crashes = int(os.environ.get("FUGATO_MAX_CRASHES", "5"))
    window = float(os.environ.get("FUGATO_CRASH_WINDOW", "60"))
    crashes: defaultdict[str, deque[float]] = defaultdict(deque)
    while True:
        sys.stdout.write("READY\n")
        sys.stdout.flush()
        header = fields(sys.stdin.readline())
        payload = fields(sys.stdin.read(int(header["len"])).split("\n", 1)[0])
        event = header.get("eventname", "")
        process = payload.get("processname", "?")
        if event == "PROCESS_STATE_EXITED":
            if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
                from prometheus_client import multiprocess  # noqa: PLC0415 - only with metrics on

                multiprocess.mark_process_dead(int(payload["pid"]))
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
        sys.stdout.write("RESULT 2\nOK")
        sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())
