"""Writes of the monitoring app: recording rollups, compacting and pruning them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import transaction

from apps.monitoring.histogram import merge
from apps.monitoring.models import MetricRollup
from apps.tenants.models import Tenant

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


def _merge_rows(rows: Sequence[MetricRollup]) -> dict[str, Any]:
    statuses: dict[str, int] = {}
    for row in rows:
        for code, count in row.statuses.items():
            statuses[code] = statuses.get(code, 0) + count
    return {
        "requests": sum(r.requests for r in rows),
        "errors": sum(r.errors for r in rows),
        "statuses": statuses,
        "latency": {str(k): v for k, v in merge(r.latency for r in rows).items()},
        "inflight_max": max((r.inflight_max for r in rows), default=0),
    }


@transaction.atomic
def rollups_compact(*, now: datetime) -> tuple[int, int]:
    """Merges complete minutes of one-second rollups into one-minute rollups (histograms
    merged, never percentiles averaged), then prunes past retention. Idempotent: a minute
    is compacted once. Returns (minute rows made, rows pruned)."""
    horizon = (now - COMPACT_AFTER).replace(second=0, microsecond=0)
    last = (
        MetricRollup.objects.filter(resolution=MetricRollup.Resolution.MINUTE)
        .order_by("-start")
        .values_list("start", flat=True)
        .first()
    )
    seconds = MetricRollup.objects.filter(resolution=MetricRollup.Resolution.SECOND, start__lt=horizon)
    if last is not None:
        seconds = seconds.filter(start__gte=last + timedelta(minutes=1))
    groups: dict[tuple[datetime, int, str, int, str], list[MetricRollup]] = {}
    for row in seconds.order_by("start"):
        minute = row.start.replace(second=0, microsecond=0)
        groups.setdefault((minute, row.tenant_id, row.model_name, row.version, row.source), []).append(row)
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
    pruned, _ = MetricRollup.objects.filter(
        resolution=MetricRollup.Resolution.SECOND, start__lt=now - SECOND_RETENTION
    ).delete()
    old_minutes, _ = MetricRollup.objects.filter(
        resolution=MetricRollup.Resolution.MINUTE, start__lt=now - MINUTE_RETENTION
    ).delete()
    return len(made), pruned + old_minutes
