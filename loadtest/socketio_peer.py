"""The peer server for the benchmark: python-socketio's AsyncServer on aiohttp, broadcasting to a room — the
same fan-out workload as Fugato's, for a ratio measured in one run.

    python -m loadtest.socketio_peer PORT

Clients emit ``join`` with a room name; ``POST /publish`` with ``{"room": ..., "data": ...}`` emits ``msg`` to
the room.
"""

from __future__ import annotations

import sys

import socketio
from aiohttp import web


def main() -> None:
    sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins="*")
    app = web.Application()
    sio.attach(app)

    @sio.on("join")  # type: ignore[misc]
    async def join(sid: str, room: str) -> None:
        await sio.enter_room(sid, room)
        await sio.emit("joined", room, to=sid)

    async def publish(request: web.Request) -> web.Response:
        body = await request.json()
        await sio.emit("msg", body["data"], room=body["room"])
        return web.json_response({})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({})

    app.router.add_post("/publish", publish)
    app.router.add_get("/health", health)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()
