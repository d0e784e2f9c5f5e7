"""The gateway's client to the workers: pooled keep-alive HTTP/1.1, bytes in, bytes out.

A general HTTP client pays for features the gateway never uses (cookies, redirects,
chunked uploads, per-request objects); this one sends one request with a known body on
an idle pooled connection (or a new one) and reads one ``Content-Length`` (or chunked)
response with httptools, the parser uvicorn uses. Its errors say how far the request got,
because the gateway may retry only what never reached the worker:

- ``UpstreamConnectError``: no connection could be made; nothing was sent (retry is safe).
- ``UpstreamBrokenError``: the connection broke after the request was written; the worker
  may have begun executing it (never retried).

A pooled connection the worker closed while idle is noticed before it is reused (the
protocol sees the EOF), and idle connections older than ``idle_s`` are dropped; both keep
"broken after writing" for the case the worker really died mid-request.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

# Response headers the gateway hands on to its client (names lower-cased).
PASSED_HEADERS = frozenset({b"content-type", b"inference-header-content-length"})


class UpstreamError(Exception):
    """A request to a worker did not get a response."""


class UpstreamConnectError(UpstreamError):
    """No connection to the worker: the request was not sent."""


class UpstreamBrokenError(UpstreamError):
    """The connection broke after the request was sent; the worker may have run it."""


# A body this large goes beside its head (``writelines``: one ``writev`` with uvloop), not
# copied onto it.
JOIN_BELOW = 65536


def write_joined(transport: asyncio.WriteTransport, head: bytes, body: bytes | bytearray | memoryview) -> None:
    """Writes an HTTP message's head and body in one call."""
    if len(body) < JOIN_BELOW:
        transport.write(head + body)
    else:
        transport.writelines((head, body))


@dataclass(frozen=True)
class UpstreamResponse:
    """A worker's answer: status, the headers the gateway passes on, and the body."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = time.monotonic()
        self._waiter: asyncio.Future[UpstreamResponse] | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._chunks: list[bytes] = []
        self._keep_alive = True

    # asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # bytes nobody asked for: the connection cannot be trusted
            self._close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamBrokenError(f"the worker sent a malformed response: {exc}"))

    def eof_received(self) -> bool | None:
        self._close()
        self._fail(UpstreamBrokenError("the worker closed the connection before answering"))
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(UpstreamBrokenError(f"the connection to the worker was lost ({exc or 'closed'})"))

    # httptools callbacks --------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered in PASSED_HEADERS:
            self._headers.append((lowered, value))

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._keep_alive = self._parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        waiter, self._waiter = self._waiter, None
        response = UpstreamResponse(status=self._status, headers=self._headers, body=b"".join(self._chunks))
        if not self._keep_alive:
            self._close()
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    # use ----------------------------------------------------------------------------
    def send(self, head: bytes, body: bytes) -> asyncio.Future[UpstreamResponse]:
        assert self.transport is not None and self._waiter is None
        self._status, self._headers, self._chunks = 0, [], []
        self._parser = httptools.HttpResponseParser(self)
        self._waiter = asyncio.get_running_loop().create_future()
        write_joined(self.transport, head, body)
        return self._waiter

    def reusable(self, idle_s: float) -> bool:
        return not self.closed and self._keep_alive and time.monotonic() - self.idle_since < idle_s

    def _fail(self, error: UpstreamError) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def _close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Upstream:
    """Pools of keep-alive connections to the workers' data planes, by base URL."""

    def __init__(
        self,
        *,
        idle_s: float = 30.0,
        max_idle_per_worker: int = 64,
        connect_timeout_s: float = 2.0,
        max_connections_per_worker: int = 256,
    ) -> None:
        self._idle: dict[str, deque[_Connection]] = {}
        # Requests in flight per worker, each on its own connection; past the cap they wait.
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._max_connections = max(1, max_connections_per_worker)
        self._busy: dict[str, int] = {}
        self._idle_s = idle_s
        self._max_idle = max_idle_per_worker
        self._connect_timeout_s = connect_timeout_s

    async def _connect(self, base_url: str) -> _Connection:
        parts = urlsplit(base_url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, protocol = await loop.create_connection(_Connection, host, port)
        except (OSError, TimeoutError) as exc:
            raise UpstreamConnectError(f"cannot connect to the worker at {base_url}: {exc or 'timed out'}") from None
        return protocol

    def _take_idle(self, base_url: str) -> _Connection | None:
        pool = self._idle.get(base_url)
        while pool:
            connection = pool.pop()
            if connection.reusable(self._idle_s):
                return connection
            connection._close()
        return None

    async def request(
        self, base_url: str, method: str, path: str, *, headers: list[tuple[bytes, bytes]], body: bytes = b""
    ) -> UpstreamResponse:
        """Sends one request and returns the response.

        Raises:
            UpstreamConnectError: Nothing was sent (the caller may try another worker).
            UpstreamBrokenError: The request was sent but no response came back.
        """
        slots = self._slots.get(base_url)
        if slots is None:
            slots = self._slots[base_url] = asyncio.Semaphore(self._max_connections)
        async with slots:
            self._busy[base_url] = self._busy.get(base_url, 0) + 1
            try:
                return await self._exchange(base_url, method, path, headers, body)
            finally:
                self._busy[base_url] -= 1

    def in_flight(self, base_url: str) -> int:
        """Requests this pool has in flight to one worker now."""
        return self._busy.get(base_url, 0)

    async def _exchange(
        self, base_url: str, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> UpstreamResponse:
        connection = self._take_idle(base_url) or await self._connect(base_url)
        parts = urlsplit(base_url)
        lines = [f"{method} {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Length: {len(body)}\r\n".encode()]
        lines.extend(name + b": " + value + b"\r\n" for name, value in headers)
        lines.append(b"\r\n")
        try:
            response = await connection.send(b"".join(lines), body)
        except BaseException:
            connection._close()  # a cancelled or failed exchange leaves the stream unusable
            raise
        connection.idle_since = time.monotonic()
        if not connection.closed:
            pool = self._idle.setdefault(base_url, deque())
            if len(pool) < self._max_idle:
                pool.append(connection)
            else:
                connection._close()
        return response

    def forget(self, base_url: str) -> None:
        """Closes the idle connections to a worker (it failed, or left the fleet)."""
        for connection in self._idle.pop(base_url, ()):
            connection._close()
        if not self._busy.get(base_url):  # nothing in flight (so nobody waits): drop its slots too
            self._slots.pop(base_url, None)
            self._busy.pop(base_url, None)

    async def close(self) -> None:
        """Closes every idle connection."""
        for base_url in list(self._idle):
            self.forget(base_url)
