"""The worker side of the liveness check (see ``node/workers.py``): a worker under supervisord touches
``$FUGATO_RUN_DIR/live/<its process name>`` (holding its pid) from its event loop every ``INTERVAL`` seconds. The
file stops changing exactly when the loop stops running callbacks, which is what the supervisor side watches.

A single process (no supervisord: no ``SUPERVISOR_PROCESS_NAME`` or no ``FUGATO_RUN_DIR``) has no heartbeat.

Test hook: with ``FUGATO_TEST_BLOCK_LOOP_ON_SIGUSR2=1`` in its environment, a worker's loop runs a blocking
``time.sleep`` when the worker gets SIGUSR2, the way a CPU-bound or blocking call in a handler would hang it.
The handler is installed with ``loop.add_signal_handler``, so the sleep runs *in* the event loop, between two
callbacks: the loop is really stuck (it would not run its own SIGTERM handler either), not merely the process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path
from typing import Final

logger = logging.getLogger(__name__)

LIVE_DIR: Final = "live"  # under FUGATO_RUN_DIR
INTERVAL: Final = 1.0  # seconds between two heartbeats
TEST_BLOCK_ENV: Final = "FUGATO_TEST_BLOCK_LOOP_ON_SIGUSR2"


class Heartbeat:
    """Touches the heartbeat file every ``INTERVAL`` from the loop; ``close`` stops it and removes the file."""

    __slots__ = ("_handle", "_loop", "_path")

    def __init__(self, path: Path) -> None:
        self._path = path
        self._loop = asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = None
        path.parent.mkdir(exist_ok=True)
        path.write_text(str(os.getpid()))
        self._schedule()
        if os.environ.get(TEST_BLOCK_ENV) == "1":
            self._loop.add_signal_handler(signal.SIGUSR2, _block_loop)

    def _schedule(self) -> None:
        self._handle = self._loop.call_later(INTERVAL, self._beat)

    def _beat(self) -> None:
        try:
            os.utime(self._path)
        except FileNotFoundError:  # removed by the supervisor side: say again who we are
            self._path.write_text(str(os.getpid()))
        except OSError as e:
            logger.warning("liveness heartbeat: %s", e)
        self._schedule()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if os.environ.get(TEST_BLOCK_ENV) == "1":
            self._loop.remove_signal_handler(signal.SIGUSR2)
        self._path.unlink(missing_ok=True)


def start_heartbeat() -> Heartbeat | None:
    """The heartbeat of a worker under supervisord (call from the running loop); None for a single process."""
    run_dir = os.environ.get("FUGATO_RUN_DIR")
    name = os.environ.get("SUPERVISOR_PROCESS_NAME")
    if not run_dir or not name:
        return None
    return Heartbeat(Path(run_dir) / LIVE_DIR / name)


def _block_loop() -> None:
    logger.warning("test hook: blocking the event loop (SIGUSR2)")
    time.sleep(3600)
