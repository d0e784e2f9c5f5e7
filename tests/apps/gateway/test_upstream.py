"""The gateway's pooled HTTP/1.1 client, against real servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from apps.gateway.upstream import Upstream, UpstreamBrokenError, UpstreamConnectError
from tests.conftest import free_port


@pytest.fixture
async def worker() -> AsyncIterator[tuple[str, list[int]]]:
    """An aiohttp server answering like a worker; records each request's client port."""
    peers: list[int] = []

    async def infer(request: web.Request) -> web.Response:
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peername")[1])
        body = await request.read()
        return web.Response(
            body=b'{"echo":' + str(len(body)).encode() + b"}",
            content_type="application/json",
            headers={"Inference-Header-Content-Length": "12", "X-Secret": "not passed on"},
        )

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for part in (b"ab", b"cd", b"ef"):
            await response.write(part)
        await response.write_eof()
        return response

    async def slow(request: web.Request) -> web.Response:
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peername")[1])
        await asyncio.sleep(0.2)
        return web.Response(body=b"late")

    async def close(request: web.Request) -> web.Response:
        return web.Response(body=b"bye", headers={"Connection": "close"})

    app = web.Application()
    app.router.add_post("/infer", infer)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/close", close)
    app.router.add_get("/slow", slow)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", peers
    await runner.cleanup()


async def test_requests_reuse_one_keep_alive_connection(worker):
    url, peers = worker
    upstream = Upstream()
    for size in (0, 10, 200_000):
        response = await upstream.request(url, "POST", "/infer", headers=[], body=b"x" * size)
        assert response.status == 200
        assert response.body == b'{"echo":' + str(size).encode() + b"}"
    assert len(set(peers)) == 1
    # Only the protocol's headers are handed on.
    assert dict(response.headers) == {b"content-type": b"application/json", b"inference-header-content-length": b"12"}
    await upstream.close()


async def test_chunked_answers_and_connection_close_are_read_whole(worker):
    url, _ = worker
    upstream = Upstream()
    assert (await upstream.request(url, "GET", "/chunked", headers=[])).body == b"abcdef"
    assert (await upstream.request(url, "GET", "/close", headers=[])).body == b"bye"
    assert (await upstream.request(url, "GET", "/chunked", headers=[])).body == b"abcdef"  # a new connection
    await upstream.close()


async def test_nobody_listening_is_a_connect_error_nothing_sent():
    upstream = Upstream(connect_timeout_s=1)
    with pytest.raises(UpstreamConnectError, match="cannot connect"):
        await upstream.request(f"http://127.0.0.1:{free_port()}", "POST", "/infer", headers=[], body=b"{}")


async def test_a_connection_dropped_after_the_request_is_broken_not_retryable():
    received = asyncio.Event()

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        received.set()
        writer.close()  # the worker "died" while it had the request

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    upstream = Upstream()
    with pytest.raises(UpstreamBrokenError):
        await upstream.request(f"http://127.0.0.1:{port}", "POST", "/infer", headers=[], body=b"{}")
    assert received.is_set()
    server.close()
    await server.wait_closed()


async def test_a_pooled_connection_closed_by_the_worker_while_idle_is_not_reused(worker):
    url, _ = worker
    upstream = Upstream()
    await upstream.request(url, "POST", "/infer", headers=[], body=b"1")
    await upstream.request(url, "GET", "/close", headers=[])  # the worker closes after this answer
    await asyncio.sleep(0.05)
    response = await upstream.request(url, "POST", "/infer", headers=[], body=b"2")
    assert response.status == 200
    await upstream.close()


async def test_connections_to_one_worker_are_capped_and_the_rest_wait(worker):
    url, peers = worker
    upstream = Upstream(max_connections_per_worker=3)
    watched: list[int] = []

    async def watch() -> None:
        for _ in range(40):
            watched.append(upstream.in_flight(url))
            await asyncio.sleep(0.02)

    watcher = asyncio.ensure_future(watch())
    answers = await asyncio.gather(*(upstream.request(url, "GET", "/slow", headers=[]) for _ in range(9)))
    await watcher
    assert [answer.body for answer in answers] == [b"late"] * 9  # every request answered, none refused
    assert max(watched) == 3  # never more than the cap at once
    assert len(set(peers)) == 3  # three connections carried all nine requests
    assert upstream.in_flight(url) == 0
    await upstream.close()
