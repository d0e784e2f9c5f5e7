"""Reads on workers and deployments."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from apps.deployments.models import Deployment, Replica, Worker
from apps.registry.models import Model, ModelVersion
from apps.tenants.models import Tenant


def worker_list() -> QuerySet[Worker]:
    """Every registered worker, dead ones included, by id."""
    return Worker.objects.order_by("worker_id")


def worker_replicas_serving(*, worker_id: str) -> int:
    """How many replicas on a worker the gateways still route to (ready, not yet moved off)."""
    return Replica.objects.filter(worker__worker_id=worker_id, state=Replica.State.READY).count()


def tenant_deployment_usage(*, tenant: Tenant, kind: str, excluding: Model | None = None) -> tuple[int, int]:
    """(bytes of ``kind``, replicas of every kind) the tenant's deployments hold at their minimum
    (``max_replicas`` in the quota counts replicas on every device kind)."""
    from apps.deployments.services import deployment_need, measured_footprints

    deployments = Deployment.objects.filter(model__tenant=tenant).select_related("model")
    if excluding is not None:
        deployments = deployments.exclude(model=excluding)
    total_bytes = total_replicas = 0
    versions_by_model: dict[int, dict[str, ModelVersion]] = {}
    for version in ModelVersion.objects.filter(model__deployment__in=deployments):
        versions_by_model.setdefault(version.model_id, {})[str(version.number)] = version
    ids = [v.pk for by_number in versions_by_model.values() for v in by_number.values()]
    measured = measured_footprints(version_ids=ids, kind=kind)
    for deployment in deployments:
        size, count = deployment_need(
            versions=versions_by_model.get(deployment.model_id, {}),
            traffic=deployment.traffic,
            replicas=max(deployment.min_replicas, 1),
            measured=measured if deployment.device_kind == kind else None,
        )
        if deployment.device_kind == kind:
            total_bytes += size
        total_replicas += count
    return total_bytes, total_replicas


def deployment_replicas(*, deployment: Deployment) -> QuerySet[Replica]:
    """A deployment's replicas with their versions and workers."""
    return Replica.objects.filter(deployment=deployment).select_related("version", "worker")


def deployment_wanted(*, deployment: Deployment, replicas: list[Replica]) -> list[dict[str, Any]]:
    """Desired against actual per serving version: traffic, replicas wanted (the autoscaler's
    last decision, else the minimum) and replicas ready."""
    rows = []
    for version, weight in sorted(deployment.traffic.items(), key=lambda item: int(item[0])):
        if weight <= 0:
            continue
        wanted = (deployment.autoscale or {}).get(version, {}).get("replicas", deployment.min_replicas)
        ready = sum(1 for r in replicas if str(r.version.number) == version and r.state == Replica.State.READY)
        rows.append({"version": version, "weight": weight, "wanted": wanted, "ready": ready})
    return rows
