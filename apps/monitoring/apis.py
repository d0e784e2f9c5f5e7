"""Plain HTTP endpoints of the monitoring app."""

from __future__ import annotations

import hmac
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from rest_framework import serializers
from rest_framework.authentication import SessionAuthentication
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.monitoring.selectors import RANGES, broker_health, database_health, metric_series
from apps.tenants.access import Action, access_tenant_by_slug
from apps.tenants.apis import TenantApiView
from apps.tenants.authentication import ApiKeyAuthentication, StaffBasicAuthentication
from control_plane.errors import ApplicationError, PermissionDeniedError


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """200 when the database and the broker are reachable; 503 naming the failing part."""
    checks = [
        database_health(),
        broker_health(url=settings.CELERY_BROKER_URL, transport_options=settings.CELERY_BROKER_TRANSPORT_OPTIONS),
    ]
    body: dict[str, str] = {check.part: check.detail for check in checks}
    failing = [check for check in checks if not check.ok]
    if failing:
        body["error"] = "; ".join(check.detail for check in failing)
        return JsonResponse(body, status=503)
    body["status"] = "ok"
    return JsonResponse(body)


class PrometheusMetricsApi(APIView):
    """``GET /metrics``: Prometheus text for the platform's operators.

    Staff (session or HTTP Basic) or the holder of ``BERTH_METRICS_TOKEN`` (Bearer) may read
    it; a tenant's API key may not: the figures name every tenant and model.
    """

    authentication_classes = [SessionAuthentication, StaffBasicAuthentication, ApiKeyAuthentication]
    permission_classes: list[type] = []
    schema = None  # for Prometheus, not part of the REST API's schema

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        token = settings.BERTH_METRICS_TOKEN
        presented = request._request.headers.get("Authorization", "")
        self.token_ok = bool(token) and hmac.compare_digest(presented.encode(), f"Bearer {token}".encode())
        if self.token_ok:
            self.authentication_classes = []
        super().initial(request, *args, **kwargs)

    def get(self, request: Request) -> HttpResponse:
        user = request.user
        if not self.token_ok and not (user is not None and user.is_authenticated and user.is_staff):
            raise PermissionDeniedError("/metrics is for platform staff or the metrics token (BERTH_METRICS_TOKEN)")
        return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)


class MetricSeriesApi(TenantApiView):
    """``GET`` a tenant's metric series: ``?range=15m|1h|24h|30d`` (default 15m) and optional
    ``model``; points per interval and model version with requests, errors, error rate and
    p50/p95/p99 latency read from merged histograms (one-second points up to 1 h, one-minute
    points beyond)."""

    @extend_schema(
        parameters=[
            OpenApiParameter("range", str, enum=list(RANGES), required=False),
            OpenApiParameter("model", str, required=False),
        ],
        responses=inline_serializer(
            "MetricSeries",
            {
                "range": serializers.CharField(),
                "resolution": serializers.CharField(),
                "step_s": serializers.IntegerField(),
                "points": serializers.ListField(child=serializers.DictField()),
            },
        ),
    )
    def get(self, request: Request, slug: str) -> Response:
        tenant = access_tenant_by_slug(self.actor, slug, action=Action.READ)
        chosen = request.query_params.get("range", "15m")
        if chosen not in RANGES:
            raise ApplicationError(f"range is one of {', '.join(RANGES)}", field_errors={"range": list(RANGES)})
        resolution, span, step_s = RANGES[chosen]
        points = metric_series(
            tenant=tenant,
            since=timezone.now() - span,
            resolution=resolution,
            model=request.query_params.get("model") or None,
            step_s=step_s,
        )
        return Response({"range": chosen, "resolution": resolution, "step_s": step_s, "points": points})
