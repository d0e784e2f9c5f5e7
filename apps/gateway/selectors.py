"""Reads for the gateway: the routing snapshot, loaded in a few queries."""

from __future__ import annotations

import time
from typing import Any

from apps.deployments.models import Deployment, Replica, Worker
from apps.gateway.admission import Limits
from apps.gateway.routing import LogRoute, ModelRoute, ReplicaRoute, RoutingSnapshot, TenantRoute, VersionRoute
from apps.registry.models import Model, ModelVersion
from apps.tenants.models import Quota, Tenant


def _limits(quota: Quota | None) -> Limits:
    quota = quota or Quota()
    rate = quota.requests_per_second
    # One second's worth of burst: a client may send its rate all at once, not more.
    return Limits(rate_per_s=float(rate), burst=max(rate, 1), max_concurrent=quota.max_concurrent_requests)


def _log_route(config: dict[str, Any] | None) -> LogRoute | None:
    if not config or not config.get("sample_rate"):
        return None
    return LogRoute(sample_rate=float(config["sample_rate"]), retention_days=int(config.get("retention_days", 7)))


def routing_snapshot_load() -> RoutingSnapshot:
    """What the gateway routes by: active tenants, their models, versions, ready replicas."""
    tenants = list(Tenant.objects.filter(active=True).select_related("quota"))
    models = list(Model.objects.filter(tenant__active=True).values("id", "tenant_id", "name"))
    versions: dict[int, list[dict[str, Any]]] = {}
    for version_row in ModelVersion.objects.filter(model__tenant__active=True).values(
        "id", "model_id", "number", "status", "platform", "inputs", "outputs", "failure_reason"
    ):
        versions.setdefault(version_row["model_id"], []).append(dict(version_row))
    deployments = {
        row["model_id"]: row for row in Deployment.objects.values("id", "model_id", "traffic", "prediction_log")
    }
    replicas: dict[int, list[dict[str, Any]]] = {}
    for replica_row in Replica.objects.values(
        "id", "version_id", "state", "reason", "worker__worker_id", "worker__dataplane_url", "worker__state"
    ):
        replicas.setdefault(replica_row["version_id"], []).append(dict(replica_row))

    def version_route(row: dict[str, Any]) -> VersionRoute:
        rows = replicas.get(row["id"], [])
        ready = tuple(
            ReplicaRoute(replica_id=r["id"], worker_id=r["worker__worker_id"], url=r["worker__dataplane_url"])
            for r in rows
            # A draining worker's replicas serve until their replacements are ready.
            if r["state"] == Replica.State.READY and r["worker__state"] in (Worker.State.READY, Worker.State.DRAINING)
        )
        return VersionRoute(
            number=row["number"],
            status=row["status"],
            platform=row["platform"],
            inputs=tuple(row["inputs"] or ()),
            outputs=tuple(row["outputs"] or ()),
            replicas=ready,
            loading=any(r["state"] in (Replica.State.PENDING, Replica.State.LOADING) for r in rows),
            reason=row["failure_reason"] or next((r["reason"] for r in rows if r["reason"]), ""),
        )

    slugs = {tenant.pk: tenant.slug for tenant in tenants}
    by_tenant: dict[int, dict[str, ModelRoute]] = {}
    for model in models:
        deployment = deployments.get(model["id"])
        traffic = (
            tuple(sorted((int(v), int(w)) for v, w in deployment["traffic"].items() if int(w) > 0))
            if deployment
            else ()
        )
        by_tenant.setdefault(model["tenant_id"], {})[model["name"]] = ModelRoute(
            tenant_slug=slugs.get(model["tenant_id"], ""),
            name=model["name"],
            model_id=model["id"],
            deployment_id=deployment["id"] if deployment else None,
            versions={row["number"]: version_route(row) for row in versions.get(model["id"], [])},
            traffic=traffic,
            log=_log_route(deployment["prediction_log"]) if deployment else None,
        )
    routes = {
        tenant.pk: TenantRoute(
            tenant_id=tenant.pk,
            slug=tenant.slug,
            limits=_limits(getattr(tenant, "quota", None)),
            models=by_tenant.get(tenant.pk, {}),
        )
        for tenant in tenants
    }
    return RoutingSnapshot(tenants=routes, loaded_at=time.monotonic())
