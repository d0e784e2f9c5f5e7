from django.urls import path

from apps.monitoring.consumers import PlatformHealthConsumer

websocket_urlpatterns = [
    path("ws/health/", PlatformHealthConsumer.as_asgi()),
]
