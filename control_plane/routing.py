"""WebSocket routes under /ws/, gathered from the apps."""

from apps.monitoring.routing import websocket_urlpatterns

__all__ = ("websocket_urlpatterns",)
