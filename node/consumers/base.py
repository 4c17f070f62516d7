"""What every consumer is, and how a consumed message becomes a server API call.

A message is a server API command: a ``method`` (from a column, a stream field or a header) and a JSON
``payload`` (the request object), or, with no method given, a payload ``{"method": ..., "payload": ...}``.
It runs through the same ``Executor`` as the HTTP API. As in Centrifugo, only commands that change state are
run; an internal error (code 100: a dependency such as the engine failed) is retried later, in order, and
everything else - malformed JSON, a read-only or unknown method, a command the API rejects - is a poison
message: logged, counted in ``centrifugo_consumers_messages_skipped_total`` and acknowledged, so it never
blocks what follows it.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Any, Final, Protocol

import orjson

from node.errors import ERROR_INTERNAL, NodeError, ReplyError

if TYPE_CHECKING:
    from node.api.executor import Executor

logger = logging.getLogger(__name__)

# Centrifugo runs these and ignores the rest (reads make no sense asynchronously; batch is not supported).
METHODS: Final = frozenset({"publish", "broadcast", "subscribe", "unsubscribe", "disconnect", "history_remove",
                            "refresh"})
MIN_BACKOFF: Final = 0.01
MAX_BACKOFF: Final = 5.0


class RetryLaterError(NodeError):
    """The command failed for a reason that may pass (an internal error): do not acknowledge it."""


class Consumer(Protocol):
    """One configured consumer. ``run`` consumes until ``stop()`` or cancellation: a failing dependency is
    logged, counted and retried with backoff, so the consumer recovers by itself. After ``stop()`` it finishes
    the messages in hand (acknowledging them), then returns; cancelling instead may leave some to be
    delivered again."""

    name: str
    stopping: bool

    async def run(self) -> None: ...

    def stop(self) -> None: ...

    @property
    def error(self) -> str:
        """"" while consuming works; else the last failures, for /health's detail."""
        ...


class BaseConsumer(Consumer):
    """What the consumer types share: the dispatcher, the stop flag and the failures /health shows."""

    def __init__(self, name: str, executor: Executor) -> None:
        self.name = name
        self.dispatcher = Dispatcher(executor, name)
        self.node_id = executor.node.id
        self.stopping = False
        self._errors: dict[str, str] = {}  # what failed (a partition, a stream, a connection) -> how

    def stop(self) -> None:
        self.stopping = True

    @property
    def error(self) -> str:
        return "; ".join(self._errors.values())

    def failed(self, key: str, what: str, e: BaseException | str) -> None:
        self._errors[key] = f"{what}: {str(e) or type(e).__name__}"
        self.dispatcher.metrics.consumer_error(self.name)
        logger.error("consumer %s: %s: %s", self.name, what, self._errors[key])

    def recovered(self, key: str) -> None:
        self._errors.pop(key, None)


def next_backoff(retries: int) -> float:
    """Exponential backoff with jitter, 10 ms doubling up to 5 s (Centrifugo's consumers' schedule)."""
    return min(MAX_BACKOFF, (MIN_BACKOFF + random.random() * MIN_BACKOFF) * (1 << min(retries, 20)))


class Dispatcher:
    """Runs consumed commands for one consumer through the executor and counts the outcome."""

    def __init__(self, executor: Executor, consumer: str) -> None:
        self.executor = executor
        self.consumer = consumer
        self.metrics = executor.node.metrics
        self.metrics.consumer_init(consumer)

    def skip(self, reason: str, detail: str) -> None:
        logger.error("consumer %s: skipping a message (%s): %s", self.consumer, reason, detail)
        self.metrics.consumer_skipped(self.consumer, reason)

    async def dispatch(self, method: str, payload: bytes | str) -> None:
        """Run one command; raises ``RetryLaterError`` when it should be delivered again later."""
        try:
            params: Any = orjson.loads(payload)
        except orjson.JSONDecodeError as e:
            self.skip("malformed", f"payload is not JSON: {e}")
            return
        if not method:  # the whole command in the payload
            if not isinstance(params, dict) or not isinstance(params.get("method"), str):
                self.skip("malformed", "no method: expected {\"method\": ..., \"payload\": {...}}")
                return
            method, params = params["method"], params.get("payload")
            if isinstance(params, str):  # a JSON string holding the request (Debezium's JSONB encoding)
                try:
                    params = orjson.loads(params)
                except orjson.JSONDecodeError as e:
                    self.skip("malformed", f"payload string is not JSON: {e}")
                    return
        if method not in METHODS:
            self.skip("unsupported_method", f"method {method!r} is not run by consumers")
            return
        if not isinstance(params, dict):
            self.skip("malformed", f"{method} payload is not a JSON object")
            return
        await self.run(method, params)

    async def run(self, method: str, params: dict[str, Any]) -> None:
        """Run a decoded command through the executor; internal errors raise ``RetryLaterError``."""
        try:
            result = await self.executor.call(method, params, protocol="consumer")
        except ReplyError as e:
            if e.error.code == ERROR_INTERNAL.code:
                raise RetryLaterError(f"{method}: {e.error.message}") from None
            self.skip("rejected", f"{method} failed with error {e.error.code} {e.error.message}")
            return
        if method == "broadcast" and b'"code":%d' % ERROR_INTERNAL.code in result:
            # Any channel that failed internally retries the whole broadcast (Centrifugo's rule); an
            # idempotency_key keeps the channels that succeeded from getting it twice.
            raise RetryLaterError("broadcast: internal error on some channels")
