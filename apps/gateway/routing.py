"""The gateway's routing table and its choices, as plain data (no Django).

The table is a snapshot of what the control plane knows: each tenant's limits and
models, each model's deployment (traffic split) and versions, and each version's ready
replicas. ``selectors.routing_snapshot_load`` builds it from the database; the gateway
swaps in a new one every refresh, so a request reads one consistent snapshot.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from apps.gateway.admission import Limits


@dataclass(frozen=True)
class ReplicaRoute:
    """A ready replica: where its worker's data plane listens."""

    replica_id: int
    worker_id: str
    url: str


@dataclass(frozen=True)
class VersionRoute:
    """A version of a model as the gateway serves and describes it."""

    number: int
    status: str  # the registry's status (ready, validating, failed, ...)
    platform: str
    inputs: tuple[dict[str, object], ...]
    outputs: tuple[dict[str, object], ...]
    replicas: tuple[ReplicaRoute, ...] = ()
    loading: bool = False  # a replica is being loaded
    reason: str = ""  # why no replica is ready (pending placement, failed load)


@dataclass(frozen=True)
class LogRoute:
    """A deployment's prediction logging: the share of answered requests kept, and how long."""

    sample_rate: float
    retention_days: int


@dataclass(frozen=True)
class ModelRoute:
    """A tenant's model: its versions and, when deployed, its traffic split."""

    tenant_slug: str
    name: str
    model_id: int
    deployment_id: int | None
    versions: Mapping[int, VersionRoute]
    traffic: tuple[tuple[int, int], ...] = ()  # (version, weight > 0), weights sum to 100
    log: LogRoute | None = None  # prediction logging, when the deployment opted in

    def pick_version(self, draw: float) -> int:
        """The version a request goes to for ``draw`` in [0, 1): weighted by the traffic split."""
        bounds: list[int] = []
        total = 0
        for _, weight in self.traffic:
            total += weight
            bounds.append(total)
        index = bisect.bisect_right(bounds, draw * total)
        return self.traffic[min(index, len(self.traffic) - 1)][0]


@dataclass(frozen=True)
class TenantRoute:
    """A tenant's limits and models."""

    tenant_id: int
    slug: str
    limits: Limits
    models: Mapping[str, ModelRoute] = field(default_factory=dict)


@dataclass(frozen=True)
class RoutingSnapshot:
    """Everything the gateway routes by, at one moment."""

    tenants: Mapping[int, TenantRoute]
    loaded_at: float
    # The database rows it was built from (``selectors.routing_snapshot_load`` compares a new
    # read with them and keeps this snapshot when nothing changed); empty when built otherwise.
    source: tuple[object, ...] = field(default=(), repr=False, compare=False)


def replica_choose(
    replicas: tuple[ReplicaRoute, ...],
    outstanding: Mapping[int, int],
    *,
    exclude: frozenset[str] = frozenset(),
    rng: random.Random | None = None,
) -> ReplicaRoute | None:
    """Least outstanding requests by the power of two choices.

    Two replicas drawn at random, the one with fewer requests in flight from this gateway
    wins (ties to the first drawn). Replicas on workers in ``exclude`` (suspect, or just
    failed) are skipped; None when none is left.
    """
    candidates = [r for r in replicas if r.worker_id not in exclude] if exclude else list(replicas)
    if not candidates:
        return None
    if len(candidates) == 1:
        return candidates[0]
    draw = rng or random
    first, second = draw.sample(candidates, 2)
    return second if outstanding.get(second.replica_id, 0) < outstanding.get(first.replica_id, 0) else first
