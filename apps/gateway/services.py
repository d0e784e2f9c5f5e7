"""Writes the gateway makes: demand (for scale to zero and cold starts) and suspect replicas.

Each is one small UPDATE run off the event loop; the reconcile loop acts on what they
record, after commit.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from apps.deployments.models import Deployment, Replica


def _reconcile_after_commit() -> None:
    from apps.deployments.tasks import reconcile

    transaction.on_commit(reconcile.delay, robust=True)


def deployment_record_requests(*, deployment_ids: Iterable[int], now: datetime | None = None) -> int:
    """Marks deployments as just used (they stay scaled up); returns how many rows changed."""
    ids = list(deployment_ids)
    if not ids:
        return 0
    return Deployment.objects.filter(pk__in=ids).update(last_request_at=now or timezone.now())


@transaction.atomic
def deployment_cold_start(*, deployment_id: int, now: datetime | None = None) -> bool:
    """A request is waiting for a deployment with no ready replica: record it and reconcile.

    Returns False when the deployment no longer exists.
    """
    if not deployment_record_requests(deployment_ids=[deployment_id], now=now):
        return False
    _reconcile_after_commit()
    return True


@transaction.atomic
def replica_mark_suspect(*, replica_id: int, now: datetime | None = None) -> None:
    """A gateway could not connect to this replica's worker; the reconcile loop checks it."""
    if Replica.objects.filter(pk=replica_id).update(suspect_at=now or timezone.now()):
        _reconcile_after_commit()
