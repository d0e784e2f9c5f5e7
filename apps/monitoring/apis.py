"""Plain HTTP endpoints of the monitoring app."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from apps.monitoring.selectors import broker_health, database_health


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
