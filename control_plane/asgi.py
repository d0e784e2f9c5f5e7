"""The ASGI entry served by uvicorn.

``/v2/...`` goes to the gateway (no Django middleware on the inference hot path),
``/ws/...`` to Channels, and everything else to Django.
"""

from __future__ import annotations

import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "control_plane.settings.base")

django_application = get_asgi_application()

# Imported after Django is set up: these reach models and settings.
from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from apps.gateway.app import GatewayApp  # noqa: E402
from apps.registry.upload_guard import UploadLimit  # noqa: E402
from control_plane.routing import websocket_urlpatterns  # noqa: E402

Scope = dict[str, Any]


class HttpDispatch:
    """Sends ``/v2`` and ``/v2/...`` to the gateway, the rest to Django."""

    def __init__(self, *, gateway: Any, django: Any) -> None:
        self.gateway = gateway
        self.django = django

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        path: str = scope.get("path", "")
        if path == "/v2" or path.startswith("/v2/"):
            await self.gateway(scope, receive, send)
        else:
            await self.django(scope, receive, send)


application = ProtocolTypeRouter(
    {
        "http": HttpDispatch(gateway=GatewayApp(), django=UploadLimit(django_application)),
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)


def _freeze_the_heap() -> None:
    """Loads the URLconf (and with it every view), then freezes what survives a collection.

    The collector's oldest generation then skips the imports' objects: its passes stopped
    the gateway's event loop for 60-120 ms under load (the c=16 p99) and now take a few ms.
    """
    import gc

    from django.urls import get_resolver

    get_resolver().url_patterns  # noqa: B018 - imports the views now, not on the first request
    gc.collect()
    gc.freeze()


_freeze_the_heap()
