"""An in-process subscribe stream: the application's async generator behind the interface through which
``streams.Streams`` drives a GRPC stream call (``read`` / ``write`` / ``cancel``), so both kinds of stream share
one reader, one delivery path and one set of unsubscribe rules.

The handler is ``fn(req: SubscribeRequest, incoming)``: its first yielded item is the subscribe answer (a
``SubscribeResult``, or it raises ``ReplyError`` / ``DisconnectError`` to refuse, as the GRPC stream's first
message); every later item is a publication for this one client (``bytes`` or ``StreamPublication``).
``incoming`` is an async iterator of the data of the client's publishes in a bidirectional stream; in a
unidirectional one it ends at once. Returning ends the stream cleanly (the client is unsubscribed with 2000),
raising breaks it (2500, the SDK resubscribes), as a GRPC stream ending or failing does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import grpc

from node.proxy import types as pt
from node.proxy.proto import proxy_pb2 as pb

logger = logging.getLogger(__name__)

_END: Final = object()
_closing: set[asyncio.Task[None]] = set()  # generators being closed after a cancel (kept from the GC)


@dataclass(frozen=True, slots=True)
class StreamPublication:
    """A publication a stream handler yields when it wants tags with it (plain ``bytes`` otherwise)."""

    data: bytes
    tags: Mapping[str, str] | None = None


class StreamBroken(Exception):
    """The handler raised while streaming: the stream broke (the subscription ends with 2500)."""


class Incoming:
    """The client's publishes into a bidirectional stream, as an async iterator of their data."""

    def __init__(self, bidirectional: bool) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        if not bidirectional:
            self._queue.put_nowait(_END)

    def put(self, data: bytes) -> None:
        self._queue.put_nowait(data)

    def close(self) -> None:
        self._queue.put_nowait(_END)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)  # every later read ends too
            raise StopAsyncIteration
        data: bytes = item
        return data


class PythonStreamCall:
    """One open in-process stream, read and written like ``grpc.aio``'s stream call."""

    def __init__(self, stream: AsyncIterator[Any], incoming: Incoming) -> None:
        self._stream = stream
        self._incoming = incoming

    async def read(self) -> Any:
        try:
            item = await anext(self._stream)
        except StopAsyncIteration:
            return grpc.aio.EOF
        except Exception as e:  # a handler's failure breaks its stream, never the connection
            raise StreamBroken(repr(e)) from None
        if isinstance(item, bytes):
            return pb.StreamSubscribeResponse(publication=pb.Publication(data=item))
        if isinstance(item, StreamPublication):
            return pb.StreamSubscribeResponse(publication=pb.Publication(data=item.data, tags=item.tags or {}))
        raise StreamBroken(f"the stream handler yielded {type(item).__name__}, not bytes or StreamPublication")

    async def write(self, msg: Any) -> None:
        self._incoming.put(msg.publication.data)

    def cancel(self) -> None:
        self._incoming.close()
        aclose = getattr(self._stream, "aclose", None)
        if aclose is not None and not getattr(self._stream, "ag_running", False):
            # A generator not being read now is closed here; one being read ends by the cancel of its reader.
            task = asyncio.get_running_loop().create_task(aclose())
            _closing.add(task)
            task.add_done_callback(_closing.discard)


async def open_stream(fn: Callable[..., AsyncIterator[Any]], req: pt.SubscribeRequest, bidirectional: bool,
                      ) -> tuple[PythonStreamCall, pt.SubscribeResult]:
    """Start the handler and take its first item, the subscribe answer (refusals are raised as they came)."""
    incoming = Incoming(bidirectional)
    stream = fn(req, incoming)
    try:
        first = await anext(stream)
    except StopAsyncIteration:
        raise pt.ProxyCallError("bad_response", "the stream handler ended before its subscribe result") from None
    call = PythonStreamCall(stream, incoming)
    if first is not None and not isinstance(first, pt.SubscribeResult):
        call.cancel()
        raise pt.ProxyCallError("bad_response", f"the stream's first item is {type(first).__name__}, "
                                "not a SubscribeResult")
    return call, first or pt.SubscribeResult()
