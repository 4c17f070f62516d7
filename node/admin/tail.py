"""The live tail: a channel's publications streamed to an admin's browser as server-sent events.

Design: the node calls an in-process observer (``Node.observe``) for each publication of the channel after the
hub's fan-out, and the observer only appends to this tail's bounded queue; the SSE handler writes the queue out.
So normal subscribers pay one dict truthiness check per publication while nobody tails, the tail is no client
(it is not counted among the node's clients or a channel's subscribers), and the node holds the broker
subscription, so publications from every node of the cluster arrive. A tail that falls behind by more than
``MAX_PENDING`` publications is ended with an ``overflow`` event rather than buffered without bound."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections import deque
from typing import Final

import orjson
from aiohttp import web

from node.models import Publication, StreamPosition
from node.node import Node
from node.protocol import codec

logger = logging.getLogger(__name__)

MAX_PENDING: Final = 1000
MAX_TAILS: Final = 64  # per node: each holds a streaming response and maybe a broker subscription
PING_INTERVAL: Final = 20.0  # an SSE comment this often keeps proxies from closing an idle stream


class Tail:
    __slots__ = ("closed", "overflowed", "pending", "wake")

    def __init__(self) -> None:
        self.pending: deque[tuple[Publication, StreamPosition]] = deque()
        self.wake = asyncio.Event()
        self.overflowed = False
        self.closed = False

    def __call__(self, channel: str, pub: Publication, sp: StreamPosition) -> None:
        """The node's observer: synchronous and O(1)."""
        if len(self.pending) >= MAX_PENDING:
            self.overflowed = True
        else:
            self.pending.append((pub, sp))
        self.wake.set()

    def close(self) -> None:
        self.closed = True
        self.wake.set()


def _event(channel: str, pub: Publication, sp: StreamPosition) -> bytes:
    try:
        orjson.loads(pub.data)  # the admin's copy only: subscribers' payloads are never parsed
        body = codec.encode_publication(pub)
    except orjson.JSONDecodeError:
        body = b'{"b64data":%s,"offset":%d}' % (codec.raw(base64.b64encode(pub.data).decode()), pub.offset)
    return b'data: {"channel":%s,"epoch":%s,"publication":%s}\n\n' % (codec.raw(channel), codec.raw(sp.epoch), body)


class Tails:
    """The node's open tails, so a shutdown can end them."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._open: set[Tail] = set()

    def close_all(self) -> None:
        for tail in self._open:
            tail.close()

    async def stream(self, request: web.Request, channel: str) -> web.StreamResponse:
        if len(self._open) >= MAX_TAILS:
            return web.json_response({"error": "too many live tails on this node"}, status=503)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        tail = Tail()
        self._open.add(tail)
        try:
            await self.node.observe(channel, tail)
        except Exception as e:
            self._open.discard(tail)
            logger.warning("admin tail of %s: %s", channel, e)
            return web.json_response({"error": "engine unavailable"}, status=503)
        try:
            await response.prepare(request)
            # Sent once the broker subscription is in place: from here on no publication is missed.
            await response.write(b"event: ready\ndata: {}\n\n")
            await self._pump(response, tail, channel)
        except ConnectionResetError:
            pass  # the browser went away (or, on a cancelling server, the handler is cancelled: cleaned up below)
        finally:
            self.node.unobserve(channel, tail)
            self._open.discard(tail)
        return response

    async def _pump(self, response: web.StreamResponse, tail: Tail, channel: str) -> None:
        while not tail.closed:
            try:
                await asyncio.wait_for(tail.wake.wait(), PING_INTERVAL)
            except TimeoutError:
                await response.write(b": ping\n\n")
                continue
            tail.wake.clear()
            if tail.pending:
                events = b"".join(_event(channel, pub, sp) for pub, sp in tail.pending)
                tail.pending.clear()
                await response.write(events)
            if tail.overflowed:
                await response.write(b"event: overflow\ndata: {}\n\n")
                return
