"""``GatewayHttpProtocol`` in a real uvicorn server on a real socket: a refusal the gateway
knows at once is answered from the parser, the refused body is dropped in step with the
stream, and everything else (pipelined, ``Connection: close``) goes through the ASGI app,
each answer in one write; and ``GatewayApp.refusal``: which requests the gateway refuses
with no I/O."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime

import pytest
import uvicorn

from apps.gateway import fastpath, metrics
from apps.gateway.admission import Limits
from apps.gateway.app import Gateway, GatewayApp, GatewayError, GatewaySettings, KeyCache
from apps.gateway.routing import ModelRoute, RoutingSnapshot, TenantRoute, VersionRoute
from apps.tenants.access import ApiKeyPrincipal
from apps.tenants.keys import key_digest
from tests.conftest import free_port

REFUSAL = b'{"error":"over"}'


class _App:
    """Echoes the body's length; counts its calls."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, scope, receive, send) -> None:
        assert scope["type"] == "http"
        self.paths.append(scope["path"])
        if scope["path"] == "/slow":
            await asyncio.sleep(1.5)
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"] == "/stream":  # no content-length: chunked, in two parts
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"one", "more_body": True})
            await asyncio.sleep(0.05)
            await send({"type": "http.response.body", "body": b"two"})
            return
        if scope["path"] == "/fail-first":
            raise RuntimeError("the app fails before starting its answer")
        if scope["path"] == "/fail":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
            raise RuntimeError("the app fails after starting its answer")
        answer = b"got %d" % len(body) if scope["path"] != "/big" else b"b" * 100_000
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(answer))]}
        )
        await send({"type": "http.response.body", "body": answer})


def _refuser(path: str, headers: list[tuple[bytes, bytes]]):
    if (b"x-refuse", b"yes") not in headers:
        return None
    return [(b"content-type", b"application/json"), (b"x-path", path.encode())], REFUSAL


class _Written:
    """A connection's transport that keeps what each ``write``/``writelines`` call wrote
    (a ``writelines`` call's parts joined, its place in ``VECTORED``)."""

    def __init__(self, transport: asyncio.Transport, calls: list[bytes]) -> None:
        self._transport, self._calls = transport, calls

    def write(self, data: bytes) -> None:
        self._calls.append(bytes(data))
        self._transport.write(data)

    def writelines(self, parts) -> None:
        parts = [bytes(part) for part in parts]
        VECTORED.append(len(self._calls))
        self._calls.append(b"".join(parts))
        self._transport.writelines(parts)

    def __getattr__(self, name: str):
        return getattr(self._transport, name)


WRITES: list[bytes] = []  # every write call of the server's connections, in order
VECTORED: list[int] = []  # which of them were writelines calls


class _Recorded(fastpath.GatewayHttpProtocol):
    def connection_made(self, transport) -> None:
        super().connection_made(_Written(transport, WRITES))  # type: ignore[arg-type]


@pytest.fixture
async def server() -> AsyncIterator[tuple[_App, int]]:
    app, port = _App(), free_port()
    WRITES.clear()
    VECTORED.clear()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=_Recorded, lifespan="off",
        log_level="warning", timeout_keep_alive=1,
    )  # fmt: skip
    instance = uvicorn.Server(config)
    task = asyncio.create_task(instance.serve())
    while not instance.started:
        await asyncio.sleep(0.01)
    fastpath.install(asyncio.get_running_loop(), _refuser)
    yield app, port
    instance.should_exit = True
    await task


def _request(path: str, body: bytes, *, refuse: bool, close: bool = False) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
    head += "X-Refuse: yes\r\n" if refuse else ""
    head += "Connection: close\r\n" if close else ""
    return head.encode() + b"\r\n" + body


async def _answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if line)
    body = await reader.readexactly(int(headers["content-length"]))
    return int(lines[0].split()[1]), headers, body


async def test_a_refusal_is_answered_from_the_parser_and_its_body_dropped_in_step(server):
    app, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = b"x" * 70_000
    request = _request("/v2/models/m/infer", body, refuse=True)
    writer.write(request[: -len(body) + 10])  # the headers and a little: answered before the rest
    status, headers, answer = await _answer(reader)
    writer.write(request[-len(body) + 10 :])
    assert (status, answer) == (429, REFUSAL)
    assert headers["content-type"] == "application/json" and headers["x-path"] == "/v2/models/m/infer"
    assert headers["content-length"] == str(len(REFUSAL)) and "date" in headers
    # The same connection goes on: the next request is the app's, with its own body only.
    writer.write(_request("/v2/models/m/infer", b"12345", refuse=False))
    status, _, answer = await _answer(reader)
    assert (status, answer) == (200, b"got 5")
    writer.write(_request("/v2/models/m/versions/2/infer", b"abc", refuse=True))
    assert (await _answer(reader))[0] == 429
    writer.write(_request("/v2/models/m/infer", b"", refuse=False))
    assert (await _answer(reader))[2] == b"got 0"
    assert app.paths == ["/v2/models/m/infer", "/v2/models/m/infer"]  # refusals never reached it
    writer.close()
    # Every answer, the refusals' and the app's, left in one write: head and body together.
    bodies = (REFUSAL, b"got 5", REFUSAL, b"got 0")
    assert len(WRITES) == len(bodies)
    for call, answer_body, reason in zip(WRITES, bodies, (b"429 Too Many Requests", b"200 OK") * 2, strict=True):
        assert call.startswith(b"HTTP/1.1 " + reason + b"\r\n") and call.endswith(b"\r\n\r\n" + answer_body)


async def test_each_answer_of_the_app_leaves_in_one_write_and_none_waits_on_a_body_that_will_not_come(server):
    _, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_request("/v2/models/m/infer", b"abc", refuse=False))
    assert (await _answer(reader))[2] == b"got 3"
    assert len(WRITES) == 1 and WRITES[0].startswith(b"HTTP/1.1 200 OK\r\n") and WRITES[0].endswith(b"\r\n\r\ngot 3")
    # A large body goes beside its head, in one call: not copied onto it.
    writer.write(_request("/big", b"", refuse=False))
    status, _, answer = await _answer(reader)
    assert (status, answer) == (200, b"b" * 100_000)
    assert len(WRITES) == 2 and WRITES[1].endswith(b"\r\n\r\n" + answer)
    assert VECTORED == [1]  # one writelines call of the head and the body, not a copy of both
    # Streamed: the head goes with the first part, the rest as it comes.
    writer.write(_request("/stream", b"", refuse=False))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert b"transfer-encoding: chunked" in head
    assert await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5) == b"3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n"
    assert WRITES[2:] == [head + b"3\r\none\r\n", b"3\r\ntwo\r\n0\r\n\r\n"]
    # HEAD: an answer with no body write; its head is not held for one (written alone).
    writer.write(b"HEAD /v2/models/m HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: 5" in head
    assert WRITES[4:] == [head]
    # Expect: 100-continue: the interim answer first, at once, then the answer as uvicorn
    # writes it (the head, then the body).
    writer.write(b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"wxyz")
    assert (await _answer(reader))[2] == b"got 4"
    assert WRITES[5] == b"HTTP/1.1 100 Continue\r\n\r\n" and WRITES[7:] == [b"got 4"]
    writer.close()


async def test_an_app_that_fails_after_starting_its_answer_still_has_its_head_written(server):
    _, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_request("/fail", b"", refuse=False))
    # As uvicorn does without the one-write answer: the head, then the connection closed.
    received = await asyncio.wait_for(reader.read(), 5)
    assert received.startswith(b"HTTP/1.1 200 OK\r\n") and received.endswith(b"content-length: 10\r\n\r\n")
    assert [received] == WRITES
    writer.close()


async def test_pipelined_closing_and_failed_answers_each_leave_in_one_write(server):
    _, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    # Pipelined: each queued cycle gets its own held head when its turn comes.
    writer.write(b"".join(_request("/v2/models/m/infer", b"x" * n, refuse=False) for n in (1, 2, 3)))
    assert [(await _answer(reader))[2] for _ in range(3)] == [b"got 1", b"got 2", b"got 3"]
    assert [call.endswith(b"\r\n\r\ngot %d" % n) for n, call in enumerate(WRITES, 1)] == [True] * 3
    # A HEAD queued behind a POST: its cycle, started when the POST's answer is out, holds
    # no head (none would ever follow it).
    writer.write(_request("/v2/models/m/infer", b"", refuse=False) + b"HEAD /v2/models/m HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await _answer(reader))[2] == b"got 0"
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and WRITES[3].endswith(b"\r\n\r\ngot 0") and WRITES[4:] == [head]
    # An app failing before it starts its answer: uvicorn's 500, in one write, then closed.
    writer.write(_request("/fail-first", b"", refuse=False))
    received = await asyncio.wait_for(reader.read(), 5)
    assert received.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert received.endswith(b"Internal Server Error") and WRITES[5:] == [received]
    writer.close()
    # Connection: close: one write, then the server closes.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_request("/v2/models/m/infer", b"", refuse=False, close=True))
    received = await asyncio.wait_for(reader.read(), 5)
    assert received.endswith(b"\r\n\r\ngot 0") and b"connection: close" in received and WRITES[6:] == [received]
    writer.close()


async def test_a_request_right_behind_a_refusal_is_served_and_outlives_the_keep_alive_timeout(server):
    app, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    slow = b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    writer.write(_request("/v2/models/m/infer", b"{}", refuse=True) + slow)  # one chunk
    assert (await _answer(reader))[0] == 429
    status, _, answer = await _answer(reader)  # the app holds /slow past timeout_keep_alive (1 s)
    assert (status, answer) == (200, b"got 0")
    assert app.paths == ["/slow"]
    writer.close()


async def test_what_the_shortcut_cannot_be_sure_of_goes_through_the_app(server):
    app, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    # Pipelined: the second and third arrive while the first's answer is pending.
    writer.write(
        _request("/v2/models/m/infer", b"1", refuse=False)
        + _request("/v2/models/m/infer", b"22", refuse=True)
        + _request("/v2/models/m/infer", b"333", refuse=False)
    )
    answers = [await _answer(reader) for _ in range(3)]
    assert [a[2] for a in answers] == [b"got 1", b"got 2", b"got 3"]  # in order, all the app's
    writer.close()
    # Not for the gateway's inference routes, or escaped, or with a query: the app's.
    for path in ("/api/v1/tenants/", "/v2/models/m%2F/infer", "/v2/models/m/infer?x=1"):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_request(path, b"", refuse=True))
        assert (await _answer(reader))[0] == 200, path
        writer.close()
    # HTTP/1.0, even with keep-alive asked for: the app's.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v2/models/m/infer HTTP/1.0\r\nConnection: keep-alive\r\nX-Refuse: yes\r\nContent-Length: 0\r\n\r\n"
    )
    assert (await _answer(reader))[0] == 200
    writer.close()
    # Connection: close: the app's, and the server closes after it.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_request("/v2/models/m/infer", b"", refuse=True, close=True))
    assert (await _answer(reader))[0] == 200
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert len(app.paths) == 8


async def test_a_connection_after_a_refusal_times_out_or_closes_cleanly(server, caplog):
    _, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_request("/v2/models/m/infer", b"{}", refuse=True))
    assert (await _answer(reader))[0] == 429
    # timeout_keep_alive is 1 s: the server closes the idle connection.
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    # The client closes right after its refusal.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_request("/v2/models/m/infer", b"{}", refuse=True))
    assert (await _answer(reader))[0] == 429
    writer.close()
    await asyncio.sleep(0.2)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_without_a_refuser_on_the_loop_every_request_is_the_apps():
    app, port = _App(), free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http=fastpath.GatewayHttpProtocol, lifespan="off")
    instance = uvicorn.Server(config)
    task = asyncio.create_task(instance.serve())
    while not instance.started:
        await asyncio.sleep(0.01)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_request("/v2/models/m/infer", b"x", refuse=True))
        assert (await _answer(reader))[2] == b"got 1"
        writer.close()
    finally:
        instance.should_exit = True
        await task


# --- the gateway's side: what it refuses with no I/O ----------------------------------------

KEY = "brt_0123abcd_" + "k" * 30


def _gateway_app(*, rate: float = 2, burst: int = 1) -> tuple[GatewayApp, Gateway]:
    settings = GatewaySettings(
        max_body_bytes=1000, timeout_s=10, cold_start_s=1, refresh_s=3600, key_cache_s=60, worker_token="t",
        redis_url="",
    )  # fmt: skip
    app = GatewayApp(settings)
    gateway = app._gateway = Gateway(settings)
    version = VersionRoute(number=1, status="ready", platform="onnx", inputs=(), outputs=(), replicas=())
    model = ModelRoute(
        tenant_slug="acme", name="m", model_id=1, deployment_id=1, versions={1: version}, traffic=((1, 100),)
    )
    tenant = TenantRoute(tenant_id=7, slug="acme", limits=Limits(rate, burst, 100), models={"m": model})
    gateway.snapshot = RoutingSnapshot(tenants={7: tenant}, loaded_at=time.monotonic())
    principal = ApiKeyPrincipal(
        key_id=1, prefix="0123abcd", tenant_id=7, tenant_slug="acme", tenant_active=True,
        scopes=frozenset({"infer"}), expires_at=None, revoked_at=None,
    )  # fmt: skip
    gateway.keys._entries[key_digest(KEY)] = (time.monotonic() + 60, principal)
    gateway.keys._good[KEY.encode()] = (time.monotonic() + 60, principal)  # as principal() leaves it
    return app, gateway


def _headers(key: str = KEY, *more: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {key}".encode()), *more]


async def test_the_gateway_refuses_at_once_only_a_tenant_its_admission_refuses_now():
    app, gateway = _gateway_app()
    assert app.refusal("/v2/models/m/infer", _headers()) is None  # a token left: the usual way
    await gateway.admission.acquire("acme", Limits(2, 1, 100))  # the bucket is empty now
    before = metrics.REQUESTS.labels("acme", "m", "1", "429")._value.get()
    found = app.refusal("/v2/models/m/infer", _headers(KEY, (b"x-request-id", b"abc-1")))
    assert found is not None
    headers, body = found
    assert dict(headers)[b"x-request-id"] == b"abc-1" and dict(headers)[b"retry-after"] == b"1"
    assert b"over its rate limit of 2 requests/s" in body
    assert metrics.REQUESTS.labels("acme", "m", "1", "429")._value.get() == before + 1
    assert app.refusal("/v2/models/m/versions/1/infer", _headers()) is not None
    # Whatever the usual way must decide or explain is left to it.
    assert app.refusal("/v2/models/m/versions/9/infer", _headers()) is None  # 404 there
    assert app.refusal("/v2/models/other/infer", _headers()) is None  # 404 there
    assert app.refusal("/v2/models/m", _headers()) is None  # metadata
    assert app.refusal("/v2/models/m/infer", _headers(KEY, (b"content-length", b"5000"))) is None  # 413 there
    assert app.refusal("/v2/models/m/infer", _headers("brt_0123abcd_" + "z" * 30)) is None  # not cached
    assert app.refusal("/v2/models/m/infer", []) is None  # 401 there


async def test_only_a_fresh_good_verdict_for_the_very_header_is_taken():
    _, gateway = _gateway_app()
    await gateway.admission.acquire("acme", Limits(2, 1, 100))
    token = KEY.encode()
    expires, principal = gateway.keys._good[token]
    assert gateway.refused_now("/v2/models/m/infer", _headers()) is not None
    # The first Authorization header counts, as on the usual way.
    assert gateway.refused_now("/v2/models/m/infer", [(b"authorization", b"Bearer x"), *_headers()]) is None
    # The verdict it rests on has expired: the usual way looks the key up again.
    gateway.keys._good[token] = (time.monotonic() - 1, principal)
    assert gateway.refused_now("/v2/models/m/infer", _headers()) is None
    # The key itself expired since the verdict: the usual way says so (401).
    gateway.keys._good[token] = (expires, replace(principal, expires_at=datetime.now(UTC)))
    assert gateway.refused_now("/v2/models/m/infer", _headers()) is None


async def test_a_refused_verdict_is_never_cached_by_header():
    _, gateway = _gateway_app()
    gateway.keys._good.clear()
    expires, principal = gateway.keys._entries[key_digest(KEY)]
    assert principal is not None
    header = b"Bearer " + KEY.encode()
    gateway.keys._entries[key_digest(KEY)] = (expires, replace(principal, revoked_at=datetime.now(UTC)))
    with pytest.raises(GatewayError) as refused:
        await gateway.keys.principal(header)
    assert refused.value.status == 401 and "revoked" in refused.value.message
    assert gateway.keys.cached(header) is None
    gateway.keys._entries[key_digest(KEY)] = (expires, replace(principal, scopes=frozenset({"read"})))
    with pytest.raises(GatewayError, match="lacks the 'infer' scope"):
        await gateway.keys.principal(header)
    assert gateway.keys.cached(header) is None


async def test_a_good_verdict_is_found_by_header_without_hashing_the_key_again(monkeypatch):
    _, gateway = _gateway_app()
    gateway.keys._good.clear()
    gateway.keys._touched[1] = float("inf")  # no last-used write in this test
    header = b"Bearer " + KEY.encode()
    hashed: list[bytes | None] = []
    digest = KeyCache._digest

    def counted(value: bytes | None) -> str:
        hashed.append(value)
        return digest(value)

    monkeypatch.setattr(KeyCache, "_digest", staticmethod(counted))
    first = await gateway.keys.principal(header)
    second = await gateway.keys.principal(header)
    padded = await gateway.keys.principal(b"bearer   " + KEY.encode())
    assert first is second is padded and first.tenant_id == 7
    assert hashed == [header]  # once, for the first
    assert list(gateway.keys._good) == [KEY.encode()]  # one entry per key, however the header is padded
    assert gateway.keys._good[KEY.encode()][0] == gateway.keys._entries[key_digest(KEY)][0]  # same lifetime
