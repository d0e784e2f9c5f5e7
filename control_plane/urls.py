"""URL map of the Django side: console, admin, health, and the REST API under /api/v1/."""

from django.contrib import admin
from django.urls import URLPattern, URLResolver, include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from apps.monitoring.apis import PrometheusMetricsApi, healthz

api_v1: list[URLPattern | URLResolver] = [
    path("", include("apps.tenants.urls")),
    path("", include("apps.registry.urls")),
    path("", include("apps.deployments.urls")),
    path("", include("apps.monitoring.urls")),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
]

handler404 = "control_plane.exception_handler.api_not_found"

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("metrics", PrometheusMetricsApi.as_view(), name="metrics"),
    path("api/v1/", include(api_v1)),
    path("admin/", admin.site.urls),
    path("", include("apps.console.urls")),
]
