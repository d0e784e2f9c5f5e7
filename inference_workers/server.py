"""The worker's data-plane HTTP server (Open Inference Protocol v2 surface).

It runs on its own event loop in a thread of the worker process, beside the Celery
consumer, so control commands and inference never wait on each other.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable

from aiohttp import web

log = logging.getLogger(__name__)

SERVER_NAME = "berth-worker"
SERVER_VERSION = "0.1.0"


def build_app(*, is_ready: Callable[[], bool]) -> web.Application:
    """Builds the aiohttp application with the server-level v2 routes."""

    async def server_metadata(request: web.Request) -> web.Response:
        return web.json_response({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": []})

    async def live(request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready(request: web.Request) -> web.Response:
        if is_ready():
            return web.json_response({"ready": True})
        return web.json_response({"error": "the worker is draining; send requests to another replica"}, status=503)

    app = web.Application()
    app.router.add_get("/v2", server_metadata)
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", ready)
    return app


class DataPlaneServer:
    """Serves the data-plane app on a background thread; ``start`` returns the bound port."""

    def __init__(self, *, host: str, port: int, is_ready: Callable[[], bool]) -> None:
        self._host = host
        self._port = port
        self._is_ready = is_ready
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        self._started = threading.Event()
        self._failure: BaseException | None = None
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
        self._thread = threading.Thread(target=self._run, args=(sock,), name="berth-dataplane", daemon=True)
        self._thread.start()
        self._started.wait(timeout=30)
        if self._failure is not None:
            raise RuntimeError(f"the data-plane server failed to start: {self._failure}") from self._failure
        return self.port

    def _run(self, sock: socket.socket) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve(sock))
        except Exception as exc:  # logged, and re-raised by start() while starting
            log.exception("the data-plane server stopped with an error")
            self._failure = exc
            self._started.set()
        finally:
            loop.close()

    async def _serve(self, sock: socket.socket) -> None:
        self._stopped = asyncio.Event()
        runner = web.AppRunner(build_app(is_ready=self._is_ready), access_log=None)
        await runner.setup()
        site = web.SockSite(runner, sock)
        await site.start()
        log.info("data plane listening on %s:%d", self._host, self.port)
        self._started.set()
        await self._stopped.wait()
        await runner.cleanup()

    def stop(self) -> None:
        """Stops serving and waits for the thread to end."""
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(timeout=10)
