"""Node-to-node control over the broker: a registry of live nodes (each announces itself every few seconds),
commands that must act on every node (disconnect, unsubscribe, subscribe, refresh a user) or on one node (an
emulation request for a session held there), and surveys that collect an answer from every node (the channels
API).

Messages are msgpack: ``[VERSION, kind, sender node id, payload]``; a node ignores its own messages and any
message of another version.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict
from typing import Any, Final

import msgpack

from node.models import NodeInfo

logger = logging.getLogger(__name__)

VERSION: Final = 2  # 2: API actions carry typed fields (see node.py), not the API request
NODE_INFO: Final = "node"
SHUTDOWN: Final = "shutdown"
SURVEY_REQUEST: Final = "survey_request"
SURVEY_RESPONSE: Final = "survey_response"

INFO_INTERVAL: Final = 3.0  # how often a node announces itself
NODE_TTL: Final = 7.0  # a node not heard from for this long is gone
SURVEY_TIMEOUT: Final = 5.0

Action = Callable[[dict[str, Any]], Coroutine[Any, Any, None]]
SurveyHandler = Callable[[dict[str, Any]], Awaitable[Any]]
Publish = Callable[[bytes, str], Awaitable[None]]  # the engine's publish_control: (message, node id or "" for all)


class Controller:
    """Owned by the node, which hands it its id, its own entry for the registry and the engine's control
    publish (so this module needs nothing above the engine)."""

    def __init__(self, node_id: str, info: Callable[[], NodeInfo], publish: Publish) -> None:
        self._id = node_id
        self._info = info
        self._publish = publish
        self._nodes: dict[str, tuple[NodeInfo, float]] = {}
        self._actions: dict[str, Action] = {}
        self._survey_handlers: dict[str, SurveyHandler] = {}
        self._surveys: dict[int, tuple[asyncio.Future[None], list[Any], int]] = {}
        self._survey_ids = itertools.count(1)
        self._ticker: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._gone: list[Callable[[str, list[str]], None]] = []

    def on_node_gone(self, callback: Callable[[str, list[str]], None]) -> None:
        """Call ``callback(node id, ids of the live peers)`` when a node shuts down or is no longer heard from."""
        self._gone.append(callback)

    def _node_gone(self, node_id: str) -> None:
        live = list(self._nodes)
        for callback in self._gone:
            callback(node_id, live)

    def on_action(self, kind: str, action: Action) -> None:
        """Register what a command does on each node (locally, and when another node broadcasts it)."""
        self._actions[kind] = action

    def on_survey(self, op: str, handler: SurveyHandler) -> None:
        self._survey_handlers[op] = handler

    async def start(self) -> None:
        await self._announce()
        self._schedule_tick()

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await self._send(SHUTDOWN, None)
        except Exception as e:
            logger.info("could not announce shutdown: %s", e)

    # --- sending -----------------------------------------------------------------------------------------

    async def _send(self, kind: str, payload: Any, node_id: str = "") -> None:
        data = msgpack.packb([VERSION, kind, self._id, payload], use_bin_type=True)
        await self._publish(data, node_id)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("control task failed: %s", task.exception())

    def _schedule_tick(self) -> None:
        self._ticker = asyncio.get_running_loop().call_later(INFO_INTERVAL, self._tick)

    def _tick(self) -> None:
        self._spawn(self._announce())
        self.nodes()  # notices the nodes that stopped announcing themselves
        self._schedule_tick()

    async def _announce(self, node_id: str = "") -> None:
        await self._send(NODE_INFO, asdict(self._info()), node_id)

    async def broadcast(self, kind: str, params: dict[str, Any]) -> None:
        """Run a command here and on every other node."""
        await self._actions[kind](params)
        await self._send(kind, params)

    async def send_to(self, node_id: str, kind: str, params: dict[str, Any]) -> None:
        """Run a command on one other node only (e.g. an emulation request for a session that node holds)."""
        await self._send(kind, params, node_id)

    def knows(self, node_id: str) -> bool:
        """Whether ``node_id`` is a live node (this one, or one heard from within ``NODE_TTL``)."""
        if node_id == self._id:
            return True
        entry = self._nodes.get(node_id)
        return entry is not None and time.monotonic() - entry[1] <= NODE_TTL

    async def survey(self, op: str, params: dict[str, Any]) -> list[Any]:
        """Ask every live node (this one included); returns the answers that came within the timeout."""
        results = [await self._survey_handlers[op](params)]
        expected = len(self.nodes()) - 1
        if expected <= 0:
            return results
        survey_id = next(self._survey_ids)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._surveys[survey_id] = (done, results, expected + 1)
        try:
            await self._send(SURVEY_REQUEST, {"id": survey_id, "op": op, "params": params})
            await asyncio.wait_for(done, SURVEY_TIMEOUT)
        except TimeoutError:
            logger.warning("survey %s: %d of %d nodes answered", op, len(results) - 1, expected)
        finally:
            del self._surveys[survey_id]
        return results

    # --- receiving (called by the broker's reader: must not await) ---------------------------------------

    def handle(self, data: bytes) -> None:
        try:
            version, kind, sender, payload = msgpack.unpackb(data, raw=False)
        except (ValueError, TypeError, msgpack.UnpackException):
            logger.warning("dropping an undecodable control message")
            return
        if version != VERSION:
            logger.warning("dropping a control message of version %r from %s", version, sender)
            return
        if sender == self._id:
            return
        if kind == NODE_INFO:
            known = sender in self._nodes
            self._nodes[sender] = (NodeInfo(**payload), time.monotonic())
            if not known:
                self._spawn(self._announce(sender))  # let a new node learn about us at once
        elif kind == SHUTDOWN:
            if self._nodes.pop(sender, None) is not None:
                self._node_gone(sender)
        elif kind == SURVEY_REQUEST:
            self._spawn(self._answer(sender, payload))
        elif kind == SURVEY_RESPONSE:
            self._collect(payload)
        elif kind in self._actions:
            self._spawn(self._actions[kind](payload))
        else:
            logger.warning("unknown control message %r from %s", kind, sender)

    async def _answer(self, sender: str, request: dict[str, Any]) -> None:
        handler = self._survey_handlers.get(request["op"])
        if handler is None:
            return
        result = await handler(request["params"])
        await self._send(SURVEY_RESPONSE, {"id": request["id"], "result": result}, sender)

    def _collect(self, payload: dict[str, Any]) -> None:
        survey = self._surveys.get(payload["id"])
        if survey is None:
            return
        done, results, expected = survey
        results.append(payload["result"])
        if len(results) >= expected and not done.done():
            done.set_result(None)

    def nodes(self) -> list[NodeInfo]:
        """This node and every other node heard from recently."""
        now = time.monotonic()
        for uid in [uid for uid, (_, seen) in self._nodes.items() if now - seen > NODE_TTL]:
            del self._nodes[uid]
            self._node_gone(uid)
        return [self._info(), *(info for info, _ in self._nodes.values())]
