"""Writes on workers: registration from heartbeats, and marking silent workers dead."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.deployments.models import Worker
from inference_workers.types import WorkerHeartbeat


@transaction.atomic
def worker_record_heartbeat(*, heartbeat: WorkerHeartbeat) -> Worker:
    """Registers a worker, or refreshes it, from one of its heartbeats.

    A heartbeat older than the stored one (delivered late) changes nothing, so the
    order in which the broker delivers them does not matter.
    """
    sent_at = datetime.fromtimestamp(heartbeat.sent_at, tz=UTC)
    # Heartbeats carry the worker's clock; never let a skewed clock put one in the future.
    seen_at = min(sent_at, timezone.now())
    worker = Worker.objects.select_for_update().filter(worker_id=heartbeat.worker_id).first()
    if worker is not None and worker.last_heartbeat_at >= seen_at:
        return worker
    device = heartbeat.device
    fields = {
        "host": heartbeat.host,
        "dataplane_url": heartbeat.dataplane_url,
        "queue": heartbeat.queue,
        "state": heartbeat.state,
        "device_kind": device.kind,
        "device_index": device.index,
        "device_name": device.name,
        "device_uuid": device.uuid,
        "capacity_bytes": device.total_bytes,
        "used_bytes": device.used_bytes,
        "utilisation_pct": device.utilisation_pct,
        "last_heartbeat_at": seen_at,
    }
    if worker is None:
        try:
            with transaction.atomic():
                return Worker.objects.create(worker_id=heartbeat.worker_id, **fields)
        except IntegrityError:
            # Two first heartbeats raced; the other one registered the worker.
            worker = Worker.objects.select_for_update().get(worker_id=heartbeat.worker_id)
            if worker.last_heartbeat_at >= seen_at:
                return worker
    for name, value in fields.items():
        setattr(worker, name, value)
    worker.save(update_fields=list(fields))
    return worker


def worker_mark_missing(*, now: datetime, interval_s: float, missed: int) -> int:
    """Marks dead every worker that has missed ``missed`` heartbeats; returns how many."""
    cutoff = now - timedelta(seconds=interval_s * missed)
    return (
        Worker.objects.filter(last_heartbeat_at__lt=cutoff)
        .exclude(state=Worker.State.DEAD)
        .update(state=Worker.State.DEAD)
    )
