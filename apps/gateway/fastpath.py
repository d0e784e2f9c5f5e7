"""uvicorn's HTTP protocol (httptools) with one shortcut for the gateway.

A tenant far over its rate sends requests the gateway only refuses. Through the ASGI cycle a
refusal costs about 130 µs of the web process's CPU, two thirds of it in uvicorn and asyncio
(docs/gateway.md): CPU the other tenants' requests wait for. Here, as a request's headers
complete, the gateway (``GatewayApp.refusal``) is asked whether admission refuses it now,
decided with no I/O; if so the 429 is written at once, in one write, and the request's body
is read and dropped: no scope, no task, no ASGI messages. Anything else (and any request the
shortcut cannot be sure of: pipelined behind an unfinished answer, a client not reading its
answers, ``Expect: 100-continue``, not HTTP/1.1 keep-alive, an escaped or query-bearing
path) goes the usual way.

And every answer that does go the usual way leaves in one write (``_OneWriteAnswer``):
uvicorn writes an answer's head as the app starts it and its body as the app sends it, two
writes; the head is held for the body's first part and both go in one call, one ``write``
fewer per answer (docs/gateway.md, under "Benchmark").

Both rest on uvicorn's internals (the cycle's first write is its head, ``_start_asgi_task``
starts each cycle's task), which is why ``uvicorn[standard]`` is pinned in requirements.txt;
``tests/apps/gateway/test_fastpath.py`` checks them on a real server.

Served by ``uvicorn --http apps.gateway.fastpath:GatewayHttpProtocol`` (the launcher does).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from apps.gateway.upstream import write_joined

if TYPE_CHECKING:
    from uvicorn._types import ASGI3Application

# (path, headers) → (headers, body) of the 429, or None: the request goes the usual way.
Refuser = Callable[[str, list[tuple[bytes, bytes]]], tuple[list[tuple[bytes, bytes]], bytes] | None]

_refusers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Refuser] = weakref.WeakKeyDictionary()
_PREFIX = b"/v2/models/"


def install(loop: asyncio.AbstractEventLoop, refuser: Refuser) -> None:
    """Makes ``refuser`` the one the protocol asks on ``loop`` (the gateway's, once it starts)."""
    _refusers[loop] = refuser


class _NoWaiters:
    """The cycle's ``message_event``, which nothing waits on once the answer is out."""

    def set(self) -> None:
        pass


class _Answered:
    """Stands for the finished cycle of a refused request while its body is dropped: what
    the protocol reads of a cycle (``response_complete``, ``message_event`` when the
    connection goes) says it is over."""

    response_complete = True
    disconnected = False
    message_event = _NoWaiters()


_ANSWERED = _Answered()


class _OneWriteAnswer:
    """The transport as one request's cycle sees it: its first write (the answer's head:
    nothing else goes first, as cycles given one expect no ``100 Continue``) is held and
    goes out with the next (the body's first part), or as the cycle closes the connection.
    Everything else is the connection's transport's own."""

    __slots__ = ("_head", "_started", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._head: bytes | None = None
        self._started = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        head = self._head
        if head is not None:
            self._head = None
            write_joined(self._transport, head, data)
        elif self._started:
            self._transport.write(data)
        else:
            self._started = True
            self._head = bytes(data)

    def close(self) -> None:
        head, self._head = self._head, None
        # An app that failed after starting its answer: its head goes first, as it would
        # have; on a connection already lost there is nowhere to write it (and uvloop
        # raises on a write to a closed transport).
        if head is not None and not self._transport.is_closing():
            self._transport.write(head)
        self._transport.close()

    def __getattr__(self, name: str) -> object:
        return getattr(self._transport, name)


class GatewayHttpProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` that answers the gateway's no-I/O refusals from the parser and
    writes every other answer in one write."""

    def on_message_begin(self) -> None:
        # A refused request's end armed the keep-alive timer; a request read in the same
        # chunk (no ``data_received`` between) must not run under it.
        self._unset_keepalive_if_required()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        if not self._refused():
            super().on_headers_complete()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        # Before the app can write anything (a pipelined request's cycle comes here later,
        # when the one before it is answered): its answer goes out in one write, unless the
        # client waits for a ``100 Continue`` (written first, at once) or the answer has no
        # body write to join its head to (HEAD, decided as uvicorn decides it).
        if not cycle.waiting_for_100_continue and cycle.scope["method"] != "HEAD":
            cycle.transport = _OneWriteAnswer(cycle.transport)  # type: ignore[assignment]
        super()._start_asgi_task(cycle, app)

    def on_message_complete(self) -> None:
        if self.cycle is _ANSWERED:  # the refused request's body is all in: the next may come
            self.cycle = None  # type: ignore[assignment]
            self._unset_keepalive_if_required()
            self.on_response_complete()
            return
        super().on_message_complete()

    def _refused(self) -> bool:
        refuser = _refusers.get(self.loop)
        url = self.url
        if (
            refuser is None
            or not url.startswith(_PREFIX)
            or b"%" in url
            or b"?" in url
            or self.expect_100_continue
            or self.pipeline
            or (self.cycle is not None and not self.cycle.response_complete)
            or self.flow.write_paused  # the client is not reading its answers: the usual way waits
            or self.parser.get_method() != b"POST"
            or self.parser.get_http_version() != "1.1"
            or not self.parser.should_keep_alive()
            or self.parser.should_upgrade()
        ):
            return False
        answer = refuser(url.decode("latin-1").rstrip("/"), self.headers)
        if answer is None:
            return False
        headers, body = answer
        content = [STATUS_LINE[429]]
        for name, value in (*self.server_state.default_headers, *headers):
            content += [name, b": ", value, b"\r\n"]
        content += [b"content-length: ", str(len(body)).encode(), b"\r\n\r\n", body]
        self.transport.write(b"".join(content))
        self.cycle = _ANSWERED  # type: ignore[assignment]
        # As after the usual way's answer: a client that stalls mid-body is let go.
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)
        return True
