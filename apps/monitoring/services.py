"""Writes of the monitoring app: recording rollups, compacting and pruning them."""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import models, transaction

from apps.monitoring.cost import Charge, ReplicaUse, attribute_window, cost_nanos, price_text
from apps.monitoring.models import DevicePrice, DeviceSample, Feedback, MetricRollup, PredictionLog
from apps.tenants.access import Actor, require_staff
from apps.tenants.models import Tenant
from apps.tenants.services import audit_event_create
from control_plane.errors import ApplicationError
from inference_workers.histogram import merge
from inference_workers.types import WorkerHeartbeat

SECOND_RETENTION = timedelta(hours=1)
MINUTE_RETENTION = timedelta(days=30)
# Seconds younger than this may still arrive from a gateway; their minute is not compacted yet.
COMPACT_AFTER = timedelta(minutes=2)


@dataclass(frozen=True)
class RollupPoint:
    """One process's figures for one model version over one second (as a gateway drains them)."""

    second: int
    tenant: str
    model: str
    version: int
    requests: int
    errors: int
    statuses: dict[str, int] = field(default_factory=dict)
    latency: dict[int, int] = field(default_factory=dict)
    inflight_max: int = 0


def rollups_record(*, points: Sequence[RollupPoint], source: str = "gateway") -> list[MetricRollup]:
    """Stores one-second rollups (one INSERT for all); points of unknown tenants are dropped."""
    tenants = dict(Tenant.objects.filter(slug__in={p.tenant for p in points}).values_list("slug", "pk"))
    rows = [
        MetricRollup(
            resolution=MetricRollup.Resolution.SECOND,
            start=datetime.fromtimestamp(point.second, tz=UTC),
            tenant_id=tenants[point.tenant],
            model_name=point.model,
            version=point.version,
            source=source,
            requests=point.requests,
            errors=point.errors,
            statuses=point.statuses,
            latency={str(k): v for k, v in point.latency.items()},
            inflight_max=point.inflight_max,
        )
        for point in points
        if point.tenant in tenants
    ]
    return MetricRollup.objects.bulk_create(rows)


def _json_counts(counts: dict[int, int]) -> dict[str, int]:
    return {str(k): v for k, v in counts.items()}


def _merge_rows(rows: Sequence[MetricRollup]) -> dict[str, Any]:
    statuses: dict[str, int] = {}
    for row in rows:
        for code, count in row.statuses.items():
            statuses[code] = statuses.get(code, 0) + count
    return {
        "requests": sum(r.requests for r in rows),
        "errors": sum(r.errors for r in rows),
        "statuses": statuses,
        "latency": _json_counts(merge(r.latency for r in rows)),
        "inflight_max": max((r.inflight_max for r in rows), default=0),
        "batches": sum(r.batches for r in rows),
        "batch_sizes": _json_counts(merge(r.batch_sizes for r in rows)),
        "queue": _json_counts(merge(r.queue for r in rows)),
        "compute": _json_counts(merge(r.compute for r in rows)),
        "compute_s": sum(r.compute_s for r in rows),
        "predictions": sum(r.predictions for r in rows),
        "compute_us": sum(r.compute_us for r in rows),
        "idle_us": sum(r.idle_us for r in rows),
        "cost_nanos": sum(r.cost_nanos for r in rows),
    }


def device_prices() -> dict[str, Decimal]:
    """The price of one device-hour per device kind: staff's, else the settings' default."""
    prices = {kind: Decimal(price) for kind, price in settings.BERTH_PRICE_PER_HOUR.items()}
    prices.update(DevicePrice.objects.values_list("device_kind", "price_per_hour"))
    return prices


def device_price_set(*, actor: Actor, device_kind: str, price_per_hour: Decimal) -> DevicePrice:
    """Sets what one device-hour of a kind costs from now on (staff); audited. Device time
    already charged keeps the price it was charged at."""
    require_staff(actor, doing="set device prices")
    if device_kind not in DevicePrice.DeviceKind.values:
        raise ApplicationError(f"device_kind is one of {', '.join(DevicePrice.DeviceKind.values)}")
    if not price_per_hour.is_finite() or not (0 <= price_per_hour < 10**6):
        raise ApplicationError("price_per_hour must be between 0 and 1000000")
    before = device_prices().get(device_kind)
    price, _ = DevicePrice.objects.update_or_create(
        device_kind=device_kind, defaults={"price_per_hour": price_per_hour, "updated_by": actor.label[:200]}
    )
    audit_event_create(
        actor=actor,
        tenant=None,
        action="price.set",
        target=f"device-hour/{device_kind}",
        details={"before": None if before is None else price_text(before), "after": price_text(price_per_hour)},
    )
    return price


def _compute_us(window: dict[str, Any] | None) -> int:
    if not window:
        return 0
    if window.get("seconds"):
        return sum(int(part.get("compute_us", 0)) for part in window["seconds"])
    return int(window.get("compute_us", round(window.get("compute_s", 0.0) * 1_000_000)))


def rollups_record_worker(*, heartbeat: WorkerHeartbeat, since: datetime | None, sample: bool = True) -> int:
    """Stores what a heartbeat says: the worker's batches since its previous heartbeat (one
    row per model and second they ran in), the device time of that window charged to the
    hosted replicas (``apps.monitoring.cost``: compute as measured, idle by footprint share)
    at the current price, and a sample of the device. Returns how many rollup rows."""
    sent = datetime.fromtimestamp(int(heartbeat.sent_at), tz=UTC)
    window_us = 0
    if since is not None:
        gap = heartbeat.sent_at - since.timestamp()
        # A gap with heartbeats missing is charged up to the dead-worker horizon only.
        cap = settings.BERTH_HEARTBEAT_INTERVAL_S * settings.BERTH_HEARTBEATS_MISSED_FOR_DEAD
        window_us = round(max(0.0, min(gap, cap)) * 1_000_000)
    holding = [model for model in heartbeat.models if model.state != "failed"]
    uses = [
        ReplicaUse(
            key=model.key,
            # A failed model holds nothing, but what its batches computed is still charged.
            reserved_bytes=max(0, model.reserved_bytes) if model.state != "failed" else 0,
            compute_us=_compute_us(model.window),
        )
        for model in heartbeat.models
    ]
    charged = attribute_window(window_us=window_us, capacity_bytes=heartbeat.device.total_bytes, uses=uses)
    price = device_prices().get(heartbeat.device.kind, Decimal(0))
    reported = {model.key: model for model in heartbeat.models}
    keys = [key for key in reported if reported[key].window or key in charged.charges]
    tenants = dict(Tenant.objects.filter(slug__in={key.tenant for key in keys}).values_list("slug", "pk"))
    rows: list[MetricRollup] = []
    source = f"worker:{heartbeat.worker_id}"[:32]
    for key in keys:
        if key.tenant not in tenants:
            continue
        window = reported[key].window or {}
        charge = charged.charges.get(key, Charge(0, 0))
        # One row per second the batches ran in (older workers send one window: the
        # heartbeat's second); the idle share goes on the heartbeat's second.
        parts = window.get("seconds") or ([{**window, "second": int(heartbeat.sent_at)}] if window else [])
        by_second: dict[int, MetricRollup] = {}
        for part in parts:
            compute_us = int(part.get("compute_us", 0))
            by_second[int(part["second"])] = MetricRollup(
                resolution=MetricRollup.Resolution.SECOND,
                start=datetime.fromtimestamp(int(part["second"]), tz=UTC),
                tenant_id=tenants[key.tenant],
                model_name=key.model,
                version=key.version,
                source=source,
                batches=part.get("batches", 0),
                batch_sizes=part.get("batch_sizes", {}),
                queue=part.get("queue", {}),
                compute=part.get("compute", {}),
                compute_s=part.get("compute_s", 0.0),
                predictions=part.get("requests", 0),
                compute_us=compute_us,
                cost_nanos=cost_nanos(device_us=compute_us, price_per_hour=price),
            )
        if charge.idle_us:
            second = int(heartbeat.sent_at)
            row = by_second.get(second) or MetricRollup(
                resolution=MetricRollup.Resolution.SECOND,
                start=sent,
                tenant_id=tenants[key.tenant],
                model_name=key.model,
                version=key.version,
                source=source,
            )
            row.idle_us = charge.idle_us
            row.cost_nanos += cost_nanos(device_us=charge.idle_us, price_per_hour=price)
            by_second[second] = row
        rows.extend(by_second[second] for second in sorted(by_second))
    device = heartbeat.device
    if not sample:
        return len(MetricRollup.objects.bulk_create(rows))
    DeviceSample.objects.create(
        resolution=DeviceSample.Resolution.HEARTBEAT,
        at=sent,
        worker_id=heartbeat.worker_id,
        device_kind=device.kind,
        device_index=device.index,
        capacity_bytes=device.total_bytes,
        used_bytes=device.used_bytes,
        reserved_bytes=sum(use.reserved_bytes for use in uses),  # failed models count 0
        utilisation_pct=device.utilisation_pct,
        replicas={f"{m.key.tenant}/{m.key.model}@{m.key.version}": m.reserved_bytes for m in holding},
        idle_us=charged.idle_us,
        unattributed_us=charged.unattributed_us,
    )
    return len(MetricRollup.objects.bulk_create(rows))


# Minutes are recomputed from their seconds while this recent, so late seconds still count.
RECOMPUTE = timedelta(minutes=10)
_COMPACT_LOCK = "berth:rollups-compact-lock"


def rollups_compact(*, now: datetime) -> tuple[int, int] | None:
    """Merges one-second rollups into one-minute rollups (counts summed, histograms merged,
    never percentiles averaged) and prunes past retention; None when another run holds the
    lock. The last ``RECOMPUTE`` of complete minutes are rebuilt from their seconds on every
    run, so seconds that arrive late (a gateway that could not write for a while) are not
    lost, and a repeated run changes nothing. Returns (minute rows written, rows pruned)."""
    token = uuid.uuid4().hex
    if not cache.add(_COMPACT_LOCK, token, timeout=300):
        return None
    try:
        return _compact(now)
    finally:
        if cache.get(_COMPACT_LOCK) == token:
            cache.delete(_COMPACT_LOCK)


def _edge(rows: Any, order: str) -> datetime | None:
    """The first value of ``order``'s field (``-field``: the last) among ``rows``."""
    field_name = order.lstrip("-")
    value: datetime | None = rows.order_by(order).values_list(field_name, flat=True).first()
    return value


def _compaction_start(*, latest_minute: datetime | None, earliest: datetime | None, horizon: datetime) -> datetime:
    """Where a compaction run starts: after the last minute built, the last ``RECOMPUTE``
    rebuilt (late arrivals); the first run from the earliest fine-grained row."""
    since = horizon - RECOMPUTE
    if latest_minute is not None:
        since = min(latest_minute + timedelta(minutes=1), since)
    elif earliest is not None:
        since = min(since, earliest.replace(second=0, microsecond=0))
    return since


@transaction.atomic
def _compact(now: datetime) -> tuple[int, int]:
    horizon = (now - COMPACT_AFTER).replace(second=0, microsecond=0)
    # Seconds are pruned only below, after their minutes are built: however long compaction did
    # not run, every second still kept is compacted before it goes.
    since = _compaction_start(
        latest_minute=_edge(MetricRollup.objects.filter(resolution=MetricRollup.Resolution.MINUTE), "-start"),
        earliest=_edge(MetricRollup.objects.filter(resolution=MetricRollup.Resolution.SECOND), "start"),
        horizon=horizon,
    )
    seconds = MetricRollup.objects.filter(
        resolution=MetricRollup.Resolution.SECOND, start__gte=since, start__lt=horizon
    ).order_by("start")
    groups: dict[tuple[datetime, int, str, int, str], list[MetricRollup]] = {}
    for row in seconds:
        minute = row.start.replace(second=0, microsecond=0)
        groups.setdefault((minute, row.tenant_id, row.model_name, row.version, row.source), []).append(row)
    MetricRollup.objects.filter(resolution=MetricRollup.Resolution.MINUTE, start__gte=since, start__lt=horizon).delete()
    made = MetricRollup.objects.bulk_create(
        [
            MetricRollup(
                resolution=MetricRollup.Resolution.MINUTE,
                start=minute,
                tenant_id=tenant_id,
                model_name=model_name,
                version=version,
                source=source,
                **_merge_rows(rows),
            )
            for (minute, tenant_id, model_name, version, source), rows in sorted(groups.items())
        ]
    )
    _compact_devices(horizon=horizon, now=now)
    pruned, _ = MetricRollup.objects.filter(
        resolution=MetricRollup.Resolution.SECOND, start__lt=now - SECOND_RETENTION
    ).delete()
    old_minutes, _ = MetricRollup.objects.filter(
        resolution=MetricRollup.Resolution.MINUTE, start__lt=now - MINUTE_RETENTION
    ).delete()
    return len(made), pruned + old_minutes


def _compact_devices(*, horizon: datetime, now: datetime) -> None:
    """Per-device series: each worker's heartbeat samples of a minute become one sample (the
    most memory used and reserved, mean utilisation, the last replicas, idle time summed);
    heartbeat samples are kept for an hour, minute samples for 30 days. From its own last
    minute (the last ``RECOMPUTE`` rebuilt), never before the oldest complete minute whose
    heartbeat samples are all still kept."""
    last_minute = _edge(DeviceSample.objects.filter(resolution=DeviceSample.Resolution.MINUTE), "-at")
    since = _compaction_start(
        latest_minute=last_minute,
        earliest=_edge(DeviceSample.objects.filter(resolution=DeviceSample.Resolution.HEARTBEAT), "at"),
        horizon=horizon,
    )
    if last_minute is not None:
        since = max(since, (now - SECOND_RETENTION).replace(second=0, microsecond=0) + timedelta(minutes=1))
    groups: dict[tuple[datetime, str], list[DeviceSample]] = {}
    samples = DeviceSample.objects.filter(resolution=DeviceSample.Resolution.HEARTBEAT, at__gte=since, at__lt=horizon)
    for sample in samples.order_by("at", "id"):
        groups.setdefault((sample.at.replace(second=0, microsecond=0), sample.worker_id), []).append(sample)
    DeviceSample.objects.filter(resolution=DeviceSample.Resolution.MINUTE, at__gte=since, at__lt=horizon).delete()
    minutes = []
    for (minute, worker_id), group in sorted(groups.items()):
        last = group[-1]
        utilisation = [s.utilisation_pct for s in group if s.utilisation_pct is not None]
        minutes.append(
            DeviceSample(
                resolution=DeviceSample.Resolution.MINUTE,
                at=minute,
                worker_id=worker_id,
                device_kind=last.device_kind,
                device_index=last.device_index,
                capacity_bytes=last.capacity_bytes,
                used_bytes=max(s.used_bytes for s in group),
                reserved_bytes=max(s.reserved_bytes for s in group),
                utilisation_pct=round(sum(utilisation) / len(utilisation), 3) if utilisation else None,
                replicas=last.replicas,
                idle_us=sum(s.idle_us for s in group),
                unattributed_us=sum(s.unattributed_us for s in group),
            )
        )
    DeviceSample.objects.bulk_create(minutes)
    DeviceSample.objects.filter(resolution=DeviceSample.Resolution.HEARTBEAT, at__lt=now - SECOND_RETENTION).delete()
    DeviceSample.objects.filter(resolution=DeviceSample.Resolution.MINUTE, at__lt=now - MINUTE_RETENTION).delete()


# ---------------------------------------------------------------- prediction logs and feedback


@dataclass(frozen=True)
class LoggedPrediction:
    """One sampled inference as a gateway keeps it until its next flush (raw bodies)."""

    tenant: str
    model: str
    version: int
    request_id: str
    at: float
    request_body: bytes
    request_header_length: str | None
    response_body: bytes
    response_header_length: str | None
    retention_days: int
    too_large: int = 0  # the larger body's size when it was over the log's limit (bodies dropped)
    request_encoding: str = ""  # the request's Content-Encoding (gzip, deflate), inflated when stored


# Bodies larger than this are logged without their tensors (and cannot be scored).
PREDICTION_LOG_MAX_BODY = 1 << 20


def prediction_logs_record(*, entries: Sequence[LoggedPrediction]) -> int:
    """Stores sampled predictions (one INSERT): inputs and outputs decoded from the v2 bodies
    (binary tensors included, up to 4,096 elements each). Returns how many were stored."""
    from inference_workers.codec import decode_tensors, decompress
    from inference_workers.errors import DataPlaneError

    def tensors(
        body: bytes, header_length: str | None, key: str, encoding: str = ""
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        try:
            if encoding:
                body = decompress(body, encoding.encode(), limit=PREDICTION_LOG_MAX_BODY)
            if len(body) > PREDICTION_LOG_MAX_BODY:
                return {}, [{"omitted": f"body of {len(body)} bytes is over the log's {PREDICTION_LOG_MAX_BODY}"}]
            return decode_tensors(body, header_length=header_length, key=key)
        except DataPlaneError as exc:
            return {}, [{"omitted": exc.message}]

    tenants = dict(Tenant.objects.filter(slug__in={e.tenant for e in entries}).values_list("slug", "pk"))
    rows = []
    for entry in entries:
        if entry.tenant not in tenants:
            continue
        if entry.too_large:
            omitted = [{"omitted": f"body of {entry.too_large} bytes is over the log's {PREDICTION_LOG_MAX_BODY}"}]
            request_header: dict[str, Any] = {}
            inputs, outputs = omitted, omitted
        else:
            request_header, inputs = tensors(
                entry.request_body, entry.request_header_length, "inputs", entry.request_encoding
            )
            _, outputs = tensors(entry.response_body, entry.response_header_length, "outputs")
        at = datetime.fromtimestamp(entry.at, tz=UTC)
        inputs, outputs = _without_nul(inputs), _without_nul(outputs)
        inference_id = request_header.get("id")
        rows.append(
            PredictionLog(
                tenant_id=tenants[entry.tenant],
                model_name=entry.model,
                version=entry.version,
                request_id=entry.request_id[:128],
                inference_id=str(inference_id).replace("\x00", "")[:128] if inference_id is not None else "",
                created_at=at,
                inputs=inputs,
                outputs=outputs,
                expires_at=at + timedelta(days=entry.retention_days),
            )
        )
    return len(PredictionLog.objects.bulk_create(rows))


def _without_nul(value: Any) -> Any:
    """The value with NUL characters taken out of its strings (PostgreSQL's JSON refuses them)."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    if isinstance(value, dict):
        return {str(key).replace("\x00", ""): _without_nul(item) for key, item in value.items()}
    return value


def prediction_logs_prune(*, now: datetime) -> int:
    """Deletes prediction logs past their deployment's retention (feedback keeps its scores)."""
    deleted, _ = PredictionLog.objects.filter(expires_at__lt=now).delete()
    return deleted


class FeedbackError(ValueError):
    """Why one feedback item cannot be scored (reported per item, not as a failed call)."""


def _rows_of(tensor: dict[str, Any], truths: int) -> list[list[Any]]:
    if tensor.get("truncated") or "data" not in tensor:
        raise FeedbackError(f"output '{tensor.get('name')}' was too large to log, so it cannot be scored")
    data, shape = tensor["data"], tensor.get("shape") or [len(tensor["data"])]
    if len(shape) >= 2:
        rows = int(shape[0])
        width = len(data) // rows if rows else 0
        return [data[i * width : (i + 1) * width] for i in range(rows)]
    if truths == len(data) and truths > 1:
        return [[value] for value in data]  # one value per row
    return [data]  # one row of scores


def _predicted(row: list[Any], task: str, datatype: str) -> Any:
    if task == Feedback.Task.REGRESSION:
        if len(row) != 1:
            raise FeedbackError(f"regression scores one value per row; this output has {len(row)} per row")
        return float(row[0])
    if datatype == "BYTES" or len(row) == 1:
        value = row[0]
        return int(value) if isinstance(value, float) and value.is_integer() else value
    return max(range(len(row)), key=lambda i: row[i])  # the class with the highest score


def _score(task: str, predicted: list[Any], truths: list[Any]) -> tuple[int | None, float | None]:
    if task == Feedback.Task.REGRESSION:
        try:
            values = [float(t) for t in truths]
        except (TypeError, ValueError):
            raise FeedbackError("regression ground truth must be numbers") from None
        if not all(math.isfinite(v) for v in [*values, *predicted]):
            raise FeedbackError("regression ground truth and predictions must be finite numbers")
        return None, sum(abs(p - v) for p, v in zip(predicted, values, strict=True))
    return sum(1 for p, t in zip(predicted, truths, strict=True) if p == t or str(p) == str(t)), None


def feedback_record(*, tenant: Tenant, model_name: str, items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Joins ground truth to logged predictions by request id (the gateway's X-Request-ID or
    the v2 body's ``id``) and scores each: accuracy for classification (the highest-scoring
    class, or the label the model gave), absolute error for regression. Feedback sent again
    for a request replaces the earlier. Returns one result per item: ``scored`` (with
    ``correct`` or ``abs_error``), ``unknown`` (no logged prediction: not sampled, expired or
    never made) or ``error`` (with why)."""
    from apps.deployments.models import Deployment

    deployment = Deployment.objects.filter(model__tenant=tenant, model__name=model_name).first()
    config = deployment.prediction_log if deployment is not None else {}
    task = config.get("task", Feedback.Task.CLASSIFICATION)
    ids = [str(item["request_id"]) for item in items]
    logs = PredictionLog.objects.filter(tenant=tenant, model_name=model_name).filter(
        models.Q(request_id__in=ids) | models.Q(inference_id__in=ids)
    )
    by_id: dict[str, PredictionLog] = {}
    for logged in logs.order_by("created_at"):  # the newest of a reused id wins
        by_id[logged.request_id] = logged
        if logged.inference_id:
            by_id[logged.inference_id] = logged
    results: list[dict[str, Any]] = []
    for request_id, item in zip(ids, items, strict=True):
        log = by_id.get(request_id)
        if log is None:
            results.append({"request_id": request_id, "status": "unknown"})
            continue
        truth = item["ground_truth"]
        truths = truth if isinstance(truth, list) else [truth]
        try:
            outputs = [t for t in log.outputs if "name" in t]
            wanted = config.get("output")
            tensor = next((t for t in outputs if t["name"] == wanted), None) if wanted else (outputs or [None])[0]
            if tensor is None:
                raise FeedbackError(f"the logged prediction has no output '{wanted or ''}' to score")
            rows = _rows_of(tensor, len(truths))
            if len(rows) != len(truths):
                raise FeedbackError(f"ground_truth has {len(truths)} value(s); the prediction has {len(rows)} row(s)")
            predicted = [_predicted(row, task, tensor.get("datatype", "")) for row in rows]
            correct, abs_error = _score(task, predicted, truths)
        except FeedbackError as exc:
            results.append({"request_id": request_id, "status": "error", "error": str(exc)})
            continue
        Feedback.objects.update_or_create(
            prediction=log,
            defaults={
                "tenant": tenant,
                "model_name": model_name,
                "version": log.version,
                "request_id": log.request_id,
                "task": task,
                "predicted": predicted,
                "ground_truth": truths,
                "rows": len(truths),
                "correct": correct,
                "abs_error_sum": abs_error,
                "predicted_at": log.created_at,
            },
        )
        result: dict[str, Any] = {"request_id": request_id, "status": "scored", "version": log.version}
        result.update({"predicted": predicted, "correct": correct} if correct is not None else {})
        result.update({"predicted": predicted, "abs_error": abs_error} if abs_error is not None else {})
        results.append(result)
    return results
