"""Real application backends for the proxy tests: an aiohttp app answering Centrifugo's HTTP proxy JSON and a
grpc.aio server implementing ``CentrifugoProxy``, both in the test's event loop on loopback.

Each records the requests it got (``calls``) and answers from ``answers[hook]`` (a function of the request;
default: an empty result). ``faults[hook]`` makes it misbehave: ``"slow"`` (answers only when the backend
closes), ``"5xx"`` (HTTP 500 / GRPC INTERNAL), ``"garbage"`` (a body that is not JSON / an aborted call).
A backend that is down is an endpoint nobody listens on (``dead_endpoint``).

The GRPC backend also serves subscription streams (hook ``subscribe_stream``): each opened stream is a
``BackendStream`` in ``streams``, through which the test sends publications, ends or breaks the stream, and sees
what the client published into it and whether Fugato closed it.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf import json_format
from harness import free_port

from node.proxy.proto import proxy_pb2 as pb
from node.proxy.proto import proxy_pb2_grpc as pb_grpc

Answer = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass
class Call:
    hook: str
    body: dict[str, Any]
    headers: dict[str, str]


@dataclass
class Recorder:
    calls: list[Call] = field(default_factory=list)
    answers: dict[str, Answer] = field(default_factory=dict)
    faults: dict[str, str] = field(default_factory=dict)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def of(self, hook: str) -> list[Call]:
        return [c for c in self.calls if c.hook == hook]

    def answer(self, hook: str, body: dict[str, Any]) -> dict[str, Any]:
        fn = self.answers.get(hook)
        return fn(body) if fn is not None else {"result": {}}


def self_signed() -> tuple[str, str]:
    """A certificate for 127.0.0.1 (its own CA) and its key, both PEM text."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()


class HttpBackend(Recorder):
    """POST /<hook> with Centrifugo's proxy JSON; over HTTPS with ``tls`` (a (cert, key) PEM pair)."""

    def __init__(self, tls: tuple[str, str] | None = None) -> None:
        super().__init__()
        self.port = free_port()
        self.tls = tls
        self._runner: web.AppRunner | None = None

    def endpoint(self, hook: str) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/{hook}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        hook = request.match_info["hook"]
        body = await request.json()
        self.calls.append(Call(hook, body, {k.lower(): v for k, v in request.headers.items()}))
        fault = self.faults.get(hook)
        if fault == "slow":
            await self.released.wait()
        elif fault == "5xx":
            return web.Response(status=500, text="backend exploded")
        elif fault == "garbage":
            return web.Response(text="<html>not json</html>")
        elif fault is not None and fault.startswith("status:"):
            return web.Response(status=int(fault[7:]))
        return web.json_response(self.answer(hook, body))

    async def __aenter__(self) -> HttpBackend:
        app = web.Application()
        app.router.add_post("/{hook}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        context = None
        if self.tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_verify_locations(cadata=self.tls[0])
            cert_file, key_file = _pem_files(self.tls)
            try:
                context.load_cert_chain(cert_file, key_file)
            finally:
                os.unlink(cert_file)
                os.unlink(key_file)
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=context).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.released.set()
        if self._runner is not None:
            await self._runner.cleanup()


@dataclass
class BackendStream:
    """One subscription stream as the backend sees it."""

    channel: str
    bidirectional: bool
    outgoing: asyncio.Queue[bytes | str] = field(default_factory=asyncio.Queue)  # data, "end" or "break"
    received: list[bytes] = field(default_factory=list)  # publications from the client (bidirectional)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def send(self, data: bytes) -> None:
        self.outgoing.put_nowait(data)


class GrpcBackend(Recorder, pb_grpc.CentrifugoProxyServicer):
    """``CentrifugoProxy`` over GRPC; answers are the same JSON shapes as for HTTP (proto JSON mapping)."""

    def __init__(self, tls: tuple[str, str] | None = None) -> None:
        Recorder.__init__(self)
        self.port = free_port()
        self.tls = tls
        self._server: grpc.aio.Server | None = None
        self.streams: list[BackendStream] = []

    @property
    def endpoint(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    async def _serve(self, hook: str, request: Any, context: Any, response: Any) -> Any:
        body = json_format.MessageToDict(request, preserving_proto_field_name=True)
        headers = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        self.calls.append(Call(hook, body, headers))
        fault = self.faults.get(hook)
        if fault == "slow":
            await self.released.wait()
        elif fault == "5xx":
            await context.abort(grpc.StatusCode.INTERNAL, "backend exploded")
        elif fault == "garbage":
            await context.abort(grpc.StatusCode.DATA_LOSS, "garbled")
        return json_format.ParseDict(self.answer(hook, body), response)

    async def Connect(self, request: Any, context: Any) -> Any:
        return await self._serve("connect", request, context, pb.ConnectResponse())

    async def Refresh(self, request: Any, context: Any) -> Any:
        return await self._serve("refresh", request, context, pb.RefreshResponse())

    async def Subscribe(self, request: Any, context: Any) -> Any:
        return await self._serve("subscribe", request, context, pb.SubscribeResponse())

    async def Publish(self, request: Any, context: Any) -> Any:
        return await self._serve("publish", request, context, pb.PublishResponse())

    async def RPC(self, request: Any, context: Any) -> Any:
        return await self._serve("rpc", request, context, pb.RPCResponse())

    async def SubRefresh(self, request: Any, context: Any) -> Any:
        return await self._serve("sub_refresh", request, context, pb.SubRefreshResponse())

    async def _stream(self, request: Any, context: Any, bidirectional: bool,
                      requests: Any = None) -> AsyncIterator[pb.StreamSubscribeResponse]:
        answer = await self._serve("subscribe_stream", request, context, pb.SubscribeResponse())
        stream = BackendStream(request.channel, bidirectional)
        self.streams.append(stream)
        reader = None
        if requests is not None:
            async def read() -> None:
                async for msg in requests:
                    stream.received.append(msg.publication.data)

            reader = asyncio.create_task(read())
        try:
            yield pb.StreamSubscribeResponse(subscribe_response=answer)
            if answer.HasField("error") or answer.HasField("disconnect"):
                return
            while True:
                item = await stream.outgoing.get()
                if item == "end":
                    return
                if item == "break":
                    await context.abort(grpc.StatusCode.INTERNAL, "stream broke")
                assert isinstance(item, bytes)
                yield pb.StreamSubscribeResponse(publication=pb.Publication(data=item, tags={"via": "stream"}))
        finally:
            if reader is not None:
                reader.cancel()
            stream.closed.set()

    async def SubscribeUnidirectional(self, request: Any, context: Any,
                                      ) -> AsyncIterator[pb.StreamSubscribeResponse]:
        async for msg in self._stream(request, context, False):  # grpc.aio wants an async generator function
            yield msg

    async def SubscribeBidirectional(self, request_iterator: Any, context: Any,
                                     ) -> AsyncIterator[pb.StreamSubscribeResponse]:
        first = await anext(aiter(request_iterator))
        async for msg in self._stream(first.subscribe_request, context, True, request_iterator):
            yield msg

    async def SharedPollRefresh(self, request: Any, context: Any) -> Any:
        return await self._serve("shared_poll_refresh", request, context, pb.SharedPollRefreshResponse())

    async def MapPublish(self, request: Any, context: Any) -> Any:
        return await self._serve("map_publish", request, context, pb.MapPublishResponse())

    async def MapRemove(self, request: Any, context: Any) -> Any:
        return await self._serve("map_remove", request, context, pb.MapRemoveResponse())

    async def __aenter__(self) -> GrpcBackend:
        self._server = grpc.aio.server()
        pb_grpc.add_CentrifugoProxyServicer_to_server(self, self._server)
        if self.tls is not None:
            creds = grpc.ssl_server_credentials([(self.tls[1].encode(), self.tls[0].encode())])
            self._server.add_secure_port(f"127.0.0.1:{self.port}", creds)
        else:
            self._server.add_insecure_port(f"127.0.0.1:{self.port}")
        await self._server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.released.set()
        if self._server is not None:
            await self._server.stop(0.5)


def dead_endpoint(scheme: str = "http") -> str:
    """An endpoint nobody listens on: a backend that is down."""
    port = free_port()
    return f"http://127.0.0.1:{port}/down" if scheme == "http" else f"grpc://127.0.0.1:{port}"


def _pem_files(tls: tuple[str, str]) -> tuple[str, str]:
    """ssl loads a certificate chain from files only."""
    import tempfile  # noqa: PLC0415

    paths = []
    for pem in tls:
        with tempfile.NamedTemporaryFile("w", suffix=".pem", delete=False) as fh:
            fh.write(pem)
            paths.append(fh.name)
    return paths[0], paths[1]
