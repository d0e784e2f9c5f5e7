"""Plain HTTP endpoints of the monitoring app."""

from __future__ import annotations

import csv
import hmac
import io
import re
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field, inline_serializer
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from rest_framework import serializers
from rest_framework.authentication import SessionAuthentication
from rest_framework.permissions import IsAdminUser
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.monitoring.cost import price_text
from apps.monitoring.models import PredictionLog
from apps.monitoring.prometheus import ControlPlaneCollector
from apps.monitoring.selectors import (
    ACCURACY_RANGES,
    DEVICE_RANGES,
    RANGES,
    accuracy_series,
    broker_health,
    database_health,
    device_series,
    metric_series,
    prediction_logs_list,
    usage_report,
)
from apps.monitoring.services import device_price_set, device_prices, feedback_record
from apps.tenants.access import Action, access_model_by_name, access_tenant_by_slug
from apps.tenants.apis import TenantApiView, page_of
from apps.tenants.authentication import ApiKeyAuthentication, StaffBasicAuthentication, actor_from_request
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

    def get_authenticators(self) -> list[Any]:
        # Decided before DRF builds the request: the token holder is no API-key holder.
        token = settings.BERTH_METRICS_TOKEN
        presented = self.request.headers.get("Authorization", "")
        self.token_ok = bool(token) and hmac.compare_digest(presented.encode(), f"Bearer {token}".encode())
        return [] if self.token_ok else super().get_authenticators()

    def get(self, request: Request) -> HttpResponse:
        user = request.user
        if not self.token_ok and not (user is not None and user.is_authenticated and user.is_staff):
            raise PermissionDeniedError("/metrics is for platform staff or the metrics token (BERTH_METRICS_TOKEN)")
        aggregates = CollectorRegistry(auto_describe=False)
        aggregates.register(ControlPlaneCollector())
        text = generate_latest(REGISTRY) + generate_latest(aggregates)
        return HttpResponse(text, content_type=CONTENT_TYPE_LATEST)


MODEL_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def _model_param(request: Request) -> str | None:
    """The optional ``model`` filter: a model name (400 for anything that cannot be one)."""
    model = request.query_params.get("model") or None
    if model is not None and not MODEL_NAME.fullmatch(model):
        wrong = "model is a model name (lowercase letters, digits, dashes)"
        raise ApplicationError(wrong, field_errors={"model": ["not a model name"]})
    return model


def _worker_param(request: Request) -> str | None:
    """The optional ``worker`` filter: a worker id (400 for anything that cannot be one)."""
    from inference_workers.types import WORKER_ID

    worker = request.query_params.get("worker") or None
    if worker is not None and not WORKER_ID.fullmatch(worker):
        raise ApplicationError("worker is a worker id", field_errors={"worker": ["not a worker id"]})
    return worker


def _range(request: Request, ranges: dict[str, Any], default: str) -> str:
    """The ``range`` query parameter, one of ``ranges`` (400 naming them otherwise)."""
    chosen = request.query_params.get("range", default)
    if chosen not in ranges:
        raise ApplicationError(f"range is one of {', '.join(ranges)}", field_errors={"range": list(ranges)})
    return str(chosen)


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
        chosen = _range(request, RANGES, "15m")
        resolution, span, step_s = RANGES[chosen]
        points = metric_series(
            tenant=tenant,
            since=timezone.now() - span,
            resolution=resolution,
            model=_model_param(request),
            step_s=step_s,
        )
        return Response({"range": chosen, "resolution": resolution, "step_s": step_s, "points": points})


class UsageCsvRenderer(BaseRenderer):
    """``?format=csv``: one line per day and model version (errors: one ``error`` line)."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"
    COLUMNS = [
        "date", "model", "version", "requests", "errors", "predictions",
        "compute_s", "idle_s", "device_s", "cost", "cost_per_1000",
    ]  # fmt: skip

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        if isinstance(data, dict) and "days" in data:
            writer.writerow([*self.COLUMNS, "currency"])
            for line in data["days"]:
                writer.writerow([*("" if line[c] is None else line[c] for c in self.COLUMNS), data["currency"]])
        else:
            writer.writerow(["error"])
            writer.writerow([data.get("error", data) if isinstance(data, dict) else data])
        return out.getvalue().encode()


USAGE_MAX_DAYS = 31  # one-minute rollups, which usage reads, are kept for 30 days


def _day(request: Request, name: str, default: date) -> date:
    raw = request.query_params.get(name)
    if not raw:
        return default
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise ApplicationError(f"{name} is a date as YYYY-MM-DD", field_errors={name: ["YYYY-MM-DD"]}) from None


class UsageApi(TenantApiView):
    """``GET`` a tenant's usage and cost: ``?from=YYYY-MM-DD&to=YYYY-MM-DD`` (UTC days,
    default the last 30), optional ``model``; daily lines per model version, totals per
    version and for the tenant; ``?format=csv`` gives the daily lines as CSV."""

    renderer_classes = [JSONRenderer, UsageCsvRenderer]

    @extend_schema(
        parameters=[
            OpenApiParameter("from", str, required=False, description="first UTC day, YYYY-MM-DD"),
            OpenApiParameter("to", str, required=False, description="last UTC day, YYYY-MM-DD"),
            OpenApiParameter("model", str, required=False),
            OpenApiParameter("format", str, enum=["json", "csv"], required=False),
        ],
        responses=inline_serializer(
            "Usage",
            {
                "tenant": serializers.CharField(),
                "currency": serializers.CharField(),
                "prices": serializers.DictField(child=serializers.CharField()),
                "from": serializers.DateField(),
                "to": serializers.DateField(),
                "days": serializers.ListField(child=serializers.DictField()),
                "models": serializers.ListField(child=serializers.DictField()),
                "daily_totals": serializers.ListField(child=serializers.DictField()),
                "total": serializers.DictField(),
            },
        ),
    )
    def get(self, request: Request, slug: str) -> Response:
        tenant = access_tenant_by_slug(self.actor, slug, action=Action.READ)
        today = timezone.now().date()
        last = _day(request, "to", today)
        first = _day(request, "from", last - timedelta(days=29))
        if first > last:
            raise ApplicationError("from must not be after to", field_errors={"from": ["after to"]})
        if (last - first).days >= USAGE_MAX_DAYS:
            too_long = f"ask for at most {USAGE_MAX_DAYS} days at a time"
            raise ApplicationError(too_long, field_errors={"from": [too_long]})
        report = usage_report(tenant=tenant, first_day=first, last_day=last, model=_model_param(request))
        prices = {kind: price_text(price) for kind, price in device_prices().items()}
        response = Response({**report, "currency": settings.BERTH_CURRENCY, "prices": prices})
        if request.accepted_renderer.format == "csv":
            response["Content-Disposition"] = f'attachment; filename="berth-usage-{tenant.slug}-{first}-{last}.csv"'
        return response


class PriceListApi(TenantApiView):
    """``GET`` the price of one device-hour per device kind (anyone signed in or with a key)."""

    @extend_schema(
        responses=inline_serializer(
            "Prices",
            {"currency": serializers.CharField(), "prices": serializers.DictField(child=serializers.CharField())},
        )
    )
    def get(self, request: Request) -> Response:
        prices = {kind: price_text(price) for kind, price in device_prices().items()}
        return Response({"currency": settings.BERTH_CURRENCY, "prices": prices})


class PriceApi(APIView):
    """Staff only: ``PUT`` sets the price of one device-hour of a kind from now on."""

    permission_classes = [IsAdminUser]

    class InputSerializer(serializers.Serializer):
        price_per_hour = serializers.DecimalField(max_digits=12, decimal_places=6, min_value=Decimal(0))

        class Meta:
            ref_name = "PriceInput"

    @extend_schema(
        request=InputSerializer,
        responses=inline_serializer(
            "Price", {"device_kind": serializers.CharField(), "price_per_hour": serializers.CharField()}
        ),
    )
    def put(self, request: Request, device_kind: str) -> Response:
        body = self.InputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        price = device_price_set(
            actor=actor_from_request(request),
            device_kind=device_kind,
            price_per_hour=body.validated_data["price_per_hour"],
        )
        return Response({"device_kind": price.device_kind, "price_per_hour": price_text(price.price_per_hour)})


FEEDBACK_MAX_ITEMS = 1000


class FeedbackApi(TenantApiView):
    """``POST`` ground truth for logged predictions (callers with ``infer``): each item names
    a request (the X-Request-ID the gateway returned, or the v2 body's ``id``) and its
    ``ground_truth`` (one value, or one per row); each is scored against what the model
    predicted. Answers one result per item: ``scored``, ``unknown`` (not logged: not
    sampled, expired or never made) or ``error`` with why."""

    class ItemSerializer(serializers.Serializer):
        request_id = serializers.CharField(max_length=128)
        ground_truth = serializers.JSONField()

        class Meta:
            ref_name = "FeedbackItem"

        def validate_ground_truth(self, value: Any) -> Any:
            values = value if isinstance(value, list) else [value]
            if not values or len(values) > 4096:
                raise serializers.ValidationError("one value, or a list of 1 to 4096 (one per row)")
            if any(isinstance(v, dict | list) or v is None for v in values):
                raise serializers.ValidationError("values are numbers or strings")
            if any(isinstance(v, str) and ("\x00" in v or len(v) > 1000) for v in values):
                raise serializers.ValidationError("a label is text of at most 1000 characters, without NUL")
            return value

    class InputSerializer(serializers.Serializer):
        feedback = serializers.ListField(min_length=1, max_length=FEEDBACK_MAX_ITEMS)

        class Meta:
            ref_name = "FeedbackInput"

    @extend_schema(
        request=inline_serializer(
            "FeedbackRequest",
            {"feedback": serializers.ListField(child=serializers.DictField(), min_length=1, max_length=1000)},
        ),
        responses=inline_serializer(
            "FeedbackResult",
            {"scored": serializers.IntegerField(), "results": serializers.ListField(child=serializers.DictField())},
        ),
    )
    def post(self, request: Request, slug: str, name: str) -> Response:
        model = access_model_by_name(self.actor, slug, name, action=Action.INFER)
        body = self.InputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        items = self.ItemSerializer(data=body.validated_data["feedback"], many=True)
        if not items.is_valid():
            errors = {f"feedback[{i}]": error for i, error in enumerate(items.errors) if error}
            first = next(iter(errors.items()))
            raise ApplicationError(f"{first[0]}: {first[1]}", field_errors=errors)
        results = feedback_record(tenant=model.tenant, model_name=model.name, items=items.validated_data)
        return Response({"scored": sum(1 for r in results if r["status"] == "scored"), "results": results})


class AccuracyApi(TenantApiView):
    """``GET`` a model's accuracy (classification) or mean absolute error (regression) from
    feedback, per version over time: ``?range=24h|7d|30d`` (points per hour, 6 hours, day)."""

    @extend_schema(
        parameters=[OpenApiParameter("range", str, enum=list(ACCURACY_RANGES), required=False)],
        responses=inline_serializer(
            "Accuracy",
            {
                "model": serializers.CharField(),
                "range": serializers.CharField(),
                "step_s": serializers.IntegerField(),
                "task": serializers.CharField(allow_null=True),
                "points": serializers.ListField(child=serializers.DictField()),
                "versions": serializers.ListField(child=serializers.DictField()),
            },
        ),
    )
    def get(self, request: Request, slug: str, name: str) -> Response:
        model = access_model_by_name(self.actor, slug, name, action=Action.READ)
        chosen = _range(request, ACCURACY_RANGES, "24h")
        span, step_s = ACCURACY_RANGES[chosen]
        series = accuracy_series(tenant=model.tenant, model_name=model.name, since=timezone.now() - span, step_s=step_s)
        deployment = getattr(model, "deployment", None)
        task = (deployment.prediction_log or {}).get("task") if deployment is not None else None
        return Response({"model": model.name, "range": chosen, "step_s": step_s, "task": task, **series})


class PredictionLogListApi(TenantApiView):
    """``GET`` a model's logged predictions, newest first (``limit`` ≤ 200, ``offset``), each
    with its inputs, outputs and feedback."""

    class OutputSerializer(serializers.ModelSerializer):
        feedback = serializers.SerializerMethodField()

        class Meta:
            model = PredictionLog
            ref_name = "PredictionLogOutput"
            fields = [
                "request_id", "inference_id", "version", "created_at", "expires_at", "inputs", "outputs", "feedback",
            ]  # fmt: skip

        @extend_schema_field(serializers.DictField(allow_null=True))
        def get_feedback(self, log: PredictionLog) -> dict[str, Any] | None:
            feedback = getattr(log, "feedback", None)
            if feedback is None:
                return None
            return {
                "ground_truth": feedback.ground_truth,
                "predicted": feedback.predicted,
                "rows": feedback.rows,
                "correct": feedback.correct,
                "abs_error_sum": feedback.abs_error_sum,
                "received_at": feedback.received_at,
            }

    @extend_schema(
        parameters=[OpenApiParameter("limit", int, required=False), OpenApiParameter("offset", int, required=False)],
        responses=OutputSerializer(many=True),
    )
    def get(self, request: Request, slug: str, name: str) -> Response:
        model = access_model_by_name(self.actor, slug, name, action=Action.READ)
        limit, offset = page_of(request, default=50, most=200)
        logs = prediction_logs_list(tenant=model.tenant, model_name=model.name, limit=limit, offset=offset)
        return Response(self.OutputSerializer(logs, many=True).data)


class DeviceSeriesApi(APIView):
    """Staff only: ``GET`` every device's memory and utilisation over time
    (``?range=1h|24h|30d``, optional ``worker``): capacity, measured use, reserved bytes and
    each replica's reservation, utilisation, idle seconds."""

    permission_classes = [IsAdminUser]

    @extend_schema(
        parameters=[
            OpenApiParameter("range", str, enum=list(DEVICE_RANGES), required=False),
            OpenApiParameter("worker", str, required=False),
        ],
        responses=inline_serializer(
            "DeviceSeries",
            {
                "range": serializers.CharField(),
                "step_s": serializers.IntegerField(),
                "points": serializers.ListField(child=serializers.DictField()),
            },
        ),
    )
    def get(self, request: Request) -> Response:
        chosen = _range(request, DEVICE_RANGES, "1h")
        resolution, span, step_s = DEVICE_RANGES[chosen]
        points = device_series(
            since=timezone.now() - span,
            resolution=resolution,
            step_s=step_s,
            worker_id=_worker_param(request),
        )
        return Response({"range": chosen, "step_s": step_s, "points": points})
