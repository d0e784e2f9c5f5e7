"""An ASGI guard that refuses an oversized artifact upload before the body is read.

Django's ASGI handler reads a whole request body (to a temporary file) before any view
runs, so a view cannot say 413 early. This guard sits in front of it for the upload URL:
it works out the caller's limit (the tenant's ``max_artifact_mb`` when the caller may
upload to that tenant, else the platform's ``BERTH_MAX_UPLOAD_MB``), answers 413 at once
when ``Content-Length`` is over it, and otherwise counts the body as it streams, cutting
it off with 413 the moment it passes the limit. Callers who may not upload there learn
nothing: they get the platform limit, then the view's 401/404.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from http.cookies import CookieError, SimpleCookie
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

UPLOAD_PATH = re.compile(r"^/api/v1/tenants/(?P<slug>[-a-zA-Z0-9_]+)/models/[^/]+/versions/$")
ENVELOPE = 1024**2  # multipart boundaries and form fields around the file


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return ""


def upload_limit_for(scope: Scope, slug: str) -> int:
    """The most bytes this caller may send to upload into tenant ``slug``."""
    from apps.tenants.access import Action, Actor, access_tenant_by_slug
    from apps.tenants.keys import api_key_authenticate
    from apps.tenants.selectors import quota_get
    from control_plane.errors import ApplicationError

    platform = settings.BERTH_MAX_UPLOAD_MB * 1024**2 + ENVELOPE
    actor = None
    authorization = _header(scope, b"authorization")
    try:
        if authorization[:7].lower() == "bearer ":
            actor = Actor(key=api_key_authenticate(raw=authorization[7:].strip()))
        else:
            actor = _session_actor(_header(scope, b"cookie"))
        if actor is None:
            return platform
        tenant = access_tenant_by_slug(actor, slug, action=Action.WRITE)
    except ApplicationError:
        return platform
    return min(platform, quota_get(tenant=tenant).max_artifact_mb * 1024**2 + ENVELOPE)


def _session_actor(cookie_header: str) -> Any:
    from importlib import import_module

    from django.contrib.auth import get_user_model

    from apps.tenants.access import Actor

    cookies = SimpleCookie()
    try:
        cookies.load(cookie_header)
    except CookieError:
        return None
    morsel = cookies.get(settings.SESSION_COOKIE_NAME)
    if morsel is None:
        return None
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key=morsel.value)
    user_id = store.get("_auth_user_id")
    if user_id is None:
        return None
    user = get_user_model().objects.filter(pk=user_id, is_active=True).first()
    return Actor(user=user) if user is not None else None


async def _refuse(send: Send, limit: int) -> None:
    body = json.dumps(
        {
            "error": f"the upload is over the limit of {max(limit - ENVELOPE, 0) // 1024**2} MiB for this tenant "
            "(max_artifact_mb); ask platform staff to raise the quota"
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class UploadLimit:
    """Wraps Django's ASGI app; only the artifact-upload URL is guarded."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = UPLOAD_PATH.match(scope.get("path", "")) if scope.get("type") == "http" else None
        if match is None or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        limit = await database_sync_to_async(upload_limit_for)(scope, match["slug"])
        length = _header(scope, b"content-length")
        if length.isdigit() and int(length) > limit:
            await _refuse(send, limit)
            return
        received = 0
        refused = False

        async def counting_receive() -> dict[str, Any]:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    await _refuse(send, limit)
                    # Django sees the client go away and stops reading; nothing is stored.
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            if not refused:
                await send(message)

        await self.app(scope, counting_receive, guarded_send)
