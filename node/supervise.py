"""`fugato serve --workers N`: one Fugato node per worker process, all on one port, under supervisord.

Workers share the public port through SO_REUSEPORT: each binds it itself and the kernel spreads incoming
connections over them. That keeps a worker independent (a restarted worker simply binds again; no socket is
passed around) and needs nothing from supervisord but process management. This process stays in the foreground
as supervisord's parent: it forwards SIGTERM/SIGINT (graceful stop), turns SIGHUP into a SIGHUP for every worker
(reload channel options and token keys; supervisord itself would restart them all), and exits non-zero when
a crash loop made supervisord give up.
"""

from __future__ import annotations

import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from node.cpus import cpu_count

# Next to node/ in a checkout; an installed package (a container image) names the copy via FUGATO_SUPERVISOR_DIR.
SUPERVISOR_DIR: Final = Path(os.environ.get("FUGATO_SUPERVISOR_DIR")
                             or Path(__file__).resolve().parent.parent / "supervisor")
CONF: Final = SUPERVISOR_DIR / "supervisord.conf"


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
