"""The worker's HTTP adapter: a lean HTTP/1.1 server over the transport-agnostic ``DataPlane``.

The gateway is this server's only client; it sends one request at a time on pooled
keep-alive connections. A general web framework pays, per request, for what that client
never uses (request and response objects, middleware chains, a router, header
multidicts); this server parses with httptools (llhttp, the parser uvicorn uses) straight
into the few fields the data plane reads and writes one response head. It is still a
complete HTTP/1.1 server for that use: keep-alive and ``Connection: close``, HTTP/1.0,
``Content-Length`` and chunked bodies, ``Expect: 100-continue``, pipelined requests
answered in order, a body limit (413, before the body is read) and a head limit (431),
malformed requests answered 400 and closed, idle keep-alive connections closed after
``KEEPALIVE_S``, a handler cancelled when its client goes away.

Only health (``/v2/health/live|ready``, for probes) is open; everything else, including
``/v2``, the model routes and Prometheus ``/metrics`` (which names tenants and models),
needs the worker token (``Authorization: Bearer …``), which only the gateway and the
platform's Prometheus have.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import socket
import time
from collections import deque
from http import HTTPStatus
from typing import cast
from urllib.parse import unquote

import httptools
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from inference_workers.codec import decompress, error_body
from inference_workers.dataplane import DataPlane
from inference_workers.errors import DataPlaneError, MethodNotAllowedError, UnauthorizedError
from inference_workers.loop import EventLoopThread
from inference_workers.metrics import WorkerMetrics

log = logging.getLogger(__name__)
access_logger = logging.getLogger("inference_workers.access")

JSON = b"application/json"
KEEPALIVE_S = 75.0  # above the gateway's pool idle time (30 s), so the gateway closes first
MAX_HEAD_BYTES = 64 * 1024
LINGER_S = 2.0  # how long a rejected request's remaining bytes are read and dropped
MAX_PIPELINED = 16  # requests parsed ahead of the one being answered before reading pauses
# The gateway's X-Request-ID shape (apps/gateway/app.py); another value is not echoed.
_REQUEST_ID_SHAPE = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")
_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}


class Request:
    """What the data plane needs of one HTTP request."""

    __slots__ = (
        "authorization",
        "body",
        "content_encoding",
        "header_length",
        "keep_alive",
        "method",
        "path",
        "request_id",
    )

    def __init__(self) -> None:
        self.method = b""
        self.path = b""
        self.authorization = b""
        self.request_id = b""  # the gateway's X-Request-ID, echoed and named in the log
        self.header_length: str | None = None
        self.content_encoding = b""
        self.body = b""
        self.keep_alive = True

    def described(self) -> tuple[str, str, str]:
        """Method, path and request id (``-`` without one), as log lines name them."""
        return self.method.decode(), self.path.decode("latin-1"), self.request_id.decode() or "-"


class Reply:
    """A response: status, content type, body and any further headers."""

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self, status: int, body: bytes, content_type: bytes = JSON, headers: dict[str, str] | None = None
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers


def _json(body: object, status: int = 200) -> Reply:
    return Reply(status, orjson.dumps(body))


def _error(status: int, message: str) -> Reply:
    return Reply(status, error_body(message))


class DataPlaneApp:
    """Routes requests to the data plane: ``handle(request) -> Reply``; never raises."""

    def __init__(
        self, dataplane: DataPlane, *, token: str, max_body_bytes: int, metrics: WorkerMetrics, access_log: bool = False
    ) -> None:
        self.dataplane = dataplane
        self.max_body_bytes = max_body_bytes
        self.access_log = access_log
        self._metrics = metrics
        self._expected = f"Bearer {token}".encode()
        self._token = token

    def _authorized(self, request: Request) -> bool:
        return bool(self._token) and hmac.compare_digest(request.authorization, self._expected)

    async def handle(self, request: Request) -> Reply:
        try:
            return await self._route(request)
        except MethodNotAllowedError as error:
            return Reply(405, error_body(error.message), headers={"Allow": error.allowed})
        except DataPlaneError as error:
            if error.status >= 500:
                method, path, request_id = request.described()
                log.warning("%s %s answered %d (request %s): %s", method, path, error.status, request_id, error.message)
            return _error(error.status, error.message)
        except Exception:  # a bug must still answer in the protocol's shape, and be logged
            log.exception("unexpected error on %s %s (request %s)", *request.described())
            return _error(500, "internal error in the worker; see its log")

    async def _route(self, request: Request) -> Reply:
        path = request.path.split(b"?", 1)[0]
        parts = path.decode("latin-1").split("/")
        method = request.method
        # parts[0] is "" (the path starts with "/").
        if len(parts) == 4 and parts[1] == "v2" and parts[2] == "health" and parts[3] in ("live", "ready"):
            self._allow(method, b"GET")
            if parts[3] == "live":
                return _json({"live": self.dataplane.live()})
            if self.dataplane.ready():
                return _json({"ready": True})
            return _error(503, "the worker is draining; send requests to another replica")
        if not self._authorized(request):  # anything but health needs the token, unknown paths too
            raise UnauthorizedError("missing or wrong worker token; only the gateway may call a worker")
        if len(parts) < 2 or parts[0] != "" or parts[1] not in ("v2", "metrics"):
            return _error(404, f"no route {path.decode('latin-1')!r} on a worker")
        if parts[1] == "metrics" and len(parts) == 2:
            self._allow(method, b"GET")
            return Reply(200, generate_latest(self._metrics.registry), CONTENT_TYPE_LATEST.encode())
        if len(parts) == 2:  # /v2
            self._allow(method, b"GET")
            return _json(self.dataplane.server_metadata())
        # /v2/models/{name}[/versions/{version}][/ready|/infer]
        if len(parts) < 4 or parts[2] != "models" or not parts[3]:
            return _error(404, f"no route {path.decode('latin-1')!r} on a worker")
        name = unquote(parts[3]) if "%" in parts[3] else parts[3]
        rest = parts[4:]
        version: str | None = None
        if len(rest) >= 2 and rest[0] == "versions" and rest[1]:
            version = unquote(rest[1]) if "%" in rest[1] else rest[1]
            rest = rest[2:]
        if not rest:
            self._allow(method, b"GET")
            return _json(self.dataplane.model_metadata(name, version))
        if len(rest) == 1 and rest[0] == "infer":
            self._allow(method, b"POST")
            body = request.body
            if request.content_encoding:
                body = decompress(body, request.content_encoding, limit=self.max_body_bytes)
            payload, headers = await self.dataplane.infer(name, version, body, header_length=request.header_length)
            content_type = headers.pop("content-type", "application/json")
            return Reply(200, payload, content_type.encode(), headers)
        if len(rest) == 1 and rest[0] == "ready":
            self._allow(method, b"GET")
            if self.dataplane.model_ready(name, version):
                return _json({"ready": True})
            return _error(503, "the model is not ready here")
        return _error(404, f"no route {path.decode('latin-1')!r} on a worker")

    @staticmethod
    def _allow(method: bytes, allowed: bytes) -> None:
        if method != allowed:
            raise MethodNotAllowedError(method.decode(), allowed.decode())


def build_app(
    dataplane: DataPlane, *, token: str, max_body_bytes: int, metrics: WorkerMetrics, access_log: bool = False
) -> DataPlaneApp:
    """The HTTP application serving ``dataplane``."""
    return DataPlaneApp(dataplane, token=token, max_body_bytes=max_body_bytes, metrics=metrics, access_log=access_log)


def _head(reply: Reply, *, keep_alive: bool, request_id: bytes = b"") -> bytes:
    lines = [
        b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
        % (reply.status, _REASONS.get(reply.status, b"Unknown"), reply.content_type, len(reply.body))
    ]
    if request_id:
        lines.append(b"X-Request-ID: %s\r\n" % request_id)
    if reply.headers:
        lines.extend(f"{name}: {value}\r\n".encode("latin-1") for name, value in reply.headers.items())
    if not keep_alive:
        lines.append(b"Connection: close\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


class _Connection(asyncio.Protocol):
    """One client connection: parses requests and answers them in order."""

    def __init__(self, app: DataPlaneApp, connections: set[_Connection]) -> None:
        self._app = app
        self._connections = connections
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._request = Request()
        self._url: list[bytes] = []
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._head_bytes = 0
        self._rejected = False
        self._pending: deque[Request] = deque()
        self._task: asyncio.Task[None] | None = None
        self._paused = False
        self._expect_continue = False
        self.last_active = time.monotonic()

    # asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self._transport = cast(asyncio.Transport, transport)
        self._connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        self._pending.clear()
        if self._task is not None and not self._task.done():
            self._task.cancel()  # a queued request whose client left is dropped before it runs

    def data_received(self, data: bytes) -> None:
        if self._rejected:
            return
        self.last_active = time.monotonic()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(400, "protocol upgrades are not served here")
        except httptools.HttpParserError as exc:
            if not self._rejected:
                self._reject(400, f"malformed HTTP request: {exc}")

    # httptools callbacks --------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._request = Request()
        self._url = []
        self._body = []
        self._body_bytes = 0
        self._head_bytes = 0
        self._expect_continue = False

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        lowered = name.lower()
        if lowered == b"authorization":
            self._request.authorization = value
        elif lowered == b"inference-header-content-length":
            self._request.header_length = value.decode("latin-1")
        elif lowered == b"x-request-id":
            if _REQUEST_ID_SHAPE.match(value):  # anything else is not echoed (header injection)
                self._request.request_id = value
        elif lowered == b"content-encoding":
            self._request.content_encoding = value.strip().lower()
        elif lowered == b"content-length":
            if value.isdigit() and int(value) > self._app.max_body_bytes:
                self._reject(
                    413, f"the body has {int(value)} bytes; this worker takes at most {self._app.max_body_bytes}"
                )
        elif lowered == b"expect" and value.lower() == b"100-continue":
            self._expect_continue = True  # answered once the head is complete

    def on_headers_complete(self) -> None:
        request = self._request
        request.method = self._parser.get_method()
        request.path = b"".join(self._url)
        if self._parser.should_keep_alive() is False:
            request.keep_alive = False
        if self._transport is not None and not self._rejected and self._expect_continue:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self._rejected:
            return
        self._body_bytes += len(body)
        if self._body_bytes > self._app.max_body_bytes:
            self._reject(413, f"the body is over this worker's limit of {self._app.max_body_bytes} bytes")
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._rejected:
            return
        request = self._request
        request.body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        request.keep_alive = request.keep_alive and self._parser.should_keep_alive()
        self._body = []
        if self._task is None:
            self._task = self._loop.create_task(self._serve(request))
            return
        self._pending.append(request)
        if len(self._pending) >= MAX_PIPELINED and self._transport is not None and not self._paused:
            self._paused = True
            self._transport.pause_reading()

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES and not self._rejected:
            self._reject(431, f"the request head is over {MAX_HEAD_BYTES} bytes")

    # serving --------------------------------------------------------------------------
    async def _serve(self, request: Request | None) -> None:
        while request is not None:
            reply = await self._app.handle(request)
            transport = self._transport
            if transport is None or transport.is_closing():
                return
            if self._app.access_log:  # before the answer leaves: a client that got it finds its line
                method, path, request_id = request.described()
                access_logger.info("%s %s %d request=%s", method, path, reply.status, request_id)
            transport.write(_head(reply, keep_alive=request.keep_alive, request_id=request.request_id) + reply.body)
            self.last_active = time.monotonic()
            if not request.keep_alive:
                transport.close()
                return
            request = self._pending.popleft() if self._pending else None
            if self._paused and len(self._pending) < MAX_PIPELINED // 2:
                self._paused = False
                transport.resume_reading()
        self._task = None

    def _reject(self, status: int, message: str) -> None:
        """Answers at once and ends the connection; anything parsed after it is dropped.

        The response goes out with a FIN, and what the client still sends (the rest of an
        oversized body) is read and dropped for a moment before the socket closes: closing
        with unread bytes would reset the connection and could destroy the response before
        the client read it.
        """
        self._rejected = True
        self._pending.clear()
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._task is not None and not self._task.done():
            self._task.cancel()
        reply = _error(status, message)
        transport.write(_head(reply, keep_alive=False) + reply.body)
        if transport.can_write_eof():
            transport.write_eof()
            self._loop.call_later(LINGER_S, transport.close)
        else:  # pragma: no cover - TCP transports can half-close
            transport.close()

    def close_if_idle(self, now: float) -> None:
        if self._task is None and now - self.last_active > KEEPALIVE_S and self._transport is not None:
            self._transport.close()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class DataPlaneServer:
    """Serves the app on the data plane's event-loop thread; ``start`` returns the port."""

    def __init__(self, app: DataPlaneApp, *, host: str, port: int, loop: EventLoopThread) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._loop = loop
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._connections: set[_Connection] = set()
        self.port = 0

    def start(self) -> int:
        """Binds the socket, starts serving, and returns the port it listens on."""
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._host, self._port))
        sock.listen(1024)
        sock.setblocking(False)
        self.port = int(sock.getsockname()[1])

        async def serve() -> None:
            loop = asyncio.get_running_loop()
            self._server = await loop.create_server(lambda: _Connection(self._app, self._connections), sock=sock)
            self._sweeper = loop.create_task(self._sweep())

        self._loop.run(serve(), timeout=30)
        log.info("data plane listening on %s:%d", self._host, self.port)
        return self.port

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE_S / 5)
            now = time.monotonic()
            for connection in list(self._connections):
                connection.close_if_idle(now)

    def stop(self) -> None:
        """Stops serving (open connections are closed)."""
        if self._server is None:
            return

        async def shutdown() -> None:
            assert self._server is not None
            self._server.close()
            if self._sweeper is not None:
                self._sweeper.cancel()
            for connection in list(self._connections):
                connection.close()
            await self._server.wait_closed()

        self._loop.run(shutdown(), timeout=30)
        self._server = None
