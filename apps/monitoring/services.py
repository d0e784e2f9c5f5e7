"""Writes of the monitoring app: recording rollups, compacting and pruning them."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.core.cache import cache
from django.db import transaction

from apps.monitoring.models import MetricRollup
from apps.tenants.models import Tenant
from inference_workers.histogram import merge
from inference_workers.types import HostedModel

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
    }


def rollups_record_worker(*, worker_id: str, sent_at: float, models: Sequence[HostedModel]) -> int:
    """Stores what a heartbeat says the worker's batches did since its previous one (one row
    per model with a window, at the heartbeat's second); returns how many rows."""
    windows = [model for model in models if model.window]
    tenants = dict(Tenant.objects.filter(slug__in={m.key.tenant for m in windows}).values_list("slug", "pk"))
    rows = [
        MetricRollup(
            resolution=MetricRollup.Resolution.SECOND,
            start=datetime.fromtimestamp(int(sent_at), tz=UTC),
            tenant_id=tenants[model.key.tenant],
            model_name=model.key.model,
            version=model.key.version,
            source=f"worker:{worker_id}"[:32],
            batches=model.window["batches"],
            batch_sizes=model.window["batch_sizes"],
            queue=model.window["queue"],
            compute=model.window["compute"],
            compute_s=model.window["compute_s"],
        )
        for model in windows
        if model.window is not None and model.key.tenant in tenants
    ]
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


@transaction.atomic
def _compact(now: datetime) -> tuple[int, int]:
    horizon = (now - COMPACT_AFTER).replace(second=0, microsecond=0)
    last = (
        MetricRollup.objects.filter(resolution=MetricRollup.Resolution.MINUTE)
        .order_by("-start")
        .values_list("start", flat=True)
        .first()
    )
    since = horizon - RECOMPUTE if last is None else min(last + timedelta(minutes=1), horizon - RECOMPUTE)
    since = max(since, now - SECOND_RETENTION + timedelta(minutes=1))  # only minutes whose seconds are all kept
    if last is None:
        earliest = (
            MetricRollup.objects.filter(resolution=MetricRollup.Resolution.SECOND)
            .order_by("start")
            .values_list("start", flat=True)
            .first()
        )
        if earliest is not None:
            since = min(since, earliest.replace(second=0, microsecond=0))
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
    pruned, _ = MetricRollup.objects.filter(
        resolution=MetricRollup.Resolution.SECOND, start__lt=now - SECOND_RETENTION
    ).delete()
    old_minutes, _ = MetricRollup.objects.filter(
        resolution=MetricRollup.Resolution.MINUTE, start__lt=now - MINUTE_RETENTION
    ).delete()
    return len(made), pruned + old_minutes
