"""Reads for the gateway: the routing snapshot, loaded in a few queries."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from apps.deployments.models import Deployment, Replica, Worker
from apps.gateway.admission import Limits
from apps.gateway.routing import LogRoute, ModelRoute, ReplicaRoute, RoutingSnapshot, TenantRoute, VersionRoute
from apps.registry.models import Model, ModelVersion
from apps.tenants.models import Quota, Tenant
from control_plane.compiled import CompiledQuery, Row

Rows = tuple[tuple[Row, ...], ...]  # one tuple of rows a query, in ``_QUERIES`` order


# The routing read's queries: rows of plain values, in an order with no ties (an unchanged
# table reads the same rows in the same order, whatever the database did to them since).
_QUERIES = (
    CompiledQuery(
        lambda: Tenant.objects.filter(active=True).values_list(
            "id", "slug", "quota__requests_per_second", "quota__max_concurrent_requests"
        )
    ),
    CompiledQuery(lambda: Model.objects.filter(tenant__active=True).values_list("id", "tenant_id", "name")),
    CompiledQuery(
        lambda: ModelVersion.objects.filter(model__tenant__active=True).values_list(
            "id", "model_id", "number", "status", "platform", "inputs", "outputs", "failure_reason"
        )
    ),
    CompiledQuery(lambda: Deployment.objects.order_by("id").values_list("id", "model_id", "traffic", "prediction_log")),
    CompiledQuery(
        lambda: Replica.objects.order_by("deployment_id", "version_id", "index", "id").values_list(
            "id", "version_id", "state", "reason", "worker__worker_id", "worker__dataplane_url", "worker__state"
        )
    ),
)


def _limits(rate: int | None, concurrent: int | None) -> Limits:
    # A tenant without a quota row has the defaults.
    if rate is None:
        rate = Quota._meta.get_field("requests_per_second").get_default()
    if concurrent is None:
        concurrent = Quota._meta.get_field("max_concurrent_requests").get_default()
    # One second's worth of burst: a client may send its rate all at once, not more.
    return Limits(rate_per_s=float(rate), burst=max(rate, 1), max_concurrent=concurrent)


def _log_route(config: dict[str, Any] | None) -> LogRoute | None:
    if not config or not config.get("sample_rate"):
        return None
    return LogRoute(sample_rate=float(config["sample_rate"]), retention_days=int(config.get("retention_days", 7)))


def routing_snapshot_load(*, previous: RoutingSnapshot | None = None, using: str = "default") -> RoutingSnapshot:
    """What the gateway routes by: active tenants, their models, versions, ready replicas.

    Args:
        previous: The snapshot in use. When the rows read equal those it was built from, it
            is returned with this read's time and nothing is built again (the gateway reads
            twice a second; the table seldom changes between two reads). Rows compare as
            Python values: a JSON column rewritten to an equal value (keys reordered, ``1``
            for ``1.0``) keeps the snapshot.
        using: The database alias.
    """
    rows: Rows = tuple(tuple(query.rows(using=using)) for query in _QUERIES)
    if previous is not None and previous.source == rows:
        return dataclasses.replace(previous, loaded_at=time.monotonic())
    tenant_rows, model_rows, version_rows, deployment_rows, replica_rows = rows

    versions: dict[int, list[Row]] = {}
    for version_row in version_rows:
        versions.setdefault(version_row[1], []).append(version_row)
    deployments = {row[1]: row for row in deployment_rows}
    replicas: dict[int, list[Row]] = {}
    for replica_row in replica_rows:
        replicas.setdefault(replica_row[1], []).append(replica_row)

    def version_route(row: Row) -> VersionRoute:
        version_id, _, number, status, platform, inputs, outputs, failure_reason = row
        on_version = replicas.get(version_id, [])
        ready = tuple(
            ReplicaRoute(replica_id=replica_id, worker_id=worker_id, url=url)
            for replica_id, _, state, _, worker_id, url, worker_state in on_version
            # A draining worker's replicas serve until their replacements are ready.
            if state == Replica.State.READY and worker_state in (Worker.State.READY, Worker.State.DRAINING)
        )
        return VersionRoute(
            number=number,
            status=status,
            platform=platform,
            inputs=tuple(inputs or ()),
            outputs=tuple(outputs or ()),
            replicas=ready,
            loading=any(r[2] in (Replica.State.PENDING, Replica.State.LOADING) for r in on_version),
            reason=failure_reason or next((r[3] for r in on_version if r[3]), ""),
        )

    slugs = {row[0]: row[1] for row in tenant_rows}
    by_tenant: dict[int, dict[str, ModelRoute]] = {}
    for model_id, tenant_id, name in model_rows:
        deployment = deployments.get(model_id)
        traffic = tuple(sorted((int(v), int(w)) for v, w in deployment[2].items() if int(w) > 0)) if deployment else ()
        by_tenant.setdefault(tenant_id, {})[name] = ModelRoute(
            tenant_slug=slugs.get(tenant_id, ""),
            name=name,
            model_id=model_id,
            deployment_id=deployment[0] if deployment else None,
            versions={row[2]: version_route(row) for row in versions.get(model_id, [])},
            traffic=traffic,
            log=_log_route(deployment[3]) if deployment else None,
        )
    routes = {
        tenant_id: TenantRoute(
            tenant_id=tenant_id, slug=slug, limits=_limits(rate, concurrent), models=by_tenant.get(tenant_id, {})
        )
        for tenant_id, slug, rate, concurrent in tenant_rows
    }
    return RoutingSnapshot(tenants=routes, loaded_at=time.monotonic(), source=rows)
