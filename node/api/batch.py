"""The ``batch`` API method: many commands in one request, with the publishes among them sent together.

A run of consecutive ``publish`` commands (every ``publish`` when ``parallel`` is set) is validated in one
pass and handed to the engine as one group (``Node.publish_many``): the memory engine publishes them without
an await, the Redis engine pipelines them to each server in one write. Each command still gets its own reply,
or its own error, in its place. Sequential batches keep their meaning: the engine executes a run in order (one
connection per Redis server), every other command runs alone, in its turn.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any, Final, Protocol

from node.errors import API_ERROR_NOT_FOUND, ERROR_BAD_REQUEST, ERROR_INTERNAL, Error, ReplyError
from node.models import PublishOptions, PublishResult
from node.node import MAX_BROADCAST_CONCURRENCY, Node
from node.protocol import codec


class Executor(Protocol):
    """What a batch needs from the API executor (``executor.Executor`` implements it; it imports this module)."""

    @property
    def methods(self) -> Mapping[str, object]: ...

    @property
    def node(self) -> Node: ...

    async def call(self, method: str, params: Any, *, protocol: str | None = None) -> bytes: ...

    def publish_args(self, channel: str, p: Mapping[str, Any]) -> tuple[str, bytes, PublishOptions]: ...

    def publishes_done(self, count: int, seconds: float, error_codes: list[int]) -> None: ...

EPOCH_CACHE_SIZE: Final = 10000
_BAD: Final = b'{"error":' + codec.encode_error(ERROR_BAD_REQUEST) + b"}"
_NOT_FOUND: Final = b'{"error":' + codec.encode_error(API_ERROR_NOT_FOUND) + b"}"


_epochs: dict[str, bytes] = {}  # epoch → its JSON string: a node sees few epochs, and many replies carry them


def publish_reply(result: PublishResult) -> bytes:
    """The result object of a publish (zero fields omitted, as ``codec.result_object`` does)."""
    sp = result.position
    if not sp.epoch:
        return b'{"offset":%d}' % sp.offset if sp.offset else b"{}"
    epoch = _epochs.get(sp.epoch)
    if epoch is None:
        if len(_epochs) >= EPOCH_CACHE_SIZE:
            _epochs.clear()
        epoch = _epochs[sp.epoch] = codec.raw(sp.epoch)
    return b'{"offset":%d,"epoch":%s}' % (sp.offset, epoch) if sp.offset else b'{"epoch":%s}' % epoch


def _method_of(ex: Executor, cmd: Any) -> str | None:
    """The command's method: its first key naming one (``batch`` cannot nest) with a non-null value."""
    if type(cmd) is not dict:
        return None
    if len(cmd) == 1 and cmd.get("publish") is not None:
        return "publish"  # the usual item, without the search below
    return next((k for k, v in cmd.items() if k in ex.methods and k != "batch" and v is not None), None)


async def _one(ex: Executor, cmd: Any, method: str | None) -> bytes:
    if type(cmd) is not dict:
        return _BAD
    if method is None:
        return _NOT_FOUND  # Centrifugo answers a command it cannot name with 104
    try:
        return b'{"%s":%s}' % (method.encode(), await ex.call(method, cmd[method]))
    except ReplyError as e:
        return b'{"error":' + codec.encode_error(e.error) + b"}"


async def _publish_group(ex: Executor, commands: list[Any], idxs: list[int], replies: list[bytes]) -> None:
    """Run the publish commands at ``idxs`` as one group; their replies go to their places in ``replies``."""
    started = time.perf_counter()
    items: list[tuple[str, bytes, PublishOptions]] = []
    sent: list[int] = []
    errors: list[tuple[int, Error]] = []
    for i in idxs:
        params = commands[i]["publish"]
        try:
            if type(params) is not dict:
                raise ReplyError(ERROR_BAD_REQUEST)
            channel = params.get("channel")
            if type(channel) is not str or not channel:
                raise ReplyError(ERROR_BAD_REQUEST)
            items.append(ex.publish_args(channel, params))
            sent.append(i)
        except ReplyError as e:
            errors.append((i, e.error))
    results = await ex.node.publish_many(items) if items else []
    for i, result in zip(sent, results, strict=True):
        if isinstance(result, PublishResult):
            replies[i] = b'{"publish":%s}' % publish_reply(result)
        else:
            errors.append((i, result.error if isinstance(result, ReplyError) else ERROR_INTERNAL))
    for i, error in errors:
        replies[i] = b'{"error":' + codec.encode_error(error) + b"}"
    ex.publishes_done(len(idxs), time.perf_counter() - started, [error.code for _, error in errors])


async def run_batch(ex: Executor, commands: list[Any], *, parallel: bool) -> bytes:
    methods = [_method_of(ex, cmd) for cmd in commands]
    replies: list[bytes] = [b""] * len(commands)
    if parallel:
        publishes = [i for i, m in enumerate(methods) if m == "publish"]
        others = [i for i, m in enumerate(methods) if m != "publish"]

        sem = asyncio.Semaphore(MAX_BROADCAST_CONCURRENCY)  # the other commands, bounded like Centrifugo's

        async def other(i: int) -> None:
            async with sem:
                replies[i] = await _one(ex, commands[i], methods[i])

        await asyncio.gather(_publish_group(ex, commands, publishes, replies), *(other(i) for i in others))
    else:
        i, n = 0, len(commands)
        while i < n:
            if methods[i] != "publish":
                replies[i] = await _one(ex, commands[i], methods[i])
                i += 1
                continue
            j = i
            while j < n and methods[j] == "publish":
                j += 1
            await _publish_group(ex, commands, list(range(i, j)), replies)
            i = j
    return b'{"replies":[' + b",".join(replies) + b"]}"  # the whole response: Centrifugo does not wrap it
