from django.urls import path

from apps.monitoring.consumers import FleetConsumer, PlatformHealthConsumer, TenantMetricsConsumer

websocket_urlpatterns = [
    path("ws/health/", PlatformHealthConsumer.as_asgi()),
    path("ws/tenants/<slug:slug>/metrics/", TenantMetricsConsumer.as_asgi()),
    path("ws/fleet/", FleetConsumer.as_asgi()),
]
