"""Control tasks of the deployments app; they run on the control queue."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from apps.deployments.services import (
    UNDEPLOY_UNLOADS_TASK,
    undeploy_unloads_send,
    worker_mark_missing,
    worker_record_heartbeat,
)
from control_plane.celery import RECONCILE_TASK, WORKERS_MARK_MISSING_TASK
from inference_workers.types import HEARTBEAT_TASK, SERVING_TASK, MessageError, WorkerHeartbeat

log = logging.getLogger(__name__)


@shared_task(name=HEARTBEAT_TASK, ignore_result=True)
def worker_heartbeat(message: dict[str, Any]) -> None:
    """Records a worker's heartbeat; a malformed one is logged and dropped."""
    try:
        heartbeat = WorkerHeartbeat.from_message(message)
    except MessageError as exc:
        log.warning("dropped a malformed heartbeat: %s", exc)
        return
    worker_record_heartbeat(heartbeat=heartbeat)


@shared_task(name=SERVING_TASK)
def worker_serving(worker_id: str) -> int:
    """How many replicas on this worker the gateways still route to: a worker handing over
    after SIGTERM keeps serving until this is 0 (each has a ready replacement elsewhere)."""
    from apps.deployments.selectors import worker_replicas_serving

    return worker_replicas_serving(worker_id=worker_id)


@shared_task(name=WORKERS_MARK_MISSING_TASK, ignore_result=True)
def workers_mark_missing() -> None:
    """Marks dead the workers whose heartbeats stopped (run by beat every second)."""
    worker_mark_missing(
        now=timezone.now(),
        interval_s=settings.BERTH_HEARTBEAT_INTERVAL_S,
        missed=settings.BERTH_HEARTBEATS_MISSED_FOR_DEAD,
    )


@shared_task(name=RECONCILE_TASK, ignore_result=True)
def reconcile() -> None:
    """One reconcile pass (beat runs it every 2 s; changes to deployments run it at once)."""
    from apps.deployments.reconcile import reconcile_once

    reconcile_once()


@shared_task(name=UNDEPLOY_UNLOADS_TASK, ignore_result=True)
def undeploy_unloads(unloads: list[dict[str, Any]]) -> None:
    """Sends an undeployed model's unloads to its workers (once each: see the service)."""
    undeploy_unloads_send(unloads=unloads)
