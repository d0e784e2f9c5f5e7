"""The worker's HTTP adapter: aiohttp routes over the transport-agnostic ``DataPlane``.

Only health (``/v2/health/live|ready``, for probes) is open; everything else, including
``/v2``, the model routes and Prometheus ``/metrics`` (which names tenants and models),
needs the worker token (``Authorization: Bearer …``), which only the gateway and the
platform's Prometheus have.
"""

from __future__ import annotations

import hmac
import logging
import socket
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from inference_workers.codec import HEADER_LENGTH, error_body
from inference_workers.dataplane import DataPlane
from inference_workers.errors import DataPlaneError, PayloadTooLargeError, UnauthorizedError
from inference_workers.loop import EventLoopThread
from inference_workers.metrics import WorkerMetrics

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _error(error: DataPlaneError) -> web.Response:
    return web.Response(body=error_body(error.message), status=error.status, content_type="application/json")


def build_app(dataplane: DataPlane, *, token: str, max_body_bytes: int, metrics: WorkerMetrics) -> web.Application:
    """The aiohttp application serving ``dataplane``."""
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if not request.path.startswith("/v2/health/"):
                presented = request.headers.get("Authorization", "").encode()
                if not token or not hmac.compare_digest(presented, expected):
                    raise UnauthorizedError("missing or wrong worker token; only the gateway may call a worker")
            return await handler(request)
        except DataPlaneError as error:
            return _error(error)
        except web.HTTPException:
            raise
        except Exception:  # a bug must still answer in the protocol's shape, and be logged
            log.exception("unexpected error on %s %s", request.method, request.path)
            return _json({"error": "internal error in the worker; see its log"}, status=500)

    async def server_metadata(request: web.Request) -> web.Response:
        return _json(dataplane.server_metadata())

    async def live(request: web.Request) -> web.Response:
        return _json({"live": dataplane.live()})

    async def ready(request: web.Request) -> web.Response:
        if dataplane.ready():
            return _json({"ready": True})
        return _json({"error": "the worker is draining; send requests to another replica"}, status=503)

    async def prometheus(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def model_metadata(request: web.Request) -> web.Response:
        info = request.match_info
        return _json(dataplane.model_metadata(info["name"], info.get("version")))

    async def model_ready(request: web.Request) -> web.Response:
        info = request.match_info
        if dataplane.model_ready(info["name"], info.get("version")):
            return _json({"ready": True})
        return _json({"error": "the model is not ready here"}, status=503)

    async def infer(request: web.Request) -> web.Response:
        length = request.content_length
        if length is not None and length > max_body_bytes:
            raise PayloadTooLargeError(f"the body has {length} bytes; this worker takes at most {max_body_bytes}")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise PayloadTooLargeError(f"the body is over this worker's limit of {max_body_bytes} bytes") from None
        info = request.match_info
        payload, headers = await dataplane.infer(
            info["name"], info.get("version"), body, header_length=request.headers.get(HEADER_LENGTH)
        )
        return web.Response(body=payload, headers=headers)

    app = web.Application(middlewares=[guard], client_max_size=max_body_bytes)
    app.router.add_get("/v2", server_metadata)
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/metrics", prometheus)
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.router.add_get(prefix, model_metadata)
        app.router.add_get(f"{prefix}/ready", model_ready)
        app.router.add_post(f"{prefix}/infer", infer)
    return app


class DataPlaneServer:
    """Serves the app on the data plane's event-loop thread; ``start`` returns the port."""

    def __init__(self, app: web.Application, *, host: str, port: int, loop: EventLoopThread) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._loop = loop
        self._runner: web.AppRunner | None = None
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
            self._runner = web.AppRunner(self._app, access_log=None, handle_signals=False)
            await self._runner.setup()
            await web.SockSite(self._runner, sock).start()

        self._loop.run(serve(), timeout=30)
        log.info("data plane listening on %s:%d", self._host, self.port)
        return self.port

    def stop(self) -> None:
        """Stops serving (open connections are closed)."""
        if self._runner is not None:
            self._loop.run(self._runner.cleanup(), timeout=30)
            self._runner = None
