"""The reconcile loop: desired (deployments) vs actual (worker heartbeats) → worker commands.

One pass, under a lock (several control workers may run it): read the fleet and the
deployments, let ``placement.place`` decide, record the replicas, and send each worker the
load/unload commands its step needs, after commit. A replica moves ``pending → loading``
when its load command is sent (once), ``loading → ready|failed`` when the worker's
heartbeats say so, and back to ``pending`` (placed anew) when its worker dies or drains.
Commands are idempotent on the worker, so a repeated pass never does harm.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from celery import current_app
from django.conf import settings
from django.core.cache import cache
from django.db import transaction

from apps.deployments.autoscale import ScaleInput, replicas_wanted
from apps.deployments.models import Deployment, Replica, Worker
from apps.deployments.placement import Device, Placed, Quota, Wanted, place
from apps.registry.models import ModelVersion
from apps.registry.selectors import artifact_uri
from apps.tenants.models import Quota as TenantQuota
from inference_workers.types import LOAD_TASK, UNLOAD_TASK, BatchingConfig, LoadCommand, ModelKey, TensorSpec

log = logging.getLogger(__name__)

LOCK_KEY = "berth:reconcile-lock"
# A load that fails is tried this many times in all (each on another device when one has room).
MAX_LOAD_ATTEMPTS = 3
ORPHAN_RESEND_S = 10
LOCK_TTL_S = 30
AGAIN_KEY = "berth:reconcile-again"
MAX_AGAIN = 3  # passes asked for during passes: the beat's next pass covers any beyond
MiB = 1024**2


@dataclass(frozen=True)
class PassReport:
    """What one pass did (for logs and tests)."""

    loads: int
    unloads: int
    pending: int
    ready: int


def _key(replica: Replica) -> ModelKey:
    version = replica.version
    return ModelKey(tenant=version.model.tenant.slug, model=version.model.name, version=version.number)


def _load_command(replica: Replica, deployment: Deployment) -> LoadCommand:
    version = replica.version
    batching = dict(deployment.batching or {})
    if not version.batched:
        batching["max_batch_size"] = 0  # no batch dimension to stack on
    elif not batching.get("max_batch_size"):
        batching["max_batch_size"] = min(version.max_batch_size, 8)
    return LoadCommand(
        key=_key(replica),
        artifact_uri=artifact_uri(version=version),
        sha256=version.sha256,
        format=version.format,  # type: ignore[arg-type]
        batching=BatchingConfig.from_message(batching),
        reservation_bytes=replica.reserved_bytes,
        allow_evict=False,
        inputs=tuple(TensorSpec.from_message(spec) for spec in version.declared_inputs),
        outputs=tuple(TensorSpec.from_message(spec) for spec in version.declared_outputs),
    )


def _suspects_confirmed(replicas: list[Replica], workers: dict[int, Worker], now: float) -> None:
    """A worker a gateway could not reach, and silent since, is dead now (not 3 beats later)."""
    silent_s = settings.BERTH_HEARTBEAT_INTERVAL_S * 1.5
    for replica in replicas:
        worker = workers.get(replica.worker_id) if replica.worker_id else None
        if worker is None or replica.suspect_at is None or worker.state == Worker.State.DEAD:
            continue
        last_beat = worker.last_heartbeat_at.timestamp()
        if last_beat >= replica.suspect_at.timestamp() or now - last_beat <= silent_s:
            continue
        # Only if no heartbeat came in since it was read: a live worker is never marked dead.
        if Worker.objects.filter(pk=worker.pk, last_heartbeat_at=worker.last_heartbeat_at).update(
            state=Worker.State.DEAD
        ):
            log.warning("worker %s: unreachable from a gateway and silent for %.1f s; dead", worker, now - last_beat)
            worker.state = Worker.State.DEAD


def _load_failed(replica: Replica, worker: Worker, reason: str, now: float) -> tuple[str, str, dict[str, Any]]:
    """Records a failed load: retried with backoff on another device, failed for good after
    ``MAX_LOAD_ATTEMPTS``. Returns the unload that clears the failure from the worker."""
    key = _key(replica)
    replica.attempts += 1
    replica.failed_on = [*replica.failed_on, worker.worker_id]
    replica.worker = None
    if replica.attempts < MAX_LOAD_ATTEMPTS:
        delay = settings.BERTH_LOAD_RETRY_S * 2 ** (replica.attempts - 1)
        replica.state = Replica.State.PENDING
        replica.retry_at = datetime.fromtimestamp(now + delay, tz=UTC)
        replica.reason = (
            f"load failed on {worker.worker_id}: {reason}; try {replica.attempts + 1} of {MAX_LOAD_ATTEMPTS} "
            f"in {delay:g} s, on another device when there is one"
        )
    else:
        replica.state = Replica.State.FAILED
        replica.reason = f"load failed {replica.attempts} times (on {', '.join(replica.failed_on)}); last: {reason}"
    replica.save(update_fields=["attempts", "failed_on", "worker", "state", "retry_at", "reason"])
    log.warning("replica %s: %s", replica, replica.reason)
    return worker.queue, UNLOAD_TASK, key.__dict__


def _observe(replicas: list[Replica], workers: dict[int, Worker], now: float) -> list[tuple[str, str, dict[str, Any]]]:
    """Moves replicas along from what their workers report; returns the unloads that needs."""
    commands: list[tuple[str, str, dict[str, Any]]] = []
    for replica in replicas:
        worker = workers.get(replica.worker_id) if replica.worker_id else None
        if worker is not None and worker.state == Worker.State.DRAINING and replica.state == Replica.State.READY:
            # Make before break: it keeps serving while a replacement loads elsewhere.
            replica.retiring, replica.reason = True, f"moving off draining worker {worker.worker_id}"
            replica.save(update_fields=["retiring", "reason"])
            continue
        if replica.worker_id and (worker is None or worker.state != Worker.State.READY):
            replica.state, replica.worker, replica.reason = (
                Replica.State.PENDING,
                None,
                "its worker is gone or draining",
            )
            replica.save(update_fields=["state", "worker", "reason"])
            continue
        if worker is None or replica.state not in (Replica.State.LOADING, Replica.State.READY):
            continue
        key = _key(replica)
        hosted = next(
            (
                h
                for h in worker.hosted
                if (h["tenant"], h["model"], h["version"]) == (key.tenant, key.model, key.version)
            ),
            None,
        )
        since = replica.loading_since.timestamp() if replica.loading_since else 0.0
        if replica.state == Replica.State.LOADING and worker.last_heartbeat_at.timestamp() <= since:
            continue  # the heartbeat predates the load command: what it says is about an earlier load
        if hosted is None:
            if replica.state == Replica.State.READY:
                replica.state, replica.worker, replica.reason = Replica.State.PENDING, None, "its worker lost it"
                replica.save(update_fields=["state", "worker", "reason"])
            elif now - since > settings.BERTH_LOAD_TIMEOUT_S:
                commands.append(
                    _load_failed(
                        replica, worker, f"no word of the load within {settings.BERTH_LOAD_TIMEOUT_S:g} s", now
                    )
                )
            continue
        used = hosted.get("last_used_at") or 0.0
        if used and (replica.last_used_at is None or used > replica.last_used_at.timestamp() + 1):
            replica.last_used_at = datetime.fromtimestamp(used, tz=UTC)  # per replica, for LRU eviction
            replica.save(update_fields=["last_used_at"])
        if hosted["state"] == "ready" and replica.state != Replica.State.READY:
            replica.state, replica.reason = Replica.State.READY, ""
            replica.reserved_bytes = hosted["reserved_bytes"]
            replica.attempts, replica.failed_on = 0, []
            replica.save(update_fields=["state", "reason", "reserved_bytes", "attempts", "failed_on"])
        elif hosted["state"] == "failed" and replica.state == Replica.State.LOADING:
            commands.append(_load_failed(replica, worker, hosted.get("reason") or "the load failed", now))
    return commands


def _begin_unload(row: Replica, now: float) -> None:
    """Takes a replica out of routing; ``_retire`` unloads it after the grace period."""
    row.retiring, row.state = True, Replica.State.UNLOADING
    row.retry_at = datetime.fromtimestamp(now + settings.BERTH_UNLOAD_GRACE_S, tz=UTC)
    row.save(update_fields=["retiring", "state", "retry_at"])


def _retire(
    retiring: list[Replica], existing: dict[tuple[str, str, int, int], Replica], wanted: Any, now: float
) -> list[tuple[str, str, dict[str, Any]]]:
    """Retiring replicas: one on a draining worker serves until its replacement is ready, then
    leaves routing; one out of routing is unloaded once the grace period has passed (gateways
    re-read their tables within it, so no request is sent to a model being unloaded)."""
    commands: list[tuple[str, str, dict[str, Any]]] = []
    in_use = {
        (r.worker_id, _key(r))
        for r in existing.values()
        if r.worker_id is not None and r.pk is not None and not r.retiring
    }
    for row in retiring:
        replica_id = (row.version.model.tenant.slug, row.version.model.name, row.version.number, row.index)
        worker = row.worker
        if worker is None or worker.state == Worker.State.DEAD:
            row.delete()
            continue
        replacement = existing.get(replica_id)
        taken_back = row.state == Replica.State.READY and worker.state == Worker.State.READY and replica_id in wanted
        if taken_back and (
            replacement is None or (replacement.state == Replica.State.PENDING and replacement.worker is None)
        ):
            # Its worker was taken back (undrained) before a replacement was placed: keep it.
            if replacement is not None and replacement.pk is not None:
                replacement.delete()
            row.retiring, row.reason = False, ""
            row.save(update_fields=["retiring", "reason"])
            existing[replica_id] = row
            continue
        if row.state != Replica.State.UNLOADING:
            if replica_id in wanted and (replacement is None or replacement.state != Replica.State.READY):
                continue
            _begin_unload(row, now)
        if row.retry_at is not None and row.retry_at.timestamp() > now:
            continue
        if (worker.pk, _key(row)) in in_use:
            # A serving replica of the version is on the same worker: its row goes, the model stays.
            row.delete()
            continue
        commands.append((worker.queue, UNLOAD_TASK, _key(row).__dict__))
        log.info("replica %s unloaded from %s", row, worker.worker_id)
        row.delete()
    return commands


def orphan_unload_claim(worker_id: str, key: ModelKey) -> bool:
    """Claims the unload of ``key`` from a worker for ``ORPHAN_RESEND_S``: False when one was
    sent within it (by the orphan sweep, or by an undeploy), so it is not sent twice."""
    return bool(cache.add(f"berth:orphan:{worker_id}:{key.dataplane_name}:{key.version}", 1, ORPHAN_RESEND_S))


def _orphans(workers: dict[int, Worker]) -> list[tuple[str, str, dict[str, Any]]]:
    """Unloads what a live worker hosts that no replica row refers to (a worker marked dead by
    mistake that came back, a lost command); each at most once per ``ORPHAN_RESEND_S``."""
    referenced = set(
        Replica.objects.filter(worker__isnull=False).values_list(
            "worker_id", "version__model__tenant__slug", "version__model__name", "version__number"
        )
    )
    commands: list[tuple[str, str, dict[str, Any]]] = []
    for worker in workers.values():
        if worker.state == Worker.State.DEAD:
            continue
        for hosted in worker.hosted:
            key = ModelKey(tenant=hosted["tenant"], model=hosted["model"], version=hosted["version"])
            if (worker.pk, key.tenant, key.model, key.version) in referenced:
                continue
            if orphan_unload_claim(worker.worker_id, key):
                log.info("worker %s hosts %s, which no replica wants; unloading", worker.worker_id, key)
                commands.append((worker.queue, UNLOAD_TASK, key.__dict__))
    return commands


def _load_by_version(workers: dict[int, Worker]) -> dict[tuple[str, str, int], float]:
    """Requests in flight and queued per (tenant, model, version), from the live workers' heartbeats."""
    load: dict[tuple[str, str, int], float] = {}
    for worker in workers.values():
        if worker.state != Worker.State.READY:
            continue
        for hosted in worker.hosted:
            if hosted.get("state") == "ready":
                key = (hosted["tenant"], hosted["model"], hosted["version"])
                load[key] = load.get(key, 0.0) + hosted.get("inflight", 0) + hosted.get("queue_depth", 0)
    return load


def _scale(deployment: Deployment, number: int, load: dict[tuple[str, str, int], float], now: float) -> int:
    """Replicas the version wants now; remembers the decision on the deployment."""
    state = (deployment.autoscale or {}).get(str(number), {})
    last_request = deployment.last_request_at.timestamp() if deployment.last_request_at else None
    evicted_at = state.get("evicted_at")
    if evicted_at is not None and (last_request is None or last_request <= evicted_at):
        return 0  # evicted while idle to make room: at zero until a request asks for it again
    decision = replicas_wanted(
        ScaleInput(
            min_replicas=deployment.min_replicas,
            max_replicas=deployment.max_replicas,
            target_inflight_per_replica=deployment.target_inflight_per_replica,
            scale_to_zero_after_s=deployment.scale_to_zero_after_s,
            last_request_at=last_request,
            inflight=load.get((deployment.model.tenant.slug, deployment.model.name, number), 0.0),
            current=int(state.get("replicas", 0)),
            needed_at=state.get("needed_at"),
        ),
        now=now,
        stabilisation_s=settings.BERTH_SCALE_DOWN_STABILISATION_S,
    )
    remembered = {"replicas": decision.replicas, "needed_at": decision.needed_at}
    if state != remembered:
        if decision.replicas != state.get("replicas"):
            log.info("autoscale: %s version %d wants %d replicas", deployment.model, number, decision.replicas)
        Deployment.objects.filter(pk=deployment.pk).update(
            autoscale={**(deployment.autoscale or {}), str(number): remembered}
        )
        deployment.autoscale = {**(deployment.autoscale or {}), str(number): remembered}
    return decision.replicas


def _kept_indices(rows: list[Replica], count: int) -> list[int]:
    """Which replica indices a version keeps at ``count``: ready ones first, then loading,
    then the rest (lowest index first within each), then new indices; so scaling down drops
    pending and loading copies before ready ones."""
    rank: dict[str, int] = {Replica.State.READY: 0, Replica.State.LOADING: 1}
    ordered = sorted(rows, key=lambda r: (rank.get(r.state, 2), r.index))
    kept = [r.index for r in ordered[:count]]
    used = {r.index for r in rows}
    fresh = (index for index in range(count + len(rows)) if index not in used)
    while len(kept) < count:
        kept.append(next(fresh))
    return sorted(kept)


def _last_used(row: Replica) -> float:
    """When a replica last served: its own report, or its deployment's last request."""
    times = [t.timestamp() for t in (row.last_used_at, row.deployment.last_request_at) if t is not None]
    return max(times, default=0.0)


def _mark_evicted(deployment: Deployment, number: int, now: float) -> None:
    autoscale = {**(deployment.autoscale or {}), str(number): {"replicas": 0, "needed_at": None, "evicted_at": now}}
    Deployment.objects.filter(pk=deployment.pk).update(autoscale=autoscale)
    deployment.autoscale = autoscale


def reconcile_once(*, now: float | None = None) -> PassReport | None:
    """One reconcile pass; None when another pass holds the lock. A pass asked for while
    another runs is not lost: it marks ``AGAIN_KEY``, and the running pass, once committed,
    runs again (each change after the running pass read the database is then seen)."""
    token = uuid.uuid4().hex
    if not cache.add(LOCK_KEY, token, timeout=LOCK_TTL_S):
        cache.set(AGAIN_KEY, 1, timeout=LOCK_TTL_S)
        return None
    try:
        report = _reconcile(now or time.time())
        for _ in range(MAX_AGAIN):
            if not cache.delete(AGAIN_KEY):
                break
            report = _reconcile(now or time.time())
        return report
    finally:
        if cache.get(LOCK_KEY) == token:  # past its timeout the lock may be another pass's
            cache.delete(LOCK_KEY)


@transaction.atomic
def _reconcile(now: float) -> PassReport:
    workers = {w.pk: w for w in Worker.objects.all()}
    by_worker_id = {w.worker_id: w for w in workers.values()}
    deployments = list(Deployment.objects.select_related("model__tenant"))
    replicas = list(Replica.objects.select_related("version__model__tenant", "deployment", "worker"))
    _suspects_confirmed(replicas, workers, now)
    commands = _observe([r for r in replicas if not r.retiring], workers, now)
    retiring = [r for r in replicas if r.retiring]
    replicas = [r for r in replicas if not r.retiring]

    devices = [
        Device(
            device_id=w.worker_id,
            kind=w.device_kind,
            capacity_bytes=w.capacity_bytes,
            headroom_bytes=settings.BERTH_DEVICE_HEADROOM_MB.get(w.device_kind, 0) * MiB,
            schedulable=w.state == Worker.State.READY,
        )
        for w in workers.values()
        if w.state != Worker.State.DEAD
    ]
    versions = {
        (v.model_id, v.number): v
        for v in ModelVersion.objects.filter(model__deployment__in=deployments, status=ModelVersion.Status.READY)
    }
    wanted: list[Wanted] = []
    wanted_rows: dict[tuple[str, str, int, int], tuple[Deployment, ModelVersion, int]] = {}
    held = {  # failed for good, or waiting out a retry's backoff
        (r.version.model.tenant.slug, r.version.model.name, r.version.number, r.index): r
        for r in replicas
        if r.state == Replica.State.FAILED
        or (r.state == Replica.State.PENDING and r.retry_at is not None and r.retry_at.timestamp() > now)
    }
    avoid = {
        (r.version.model.tenant.slug, r.version.model.name, r.version.number, r.index): frozenset(r.failed_on)
        for r in replicas
        if r.failed_on
    }
    load = _load_by_version(workers)
    # What a ready replica of the version holds on a worker of the kind (the worker's own
    # measure, from its heartbeat) sizes the next one there; the registry's validation (on the
    # CPU, in a sandbox) only until one has loaded.
    measured: dict[tuple[int, str], int] = {}
    for r in replicas:
        if r.state == Replica.State.READY and r.worker is not None and not r.retiring and r.reserved_bytes > 0:
            key = (r.version_id, r.worker.device_kind)
            measured[key] = max(measured.get(key, 0), r.reserved_bytes)

    def footprint(version: ModelVersion, kind: str) -> int:
        return measured.get((version.pk, kind)) or version.footprint_bytes or 0

    by_version: dict[int, list[Replica]] = {}
    for r in replicas:
        if not r.retiring:
            by_version.setdefault(r.version_id, []).append(r)
    for deployment in deployments:
        for number, weight in sorted(deployment.traffic.items()):
            version = versions.get((deployment.model_id, int(number)))
            if version is None or weight <= 0:
                continue
            count = _scale(deployment, version.number, load, now)
            for index in _kept_indices(by_version.get(version.pk, []), count):
                replica_id = (deployment.model.tenant.slug, deployment.model.name, version.number, index)
                wanted_rows[replica_id] = (deployment, version, index)
                if replica_id in held:
                    continue  # failed for good (until the deployment changes), or in backoff
                wanted.append(
                    Wanted(
                        replica=replica_id,
                        footprint_bytes=footprint(version, deployment.device_kind),
                        kind=deployment.device_kind,
                        avoid=avoid.get(replica_id, frozenset()),
                        surplus=index >= max(deployment.min_replicas, 1),
                    )
                )
    existing = {(r.version.model.tenant.slug, r.version.model.name, r.version.number, r.index): r for r in replicas}
    placed = [
        Placed(
            replica=replica_id,
            device_id=row.worker.worker_id,
            reserved_bytes=row.reserved_bytes,
            last_used_at=_last_used(row),
            # A deployment that may scale to zero may lose an idle replica to one that must load.
            idle_evictable=row.deployment.scale_to_zero_after_s > 0,
        )
        for replica_id, row in existing.items()
        if row.worker is not None and row.state in (Replica.State.LOADING, Replica.State.READY)
    ] + [
        Placed(
            replica=(row.version.model.tenant.slug, row.version.model.name, row.version.number, -row.pk),
            device_id=row.worker.worker_id,
            reserved_bytes=row.reserved_bytes,
            pinned=True,
        )
        for row in retiring
        if row.worker is not None
    ]
    quotas = {
        quota.tenant.slug: Quota(
            memory_bytes={"cpu": quota.cpu_memory_mb * MiB, "cuda": quota.gpu_memory_mb * MiB},
            max_replicas=quota.max_replicas,
        )
        for quota in TenantQuota.objects.select_related("tenant")
    }
    plan = place(
        devices=devices,
        placed=placed,
        wanted=wanted,
        quotas=quotas,
        now=now,
        churn_guard_s=settings.BERTH_EVICT_CHURN_GUARD_S,
    )

    for replica_id, device_id in plan.evictions:
        # Idle past the churn guard: unloaded at once (before the load that needs its memory,
        # on the same worker's queue) and its version held at zero until asked for again.
        victim = existing.pop(replica_id)
        _mark_evicted(victim.deployment, victim.version.number, now)
        log.info("evicting idle %s from %s to make room", _key(victim), device_id)
        commands.append((by_worker_id[device_id].queue, UNLOAD_TASK, _key(victim).__dict__))
        victim.delete()

    for replica_id, device_id in plan.unloads:
        if replica_id in wanted_rows and device_id in by_worker_id:
            # Still wanted, but on another device kind: unload it here; it is placed anew.
            commands.append((by_worker_id[device_id].queue, UNLOAD_TASK, _key(existing[replica_id]).__dict__))
    for replica_id, device_id in plan.loads:
        deployment, version, index = wanted_rows[replica_id]
        worker = by_worker_id[device_id]
        row = existing.get(replica_id)
        if row is None:
            row = Replica(deployment=deployment, version=version, index=index)
        row.worker, row.state, row.reason, row.retry_at = worker, Replica.State.LOADING, "", None
        row.loading_since = datetime.fromtimestamp(now, tz=UTC)
        row.reserved_bytes = footprint(version, worker.device_kind)
        row.save()
        commands.append((worker.queue, LOAD_TASK, _load_command(row, deployment).to_message()))
    for replica_id, reason in plan.pending:
        deployment, version, index = wanted_rows[replica_id]
        row = existing.get(replica_id) or Replica(deployment=deployment, version=version, index=index)
        row.worker, row.state, row.reason = None, Replica.State.PENDING, reason
        row.save()
    unloaded = 0
    for replica_id, row in existing.items():
        if replica_id in wanted_rows:
            continue
        unloaded += 1
        if row.worker is not None and row.state == Replica.State.READY:
            # Out of routing first; unloaded once every gateway has stopped sending to it.
            _begin_unload(row, now)
            retiring.append(row)
            continue
        if row.worker is not None:
            commands.append((row.worker.queue, UNLOAD_TASK, _key(row).__dict__))
        row.delete()

    commands.extend(_retire(retiring, existing, wanted_rows, now))

    def send() -> None:
        for queue, task, message in commands:
            current_app.send_task(task, args=[message], queue=queue)

    # An unload sent in this pass is the orphan sweep's too: the worker's last heartbeat still
    # lists the model, so claim it here and the sweep does not send it again.
    worker_of_queue = {w.queue: w.worker_id for w in workers.values()}
    for queue, task, message in commands:
        if task == UNLOAD_TASK and queue in worker_of_queue:
            orphan_unload_claim(worker_of_queue[queue], ModelKey(**message))
    commands.extend(_orphans(workers))
    if commands:
        transaction.on_commit(send, robust=True)
    ready = sum(1 for r in existing.values() if r.state == Replica.State.READY)
    if commands:
        log.info("reconcile: %d loads, %d unloads, %d pending", len(plan.loads), unloaded, len(plan.pending))
    return PassReport(loads=len(plan.loads), unloads=unloaded, pending=len(plan.pending), ready=ready)
