"""The gateway: a plain ASGI app for ``/v2/...`` (Open Inference Protocol v2).

It sits in front of Django in the same server but runs none of Django's middleware, so
the inference hot path pays only for what it needs. So far it answers the server-level
routes; model routes arrive with the gateway issue.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

SERVER_NAME = "berth"
SERVER_VERSION = "0.1.0"


async def _reply(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class GatewayApp:
    """Answers ``GET /v2``, ``/v2/health/live`` and ``/v2/health/ready``."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"].rstrip("/") or "/"
        method = scope["method"]
        routes: dict[str, dict[str, Any]] = {
            "/v2": {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": []},
            "/v2/health/live": {"live": True},
            "/v2/health/ready": {"ready": True},
        }
        if path in routes:
            if method not in ("GET", "HEAD"):
                await _reply(send, 405, {"error": f"{method} is not allowed on {path}; use GET"}, [(b"allow", b"GET")])
                return
            await _reply(send, 200, routes[path])
            return
        await _reply(send, 404, {"error": f"no route {method} {scope['path']}; see GET /v2 for the server's protocol"})
