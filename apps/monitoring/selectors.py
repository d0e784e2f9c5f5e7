"""Reads of the monitoring app: the platform's own health, and metric series."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.db import DatabaseError, connections
from kombu import Connection
from kombu.exceptions import OperationalError

from apps.monitoring.histogram import merge, percentile
from apps.monitoring.models import MetricRollup
from apps.tenants.models import Tenant


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


def metric_point(*, start: datetime, model: str, version: int, rows: list[Any]) -> dict[str, Any]:
    """One chart point from the rows (or drained cells) of one interval and model version:
    counts summed, latency percentiles read from the merged histogram."""
    latency = merge(row.latency for row in rows)
    requests = sum(row.requests for row in rows)
    errors = sum(row.errors for row in rows)

    def ms(q: float) -> float | None:
        value = percentile(latency, q)
        return None if value is None else round(value * 1000, 3)

    return {
        "t": start.isoformat(),
        "model": model,
        "version": version,
        "requests": requests,
        "errors": errors,
        "error_rate": round(errors / requests, 4) if requests else 0.0,
        "p50_ms": ms(50),
        "p95_ms": ms(95),
        "p99_ms": ms(99),
        "inflight_max": max((row.inflight_max for row in rows), default=0),
    }


RANGES = {"15m": ("1s", timedelta(minutes=15)), "1h": ("1s", timedelta(hours=1)), "24h": ("1m", timedelta(days=1)),
          "30d": ("1m", timedelta(days=30))}  # fmt: skip


def metric_series(
    *, tenant: Tenant, since: datetime, resolution: str, model: str | None = None
) -> list[dict[str, Any]]:
    """A tenant's chart points since ``since``, one per (interval, model, version)."""
    rows = MetricRollup.objects.filter(tenant=tenant, resolution=resolution, start__gte=since)
    if model:
        rows = rows.filter(model_name=model)
    groups: dict[tuple[datetime, str, int], list[MetricRollup]] = {}
    for row in rows.order_by("start", "model_name", "version"):
        groups.setdefault((row.start, row.model_name, row.version), []).append(row)
    return [
        metric_point(start=start, model=name, version=version, rows=group)
        for (start, name, version), group in groups.items()
    ]
