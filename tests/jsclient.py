"""Drive one centrifuge-js client (``tests/js/driver.mjs``) from async Python tests.

``JsClient`` starts the driver as a subprocess, writes commands as JSON lines to its stdin and collects every
line it prints (events and command results) in order. ``call()`` sends a command and returns its value;
``wait_event()`` returns the first not yet consumed event matching a predicate, waiting for it if needed.
The driver's protocol is documented at the top of ``driver.mjs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

DRIVER = Path(__file__).resolve().parent / "js" / "driver.mjs"

T = TypeVar("T")
Event = dict[str, Any]
Predicate = Callable[[Event], bool]


class JsCallError(Exception):
    """A driver command answered ``ok: false``: an SDK/server error code, or -1 for a driver error."""

    def __init__(self, code: int, message: str, op: str = "") -> None:
        super().__init__(f"{op or 'call'} failed: {code} {message}")
        self.code = code
        self.message = message
        self.op = op


class JsDriverError(AssertionError):
    """The driver process is gone, or an expected event did not arrive in time."""


def match(kind: str, **fields: Any) -> Predicate:
    """A predicate: the event is ``kind`` and each given field equals the given value."""

    def predicate(event: Event) -> bool:
        return event.get("event") == kind and all(event.get(k) == v for k, v in fields.items())

    predicate.__name__ = f"match({kind!r}, {fields!r})"
    return predicate


class EventLog(Generic[T]):
    """Items in arrival order, plus waiting for the first not yet consumed item that satisfies a predicate.

    ``append()`` is synchronous (callable from any callback on the loop); ``wait()`` scans what has arrived,
    then sleeps until something new arrives or the deadline passes. A returned item is consumed: the next
    ``wait()`` with the same predicate returns the next match. ``close()`` makes waits fail fast.
    """

    def __init__(self, name: str = "events", describe: Callable[[], str] | None = None) -> None:
        self.name = name
        self.items: list[T] = []
        self.closed = False
        self._describe = describe
        self._consumed: set[int] = set()
        self._first_unconsumed = 0
        self._waiters: list[asyncio.Future[None]] = []

    def append(self, item: T) -> None:
        self.items.append(item)
        self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    async def wait(self, predicate: Callable[[T], bool], timeout: float = 10.0) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        scanned = self._first_unconsumed
        while True:
            for index in range(scanned, len(self.items)):
                if index not in self._consumed and predicate(self.items[index]):
                    self._consume(index)
                    return self.items[index]
            scanned = len(self.items)
            if self.closed:
                raise JsDriverError(f"{self.name}: closed before an item matching {_describe(predicate)}"
                                    f"{self._context()}")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise JsDriverError(f"{self.name}: nothing matching {_describe(predicate)} within {timeout}s"
                                    f"{self._context()}")
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, remaining)

    def _context(self) -> str:
        return "\n" + self._describe() if self._describe is not None else ""

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    def _consume(self, index: int) -> None:
        self._consumed.add(index)
        while self._first_unconsumed in self._consumed:
            self._consumed.discard(self._first_unconsumed)
            self._first_unconsumed += 1


class JsClient:
    """One centrifuge-js ``Centrifuge`` instance in a node subprocess.

    ``options`` go to the driver (``FUGATO_DRIVER_OPTIONS``): Centrifuge constructor options plus
    ``protocol`` ("json"/"protobuf") and ``trace`` (report raw WebSocket frames). Reconnect delays default
    to 50 ms .. 1 s here (the SDK's 0.5 s .. 20 s would slow tests down); pass them to override.

    Every waiting method takes a ``timeout`` in seconds: a deadline per call is part of the API.
    """

    def __init__(
        self,
        ws_url: str,
        options: Mapping[str, Any] | None = None,
        *,
        node: str | None = None,
        driver: Path = DRIVER,
        name: str = "js",
    ) -> None:
        self.ws_url = ws_url
        self.name = name
        self.options: dict[str, Any] = {"minReconnectDelay": 50, "maxReconnectDelay": 1000}
        self.options.update(options or {})
        self._node = node or shutil.which("node") or "node"
        self._driver = driver
        self._proc: asyncio.subprocess.Process | None = None
        self.log: EventLog[Event] = EventLog(name, self.describe)
        self._results: dict[int, asyncio.Future[Event]] = {}
        self._next_id = 0
        self._stderr: deque[str] = deque(maxlen=200)
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def start(self, timeout: float = 15.0) -> Self:
        env = dict(os.environ)
        env["FUGATO_DRIVER_OPTIONS"] = json.dumps(self.options)
        self._proc = await asyncio.create_subprocess_exec(
            self._node,
            str(self._driver),
            self.ws_url,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=str(self._driver.parent),
            env=env,
            limit=32 * 1024 * 1024,
        )
        self._tasks = [
            asyncio.create_task(self._read_stdout(), name=f"{self.name}-stdout"),
            asyncio.create_task(self._read_stderr(), name=f"{self.name}-stderr"),
        ]
        await self.wait_event(match("ready"), timeout=timeout)
        return self

    async def close(self, timeout: float = 5.0) -> int | None:
        """Ask the driver to exit (its client disconnects first); kill it if it does not within ``timeout``."""
        proc = self._proc
        if proc is None:
            return None
        if proc.returncode is None:
            with contextlib.suppress(ConnectionError, RuntimeError, JsDriverError):
                await self._write({"op": "exit"})
                assert proc.stdin is not None
                proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, timeout)
        for fut in self._results.values():
            if not fut.done():
                fut.cancel()
        return proc.returncode

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.returncode

    # -- commands ----------------------------------------------------------------------------------------

    async def send(self, op: str, **args: Any) -> int:
        """Send a command without waiting for its result; returns its id (see ``result()``)."""
        self._next_id += 1
        cmd_id = self._next_id
        self._results[cmd_id] = asyncio.get_running_loop().create_future()
        await self._write({**args, "op": op, "id": cmd_id})
        return cmd_id

    async def result(self, cmd_id: int, timeout: float = 15.0) -> Any:
        """The value of a command sent with ``send()``; raises ``JsCallError`` if it failed."""
        fut = self._results[cmd_id]
        try:
            event = await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            raise JsDriverError(f"{self.name}: no result for command {cmd_id} within {timeout}s\n"
                                f"{self.describe()}") from None
        del self._results[cmd_id]
        if not event.get("ok"):
            error = event.get("error") or {}
            raise JsCallError(int(error.get("code", -1)), str(error.get("message", "")), str(event.get("op", "")))
        return event.get("value")

    async def call(self, op: str, timeout: float = 15.0, **args: Any) -> Any:
        """Run one driver command and return its value (raises ``JsCallError`` on ``ok: false``)."""
        return await self.result(await self.send(op, **args), timeout)

    async def send_raw(self, line: str) -> None:
        """Write one raw line to the driver (for testing how it copes with malformed input)."""
        proc = self._require_proc()
        assert proc.stdin is not None
        proc.stdin.write(line.encode() + b"\n")
        await proc.stdin.drain()

    # -- events ------------------------------------------------------------------------------------------

    def events(self, kind: str | None = None) -> list[Event]:
        """All lines received so far (consumed or not), optionally only those whose ``event`` is ``kind``."""
        return [e for e in self.log.items if kind is None or e.get("event") == kind]

    async def wait_event(self, predicate: Predicate, timeout: float = 10.0) -> Event:
        """The first unconsumed event satisfying ``predicate`` (received already or arriving within ``timeout``).

        The event returned is marked consumed, so waiting again with the same predicate returns the next one.
        """
        return await self.log.wait(predicate, timeout)

    async def wait(self, kind: str, timeout: float = 10.0, **fields: Any) -> Event:
        """``wait_event(match(kind, **fields))``."""
        return await self.wait_event(match(kind, **fields), timeout)

    def describe(self, last: int = 25) -> str:
        """The last events and stderr lines, for assertion messages."""
        lines = [f"--- last {last} events of {self.name} ---"]
        lines += [json.dumps(e, sort_keys=True)[:500] for e in self.log.items[-last:]]
        if self._stderr:
            lines.append(f"--- stderr of {self.name} ---")
            lines += list(self._stderr)[-last:]
        return "\n".join(lines)

    # -- internals ---------------------------------------------------------------------------------------

    def _require_proc(self) -> asyncio.subprocess.Process:
        if self._proc is None:
            raise JsDriverError(f"{self.name}: not started")
        return self._proc

    async def _write(self, cmd: Mapping[str, Any]) -> None:
        proc = self._require_proc()
        if proc.returncode is not None or proc.stdin is None or proc.stdin.is_closing():
            raise JsDriverError(f"{self.name}: driver is not running (rc={proc.returncode})\n{self.describe()}")
        proc.stdin.write(json.dumps(cmd).encode() + b"\n")
        await proc.stdin.drain()

    async def _read_stdout(self) -> None:
        proc = self._require_proc()
        assert proc.stdout is not None
        try:
            while line := await proc.stdout.readline():
                try:
                    event = json.loads(line)
                except ValueError:
                    event = {"event": "driver_output", "line": line.decode(errors="replace").rstrip()}
                if not isinstance(event, dict):
                    event = {"event": "driver_output", "line": line.decode(errors="replace").rstrip()}
                self.log.append(event)
                self._dispatch(event)
        finally:
            self.log.close()
            for fut in self._results.values():
                if not fut.done():
                    fut.set_exception(JsDriverError(f"{self.name}: driver exited before answering\n"
                                                    f"{self.describe()}"))
                    fut.exception()  # mark retrieved: the command may never be awaited

    def _dispatch(self, event: Event) -> None:
        if event.get("event") != "result":
            return
        cmd_id = event.get("id")
        if isinstance(cmd_id, int):
            fut = self._results.get(cmd_id)
            if fut is not None and not fut.done():
                fut.set_result(event)

    async def _read_stderr(self) -> None:
        proc = self._require_proc()
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            self._stderr.append(line.decode(errors="replace").rstrip())


def _describe(predicate: Callable[[Any], bool]) -> str:
    return getattr(predicate, "__name__", repr(predicate))
