"""Reads of the monitoring app: the platform's own health, and metric series."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from django.db import DatabaseError, connections
from django.db.models import QuerySet, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone
from kombu import Connection
from kombu.exceptions import OperationalError

from apps.monitoring.cost import money
from apps.monitoring.models import DeviceSample, Feedback, MetricRollup, PredictionLog
from apps.tenants.models import Tenant
from inference_workers.histogram import merge, percentile


@dataclass(frozen=True)
class HealthCheck:
    """One dependency's health: ``ok`` or what went wrong."""

    part: str
    ok: bool
    detail: str


def database_health() -> HealthCheck:
    """Whether the default database answers a query."""
    try:
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError as exc:
        return HealthCheck(part="database", ok=False, detail=f"database unreachable: {exc}")
    return HealthCheck(part="database", ok=True, detail="ok")


def broker_health(*, url: str, transport_options: dict[str, Any]) -> HealthCheck:
    """Whether the Celery broker accepts a connection (or, embedded, its folder is writable)."""
    if url.startswith(("berthfs://", "filesystem://")):
        folder = Path(transport_options.get("data_folder_out", ""))
        if not folder.is_dir():
            return HealthCheck(part="broker", ok=False, detail=f"broker folder {folder} is missing")
        probe = folder / ".healthz"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            return HealthCheck(part="broker", ok=False, detail=f"broker folder not writable: {exc.strerror}")
        return HealthCheck(part="broker", ok=True, detail="ok")
    with Connection(url, transport_options=transport_options, connect_timeout=2) as connection:
        unreachable: tuple[type[BaseException], ...] = (OperationalError, OSError, *connection.connection_errors)
        try:
            connection.ensure_connection(max_retries=1, timeout=3)
        except unreachable as exc:
            return HealthCheck(part="broker", ok=False, detail=f"broker unreachable: {exc}")
    return HealthCheck(part="broker", ok=True, detail="ok")


def metric_point(
    *, start: datetime, model: str, version: int, rows: list[Any], histograms: bool = False
) -> dict[str, Any]:
    """One chart point from the rows (or drained cells) of one interval and model version:
    counts summed, latency percentiles read from the merged histogram (``histograms``: with
    the merged counts too, so a page can merge it with live points exactly)."""
    latency = merge(row.latency for row in rows)
    requests = sum(row.requests for row in rows)
    errors = sum(row.errors for row in rows)
    statuses: dict[str, int] = {}
    for row in rows:
        for code, count in (getattr(row, "statuses", None) or {}).items():
            statuses[str(code)] = statuses.get(str(code), 0) + int(count)
    queue = merge(getattr(row, "queue", {}) for row in rows)
    compute = merge(getattr(row, "compute", {}) for row in rows)
    sizes = merge(getattr(row, "batch_sizes", {}) for row in rows)
    batches = sum(getattr(row, "batches", 0) for row in rows)

    def ms(counts: dict[int, int], q: float) -> float | None:
        value = percentile(counts, q)
        return None if value is None else round(value * 1000, 3)

    return {
        "t": start.isoformat(),
        "model": model,
        "version": version,
        "requests": requests,
        "errors": errors,
        "error_rate": round(errors / requests, 4) if requests else 0.0,
        "statuses": dict(sorted(statuses.items())),
        "p50_ms": ms(latency, 50),
        "p95_ms": ms(latency, 95),
        "p99_ms": ms(latency, 99),
        "inflight_max": max((row.inflight_max for row in rows), default=0),
        "batches": batches,
        "batch_sizes": {str(size): count for size, count in sorted(sizes.items())},
        "mean_batch_size": round(sum(s * c for s, c in sizes.items()) / batches, 3) if batches else None,
        "queue_p50_ms": ms(queue, 50),
        "queue_p95_ms": ms(queue, 95),
        "compute_p50_ms": ms(compute, 50),
        "compute_p95_ms": ms(compute, 95),
        "compute_s": round(sum(getattr(row, "compute_s", 0.0) for row in rows), 6),
    } | (
        {
            "latency": {str(k): v for k, v in latency.items()},
            "queue": {str(k): v for k, v in queue.items()},
            "compute": {str(k): v for k, v in compute.items()},
        }
        if histograms
        else {}
    )


# range → (resolution read, span, step of the points returned): about 720-900 points a series.
RANGES = {
    "15m": ("1s", timedelta(minutes=15), 1),
    "1h": ("1s", timedelta(hours=1), 5),
    "24h": ("1m", timedelta(days=1), 120),
    "30d": ("1m", timedelta(days=30), 3600),
}


def metric_series(
    *, tenant: Tenant, since: datetime, resolution: str, model: str | None = None, step_s: int = 1
) -> list[dict[str, Any]]:
    """A tenant's chart points since ``since``, one per (step, model, version): rows of every
    gateway process and interval in a step are summed, their histograms merged."""
    mine = MetricRollup.objects.filter(tenant=tenant).defer("source", "tenant")
    if model:
        mine = mine.filter(model_name=model)
    if resolution == MetricRollup.Resolution.MINUTE:
        # Up to the last compacted minute from minutes, the newest seconds after it: the long
        # ranges reach the right edge too.
        minutes, seconds = rollups_between(mine, since=since, until=timezone.now() + timedelta(days=1))
        parts = [minutes.order_by("start"), seconds.order_by("start")]
    else:
        parts = [mine.filter(resolution=resolution, start__gte=since).order_by("start")]
    groups: dict[tuple[int, str, int], list[MetricRollup]] = {}
    for row in (row for part in parts for row in part.iterator(chunk_size=2000)):
        bucket = int(row.start.timestamp()) // step_s * step_s
        groups.setdefault((bucket, row.model_name, row.version), []).append(row)
    return [
        {**metric_point(start=datetime.fromtimestamp(bucket, tz=UTC), model=name, version=version, rows=group,
                        histograms=True),
         "step_s": step_s}
        for (bucket, name, version), group in sorted(groups.items())
    ]  # fmt: skip


USAGE_FIELDS = ("requests", "errors", "predictions", "compute_us", "idle_us", "cost_nanos")


def rollups_between(
    rows: QuerySet[MetricRollup], *, since: datetime, until: datetime
) -> tuple[QuerySet[MetricRollup], QuerySet[MetricRollup]]:
    """``rows`` from ``since`` to ``until`` without counting anything twice: the one-minute
    rows up to the last compacted minute, the one-second rows after it."""
    latest_minute = (
        MetricRollup.objects.filter(resolution=MetricRollup.Resolution.MINUTE)
        .order_by("-start")
        .values_list("start", flat=True)
        .first()
    )
    boundary = since if latest_minute is None else max(since, min(until, latest_minute + timedelta(minutes=1)))
    return (
        rows.filter(resolution=MetricRollup.Resolution.MINUTE, start__gte=since, start__lt=boundary),
        rows.filter(resolution=MetricRollup.Resolution.SECOND, start__gte=boundary, start__lt=until),
    )


def _usage_rows(rows: QuerySet[MetricRollup]) -> list[dict[str, Any]]:
    return list(
        rows.annotate(day=TruncDate("start", tzinfo=UTC))
        .values("day", "model_name", "version")
        .annotate(**{name: Sum(name) for name in USAGE_FIELDS})
    )


def _usage_line(figures: dict[str, int]) -> dict[str, Any]:
    predictions = figures["predictions"]
    return {
        "requests": figures["requests"],
        "errors": figures["errors"],
        "predictions": predictions,
        "compute_s": round(figures["compute_us"] / 1_000_000, 6),
        "idle_s": round(figures["idle_us"] / 1_000_000, 6),
        "device_s": round((figures["compute_us"] + figures["idle_us"]) / 1_000_000, 6),
        "cost": money(figures["cost_nanos"]),
        "cost_per_1000": money(figures["cost_nanos"] * 1000 // predictions) if predictions else None,
    }


def usage_report(*, tenant: Tenant, first_day: date, last_day: date, model: str | None = None) -> dict[str, Any]:
    """A tenant's usage and cost per day and model version from ``first_day`` to ``last_day``
    (UTC, inclusive): requests (gateway), predictions (answered by the workers' batches),
    device seconds charged (compute, and reserved-but-idle by footprint share), cost and cost
    per 1,000 predictions; with totals per model version and for the tenant. Compacted minutes
    are read where they exist, seconds after them, so nothing counts twice."""
    since = datetime.combine(first_day, time.min, tzinfo=UTC)
    until = datetime.combine(last_day + timedelta(days=1), time.min, tzinfo=UTC)
    mine = MetricRollup.objects.filter(tenant=tenant)
    if model:
        mine = mine.filter(model_name=model)
    minutes, seconds = rollups_between(mine, since=since, until=until)
    cells: dict[tuple[date, str, int], dict[str, int]] = {}
    for row in _usage_rows(minutes) + _usage_rows(seconds):
        cell = cells.setdefault((row["day"], row["model_name"], row["version"]), dict.fromkeys(USAGE_FIELDS, 0))
        for name in USAGE_FIELDS:
            cell[name] += row[name] or 0
    per_version: dict[tuple[str, int], dict[str, int]] = {}
    overall = dict.fromkeys(USAGE_FIELDS, 0)
    per_day: dict[date, dict[str, int]] = {}
    for (day, name, version), figures in cells.items():
        daily = per_day.setdefault(day, dict.fromkeys(USAGE_FIELDS, 0))
        for field in USAGE_FIELDS:
            daily[field] += figures[field]
        total = per_version.setdefault((name, version), dict.fromkeys(USAGE_FIELDS, 0))
        for field in USAGE_FIELDS:
            total[field] += figures[field]
            overall[field] += figures[field]
    return {
        "tenant": tenant.slug,
        "from": first_day.isoformat(),
        "to": last_day.isoformat(),
        "days": [
            {"date": day.isoformat(), "model": name, "version": version, **_usage_line(figures)}
            for (day, name, version), figures in sorted(cells.items())
        ],
        "models": [
            {"model": name, "version": version, **_usage_line(figures)}
            for (name, version), figures in sorted(per_version.items())
        ],
        "daily_totals": [{"date": day.isoformat(), **_usage_line(figures)} for day, figures in sorted(per_day.items())],
        "total": _usage_line(overall),
    }


# range → (span, step of the points): accuracy by when the predictions were made.
ACCURACY_RANGES = {
    "24h": (timedelta(days=1), 3600),
    "7d": (timedelta(days=7), 6 * 3600),
    "30d": (timedelta(days=30), 86400),
}


@dataclass
class _Quality:
    scored: int = 0  # classification rows
    correct: int = 0
    measured: int = 0  # regression rows
    abs_error: float = 0.0

    def add(self, rows: int, correct: int | None, abs_error: float | None) -> None:
        if correct is not None:
            self.scored += rows
            self.correct += correct
        if abs_error is not None:
            self.measured += rows
            self.abs_error += abs_error

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.scored + self.measured,
            "accuracy": round(self.correct / self.scored, 4) if self.scored else None,
            "mae": round(self.abs_error / self.measured, 6) if self.measured else None,
        }


def accuracy_series(*, tenant: Tenant, model_name: str, since: datetime, step_s: int) -> dict[str, Any]:
    """A model's quality from feedback, per step of prediction time and per version:
    accuracy (rows predicted right / rows scored) for classification, mean absolute error
    for regression; and per version over the whole span."""
    cells: dict[tuple[int, int], _Quality] = {}
    totals: dict[int, _Quality] = {}
    feedback = Feedback.objects.filter(tenant=tenant, model_name=model_name, predicted_at__gte=since)
    for at, version, rows, correct, abs_error in feedback.values_list(
        "predicted_at", "version", "rows", "correct", "abs_error_sum"
    ):
        bucket = int(at.timestamp()) // step_s * step_s
        cells.setdefault((bucket, version), _Quality()).add(rows, correct, abs_error)
        totals.setdefault(version, _Quality()).add(rows, correct, abs_error)
    return {
        "points": [
            {"t": datetime.fromtimestamp(bucket, tz=UTC).isoformat(), "version": version, **cell.as_dict()}
            for (bucket, version), cell in sorted(cells.items())
        ],
        "versions": [{"version": version, **cell.as_dict()} for version, cell in sorted(totals.items())],
    }


def prediction_logs_list(*, tenant: Tenant, model_name: str, limit: int, offset: int) -> list[PredictionLog]:
    """A model's logged predictions, newest first, with their feedback when given."""
    rows = PredictionLog.objects.filter(tenant=tenant, model_name=model_name).select_related("feedback")
    return list(rows.order_by("-created_at", "-id")[offset : offset + limit])


# range → (resolution read, span, step): per-device series for the fleet page.
DEVICE_RANGES = {
    "1h": ("hb", timedelta(hours=1), 10),
    "24h": ("1m", timedelta(days=1), 120),
    "30d": ("1m", timedelta(days=30), 3600),
}


def device_series(
    *, since: datetime, resolution: str, step_s: int, worker_id: str | None = None
) -> list[dict[str, Any]]:
    """Each device's memory (capacity, measured use, reserved and per replica) and
    utilisation over time, one point per step: the most memory seen in the step, mean
    utilisation, idle seconds summed."""
    samples = DeviceSample.objects.filter(resolution=resolution, at__gte=since)
    if worker_id:
        samples = samples.filter(worker_id=worker_id)
    groups: dict[tuple[str, int], list[DeviceSample]] = {}
    for sample in samples.order_by("at", "id").iterator(chunk_size=2000):
        groups.setdefault((sample.worker_id, int(sample.at.timestamp()) // step_s * step_s), []).append(sample)
    points = []
    for (worker, bucket), group in sorted(groups.items()):
        busy = [s.utilisation_pct for s in group if s.utilisation_pct is not None]
        points.append(
            {
                "t": datetime.fromtimestamp(bucket, tz=UTC).isoformat(),
                "worker": worker,
                "device_kind": group[-1].device_kind,
                "capacity_bytes": group[-1].capacity_bytes,
                "used_bytes": max(s.used_bytes for s in group),
                "reserved_bytes": max(s.reserved_bytes for s in group),
                "replicas": group[-1].replicas,
                "utilisation_pct": round(sum(busy) / len(busy), 3) if busy else None,
                "idle_s": round(sum(s.idle_us for s in group) / 1_000_000, 6),
            }
        )
    return points
