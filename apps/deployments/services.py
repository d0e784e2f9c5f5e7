"""Writes on workers (registration from heartbeats, marking silent ones dead) and deployments."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from apps.deployments.models import Deployment, Replica, Worker
from apps.registry.models import Model, ModelVersion
from apps.tenants.access import Actor
from apps.tenants.models import Tenant
from apps.tenants.selectors import quota_get
from apps.tenants.services import audit_event_create
from control_plane.errors import ApplicationError, ConflictError
from inference_workers.types import UNLOAD_TASK, BatchingConfig, MessageError, WorkerHeartbeat

log = logging.getLogger(__name__)

# The control task that sends an undeployed model's unloads (apps/deployments/tasks.py).
UNDEPLOY_UNLOADS_TASK = "berth.undeploy_unloads"


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
        # Delivered late: its state is stale, but its batch window is its own (windows never
        # overlap), so its batches still count; the idle time it covered was charged already.
        _record_batches(heartbeat, since=None, sample=False)
        return worker
    device = heartbeat.device
    state: str = heartbeat.state
    if worker is not None and worker.drain_requested_at is not None and state == Worker.State.READY:
        state = Worker.State.DRAINING  # staff drained it: the control plane's word holds
    heartbeat_hosted = [
        {
            "tenant": model.key.tenant,
            "model": model.key.model,
            "version": model.key.version,
            "state": model.state,
            "reserved_bytes": model.reserved_bytes,
            "measured_bytes": model.measured_bytes,
            "reason": model.reason,
            "inflight": model.inflight,
            "queue_depth": model.queue_depth,
            "p50_ms": model.p50_ms,
            "p99_ms": model.p99_ms,
            "last_used_at": model.last_used_at,
        }
        for model in heartbeat.models
    ]
    fields = {
        "host": heartbeat.host,
        "dataplane_url": heartbeat.dataplane_url,
        "queue": heartbeat.queue,
        "state": state,
        "device_kind": device.kind,
        "device_index": device.index,
        "device_name": device.name,
        "device_uuid": device.uuid,
        "capacity_bytes": device.total_bytes,
        "used_bytes": device.used_bytes,
        "utilisation_pct": device.utilisation_pct,
        "reserved_bytes": sum(model.reserved_bytes for model in heartbeat.models if model.state != "failed"),
        "hosted": heartbeat_hosted,
        "last_heartbeat_at": seen_at,
    }
    if worker is None:
        try:
            with transaction.atomic():
                created = Worker.objects.create(worker_id=heartbeat.worker_id, **fields)
            _record_batches(heartbeat, since=None)
            _reconcile_after_commit()  # a new device: pending replicas may fit now
            return created
        except IntegrityError:
            # Two first heartbeats raced; the other one registered the worker.
            worker = Worker.objects.select_for_update().get(worker_id=heartbeat.worker_id)
            if worker.last_heartbeat_at >= seen_at:
                _record_batches(heartbeat, since=None, sample=False)  # its batches are its own
                return worker
    previous = worker.last_heartbeat_at
    # A model loaded, failed or gone, or the worker's own state changed: the next pass acts on
    # it now rather than at the next beat; a heartbeat that changes nothing of that triggers none.
    if worker.state != state or _hosted_states(worker.hosted) != _hosted_states(heartbeat_hosted):
        _reconcile_after_commit()
    for name, value in fields.items():
        setattr(worker, name, value)
    worker.save(update_fields=list(fields))
    _record_batches(heartbeat, since=previous)
    return worker


def _hosted_states(hosted: list[dict[str, Any]]) -> set[tuple[str, str, int, str]]:
    return {(h["tenant"], h["model"], h["version"], h["state"]) for h in hosted}


def _record_batches(heartbeat: WorkerHeartbeat, *, since: datetime | None, sample: bool = True) -> None:
    """Stores the heartbeat's batch windows, the cost of the device time since the previous
    heartbeat (``since``; none for a worker's first) and a sample of its device."""
    from apps.monitoring.services import rollups_record_worker

    rollups_record_worker(heartbeat=heartbeat, since=since, sample=sample)


# A worker this late with a heartbeat has its data plane probed (a TCP connect).
PROBE_AFTER_INTERVALS = 1.1
PROBE_TIMEOUT_S = 0.3


def dataplane_refuses(url: str, *, tries: int = 2, pause_s: float = 0.3) -> bool:
    """True when nothing listens at the data-plane ``url``: ``tries`` connections, ``pause_s``
    apart, each refused.

    The kernel accepts a connection on a listening socket even while its process is too busy
    to answer, so a refusal means the worker's process (or its server) is gone; a timeout or
    an unreachable host proves nothing and is False. This holds when the URL reaches the
    worker itself (its own host and port, as the gateways use it), not a proxy in front.
    """
    parts = urlsplit(url)
    if not parts.hostname:
        return False
    for attempt in range(tries):
        if attempt:
            time.sleep(pause_s)
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            with socket.create_connection((parts.hostname, port), timeout=PROBE_TIMEOUT_S):
                return False
        except ConnectionRefusedError:
            continue
        except (OSError, ValueError):
            return False
    return True


def worker_mark_missing(
    *, now: datetime, interval_s: float, missed: int, refuses: Callable[[str], bool] = dataplane_refuses
) -> int:
    """Marks dead every worker that has missed ``missed`` heartbeats, and sooner each one
    late by ``PROBE_AFTER_INTERVALS`` whose data plane ``refuses`` connections (a killed
    worker is found in seconds, not after three beats; a worker the broker cannot reach,
    still serving, is not). Returns how many."""
    cutoff = now - timedelta(seconds=interval_s * missed)
    dead = (
        Worker.objects.filter(last_heartbeat_at__lt=cutoff)
        .exclude(state=Worker.State.DEAD)
        .update(state=Worker.State.DEAD)
    )
    late = list(
        Worker.objects.filter(last_heartbeat_at__lt=now - timedelta(seconds=interval_s * PROBE_AFTER_INTERVALS))
        .exclude(state=Worker.State.DEAD)
        .only("pk", "worker_id", "dataplane_url", "last_heartbeat_at")
    )
    if late:
        with ThreadPoolExecutor(max_workers=min(8, len(late))) as pool:
            refused = list(pool.map(lambda worker: refuses(worker.dataplane_url), late))
        for worker, gone in zip(late, refused, strict=True):
            # Only if no heartbeat came in meanwhile: a worker that just spoke is not dead.
            if gone and Worker.objects.filter(pk=worker.pk, last_heartbeat_at=worker.last_heartbeat_at).exclude(
                state=Worker.State.DEAD
            ).update(state=Worker.State.DEAD):
                log.warning(
                    "worker %s: silent for %.1f s and its data plane %s refuses connections; dead",
                    worker.worker_id,
                    (now - worker.last_heartbeat_at).total_seconds(),
                    worker.dataplane_url,
                )
                dead += 1
    if dead:
        _reconcile_after_commit()  # its replicas are placed elsewhere now, not at the next beat
    return dead


@transaction.atomic
def worker_drain(*, actor: Actor, worker: Worker, drain: bool = True) -> Worker:
    """Drains a worker (staff): no new replicas go there, and each of its replicas moves to
    another worker, serving here until its replacement is ready. ``drain=False`` undoes it."""
    worker = Worker.objects.select_for_update().get(pk=worker.pk)
    if drain:
        worker.drain_requested_at = worker.drain_requested_at or timezone.now()
        if worker.state == Worker.State.READY:
            worker.state = Worker.State.DRAINING
    else:
        worker.drain_requested_at = None
        if worker.state == Worker.State.DRAINING:
            worker.state = Worker.State.READY
    worker.save(update_fields=["drain_requested_at", "state"])
    audit_event_create(
        actor=actor,
        tenant=None,
        action="worker.drain" if drain else "worker.undrain",
        target=worker.worker_id,
        details={},
    )
    _reconcile_after_commit()
    return worker


# Deployments ----------------------------------------------------------------------------

MiB = 1024**2


@dataclass(frozen=True)
class DeploymentSpec:
    """What a PUT or PATCH asks for (validated by ``deployment_put``)."""

    traffic: dict[str, int]
    batching: dict[str, Any]
    min_replicas: int
    max_replicas: int
    target_inflight_per_replica: int
    scale_to_zero_after_s: int
    device_kind: str
    prediction_log: dict[str, Any] = field(default_factory=dict)


PREDICTION_LOG_MAX_RETENTION_DAYS = 90


def prediction_log_config(raw: dict[str, Any], *, versions: dict[str, ModelVersion]) -> dict[str, Any]:
    """Checks a deployment's prediction logging and fills in defaults: ``sample_rate`` (0-1,
    0 = off), ``retention_days`` (1-90, default 7), ``task`` (``classification`` or
    ``regression``, how feedback is scored) and ``output`` (the output scored; default the
    first). Empty means off."""
    if not raw:
        return {}
    unknown = sorted(set(raw) - {"sample_rate", "retention_days", "task", "output"})
    if unknown:
        raise ApplicationError(
            f"prediction_log has no {', '.join(unknown)}; it takes sample_rate, retention_days, task, output",
            field_errors={"prediction_log": [f"unknown: {', '.join(unknown)}"]},
        )

    def refuse(message: str) -> ApplicationError:
        return ApplicationError(f"prediction_log: {message}", field_errors={"prediction_log": [message]})

    rate = raw.get("sample_rate", 1.0)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
        raise refuse("sample_rate is a number from 0 to 1")
    days = raw.get("retention_days", 7)
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= PREDICTION_LOG_MAX_RETENTION_DAYS:
        raise refuse(f"retention_days is a whole number from 1 to {PREDICTION_LOG_MAX_RETENTION_DAYS}")
    task = raw.get("task", "classification")
    if task not in ("classification", "regression"):
        raise refuse("task is classification or regression")
    output = raw.get("output")
    if output is not None:
        for key, version in versions.items():
            names = [spec.get("name") for spec in version.outputs or []]
            if output not in names:
                raise refuse(f"version {key} has no output '{output}' (it has {names})")
    config = {"sample_rate": float(rate), "retention_days": days, "task": task}
    if output is not None:
        config["output"] = output
    return config


def _versions_for(model: Model, traffic: dict[str, int]) -> dict[str, ModelVersion]:
    if not traffic:
        raise ApplicationError("traffic needs at least one version", field_errors={"traffic": ['e.g. {"1": 100}']})
    bad = [key for key, weight in traffic.items() if not key.isdigit() or not isinstance(weight, int) or weight < 0]
    if bad or sum(traffic.values()) != 100:
        raise ApplicationError(
            "traffic maps version numbers to whole-number weights that sum to 100",
            field_errors={"traffic": [f"got {traffic} (sum {sum(w for w in traffic.values() if isinstance(w, int))})"]},
        )
    versions = {
        str(v.number): v for v in ModelVersion.objects.filter(model=model, number__in=[int(k) for k in traffic])
    }
    for key in traffic:
        version = versions.get(key)
        if version is None:
            raise ApplicationError(
                f"model '{model.name}' has no version {key}", field_errors={"traffic": [f"no version {key}"]}
            )
        if version.status != ModelVersion.Status.READY:
            raise ApplicationError(
                f"version {key} is {version.status}; only validated (ready) versions can serve",
                field_errors={"traffic": [f"version {key} is {version.status}"]},
            )
    return versions


def _check_spec(model: Model, spec: DeploymentSpec) -> dict[str, ModelVersion]:
    versions = _versions_for(model, spec.traffic)
    if spec.device_kind not in Deployment.DeviceKind.values:
        raise ApplicationError("device_kind is cpu or cuda", field_errors={"device_kind": ["cpu or cuda"]})
    if spec.min_replicas > spec.max_replicas:
        raise ApplicationError(
            "min_replicas is over max_replicas", field_errors={"min_replicas": ["at most max_replicas"]}
        )
    try:
        batching = BatchingConfig.from_message(spec.batching)
    except MessageError as exc:
        raise ApplicationError(f"batching: {exc}", field_errors={"batching": [str(exc)]}) from None
    for key, version in versions.items():
        if version.batched and batching.max_batch_size > version.max_batch_size:
            raise ApplicationError(
                f"batching.max_batch_size {batching.max_batch_size} is over version {key}'s validated "
                f"{version.max_batch_size}",
                field_errors={"batching": [f"max_batch_size at most {version.max_batch_size}"]},
            )
    prediction_log_config(spec.prediction_log, versions=versions)
    return versions


def deployment_need(
    *, versions: dict[str, ModelVersion], traffic: dict[str, int], replicas: int, measured: dict[int, int] | None = None
) -> tuple[int, int]:
    """(bytes, replicas) a deployment holds at ``replicas`` per serving version, each sized as
    placement sizes it: ``measured`` (by version id, what a ready replica holds on the
    deployment's device kind), else the registry's validation footprint."""
    serving = [versions[key] for key, weight in traffic.items() if weight > 0 and key in versions]
    sizes = [(measured or {}).get(v.pk) or v.footprint_bytes or 0 for v in serving]
    return sum(size * replicas for size in sizes), replicas * len(serving)


def measured_footprints(*, version_ids: list[int], kind: str) -> dict[int, int]:
    """What a ready replica of each version holds on a worker of ``kind`` (the largest, as
    the worker measured it), for the versions that have one: the size the reconcile pass
    gives the next replica there, so the quota check and placement agree."""
    rows = (
        Replica.objects.filter(
            version_id__in=version_ids,
            state=Replica.State.READY,
            retiring=False,
            worker__device_kind=kind,
            reserved_bytes__gt=0,
        )
        .values("version_id")
        .annotate(size=Max("reserved_bytes"))
    )
    return {row["version_id"]: row["size"] for row in rows}


def _check_quota(*, tenant: Tenant, model: Model, spec: DeploymentSpec, versions: dict[str, ModelVersion]) -> None:
    from apps.deployments.selectors import tenant_deployment_usage

    quota = quota_get(tenant=tenant)
    # A deployment holds at least one replica while in use, whatever its min_replicas says.
    need_bytes, need_replicas = deployment_need(
        versions=versions,
        traffic=spec.traffic,
        replicas=max(spec.min_replicas, 1),
        measured=measured_footprints(version_ids=[v.pk for v in versions.values()], kind=spec.device_kind),
    )
    used_bytes, used_replicas = tenant_deployment_usage(tenant=tenant, kind=spec.device_kind, excluding=model)
    limit_mb = quota.gpu_memory_mb if spec.device_kind == "cuda" else quota.cpu_memory_mb
    left = limit_mb * MiB - used_bytes
    if need_bytes > left:
        raise ConflictError(
            f"this deployment needs {need_bytes / MiB:.0f} MiB of {spec.device_kind} memory for {need_replicas} "
            f"replicas (measured footprints x min_replicas); tenant '{tenant.slug}' has {max(left, 0) / MiB:.0f} "
            f"MiB left of its {limit_mb} MiB ({'gpu' if spec.device_kind == 'cuda' else 'cpu'}_memory_mb)"
        )
    if used_replicas + need_replicas > quota.max_replicas:
        raise ConflictError(
            f"this deployment needs {need_replicas} replicas; tenant '{tenant.slug}' has "
            f"{max(quota.max_replicas - used_replicas, 0)} left of its max_replicas {quota.max_replicas}"
        )


SCALING_FIELDS = ("min_replicas", "max_replicas", "target_inflight_per_replica", "scale_to_zero_after_s", "device_kind")


def _autoscale_kept(current: Deployment | None, spec: DeploymentSpec) -> dict[str, Any]:
    """The autoscaler's memory per version after a change: a change of scaling applies now (no
    stabilisation holds the old count), while a change of traffic alone (a canary step) keeps
    what the versions still in traffic had, so a scale-down held in its window stays held."""
    if current is None or any(getattr(current, name) != getattr(spec, name) for name in SCALING_FIELDS):
        return {}
    return {number: state for number, state in (current.autoscale or {}).items() if number in spec.traffic}


@transaction.atomic
def deployment_put(*, actor: Actor, model: Model, spec: DeploymentSpec) -> Deployment:
    """Creates or replaces a model's deployment (refused with 409 past the tenant's quota)."""
    Tenant.objects.select_for_update().filter(pk=model.tenant_id).first()  # one quota check at a time
    versions = _check_spec(model, spec)
    _check_quota(tenant=model.tenant, model=model, spec=spec, versions=versions)
    current = Deployment.objects.filter(model=model).first()
    deployment, created = Deployment.objects.update_or_create(
        model=model,
        defaults={
            "stable_version": _stable_after(spec.traffic, current.stable_version if current else None),
            "traffic": spec.traffic,
            "batching": spec.batching,
            "min_replicas": spec.min_replicas,
            "max_replicas": spec.max_replicas,
            "target_inflight_per_replica": spec.target_inflight_per_replica,
            "scale_to_zero_after_s": spec.scale_to_zero_after_s,
            "device_kind": spec.device_kind,
            "prediction_log": prediction_log_config(spec.prediction_log, versions=versions),
            "autoscale": _autoscale_kept(current, spec),
        },
    )
    # A failed replica is tried again when its deployment changes.
    Replica.objects.filter(deployment=deployment, state=Replica.State.FAILED).delete()
    _reconcile_after_commit()
    audit_event_create(
        actor=actor,
        tenant=model.tenant,
        action="deployment.create" if created else "deployment.update",
        target=model.name,
        details={"traffic": spec.traffic, "min_replicas": spec.min_replicas, "max_replicas": spec.max_replicas},
    )
    return deployment


def _stable_after(traffic: dict[str, int], stable: int | None) -> int:
    """The stable version once ``traffic`` applies: the one at 100 %, else the stable one
    while it still has traffic, else the one with the most (the lowest number on a tie)."""
    serving = {int(v): w for v, w in traffic.items() if w > 0}
    if len(serving) == 1:
        return next(iter(serving))
    if stable is not None and stable in serving:
        return stable
    return min(serving, key=lambda v: (-serving[v], v))


def deployment_stable_version(deployment: Deployment) -> int:
    """The version a canary is measured against (and rolled back to)."""
    return _stable_after(deployment.traffic, deployment.stable_version)


def _with_traffic(deployment: Deployment, traffic: dict[str, int]) -> DeploymentSpec:
    return DeploymentSpec(**{**deployment_spec_of(deployment).__dict__, "traffic": traffic})


def _locked(deployment: Deployment) -> Deployment:
    """The deployment re-read under a row lock: canary steps read the traffic they change."""
    return Deployment.objects.select_for_update().select_related("model__tenant").get(pk=deployment.pk)


@transaction.atomic
def deployment_canary(*, actor: Actor, deployment: Deployment, version: int, percent: int) -> Deployment:
    """Sends ``percent`` % of the traffic to ``version`` and the rest to the stable version
    (any third version's share goes back to the stable one)."""
    deployment = _locked(deployment)
    stable = deployment_stable_version(deployment)
    if version == stable:
        raise ApplicationError(
            f"v{version} is the stable version; choose another one to canary",
            field_errors={"version": ["choose a version other than the stable one"]},
        )
    if not 0 <= percent <= 100:
        raise ApplicationError("percent is 0 to 100", field_errors={"percent": ["0 to 100"]})
    traffic = {key: weight for key, weight in ((str(stable), 100 - percent), (str(version), percent)) if weight}
    return deployment_put(actor=actor, model=deployment.model, spec=_with_traffic(deployment, traffic))


@transaction.atomic
def deployment_promote(*, actor: Actor, deployment: Deployment, version: int | None = None) -> Deployment:
    """Sends all traffic to the canary (or ``version``), which becomes the stable version."""
    deployment = _locked(deployment)
    stable = deployment_stable_version(deployment)
    if version is None:
        canaries = sorted(int(v) for v, w in deployment.traffic.items() if w > 0 and int(v) != stable)
        if not canaries:
            raise ConflictError(f"no canary to promote: all traffic already goes to v{stable}")
        version = canaries[-1]
    return deployment_put(actor=actor, model=deployment.model, spec=_with_traffic(deployment, {str(version): 100}))


@transaction.atomic
def deployment_rollback(*, actor: Actor, deployment: Deployment) -> Deployment:
    """Sends all traffic back to the stable version."""
    deployment = _locked(deployment)
    stable = deployment_stable_version(deployment)
    if {key: weight for key, weight in deployment.traffic.items() if weight} == {str(stable): 100}:
        raise ConflictError(f"nothing to roll back: all traffic already goes to v{stable}")
    return deployment_put(actor=actor, model=deployment.model, spec=_with_traffic(deployment, {str(stable): 100}))


def deployment_spec_of(deployment: Deployment) -> DeploymentSpec:
    """The spec a deployment holds now (the base a PATCH changes)."""
    return DeploymentSpec(
        traffic=dict(deployment.traffic),
        batching=dict(deployment.batching),
        min_replicas=deployment.min_replicas,
        max_replicas=deployment.max_replicas,
        target_inflight_per_replica=deployment.target_inflight_per_replica,
        scale_to_zero_after_s=deployment.scale_to_zero_after_s,
        device_kind=deployment.device_kind,
        prediction_log=dict(deployment.prediction_log),
    )


@transaction.atomic
def deployment_delete(*, actor: Actor, deployment: Deployment) -> None:
    """Undeploys a model. Its replicas' unloads go, once the delete commits, to the control
    worker (``berth.undeploy_unloads``), which sends each to its worker once."""
    model = deployment.model
    from inference_workers.types import ModelKey

    unload = [
        (
            replica.worker.worker_id,
            replica.worker.queue,
            ModelKey(model.tenant.slug, model.name, replica.version.number),
        )
        for replica in deployment.replicas.select_related("worker", "version")
        if replica.worker is not None
    ]
    deployment.delete()
    audit_event_create(actor=actor, tenant=model.tenant, action="deployment.delete", target=model.name)
    _reconcile_after_commit()  # what it held is free: replicas pending for room may fit now
    if not unload:
        return

    def send() -> None:
        from celery import current_app
        from django.conf import settings

        # Sent by the control worker, not from here: its claims are the ones the orphan sweep
        # (in the same process) sees, also with the embedded defaults' per-process cache.
        message = [{"worker_id": worker_id, "queue": queue, "key": key.__dict__} for worker_id, queue, key in unload]
        current_app.send_task(UNDEPLOY_UNLOADS_TASK, args=[message], queue=settings.CELERY_TASK_DEFAULT_QUEUE)

    transaction.on_commit(send, robust=True)


def undeploy_unloads_send(*, unloads: list[dict[str, Any]]) -> int:
    """Sends an undeployed model's unloads to its workers, each claimed first so the orphan
    sweep does not send it again while a worker's last heartbeat still lists the model.
    Returns how many were sent (a claim another sender holds is skipped)."""
    from celery import current_app

    from apps.deployments.reconcile import orphan_unload_claim
    from inference_workers.types import ModelKey

    sent = 0
    for unload in unloads:
        key = ModelKey(**unload["key"])
        if orphan_unload_claim(unload["worker_id"], key):
            current_app.send_task(UNLOAD_TASK, args=[key.__dict__], queue=unload["queue"])
            sent += 1
    return sent


def _reconcile_after_commit() -> None:
    from apps.deployments.tasks import reconcile

    transaction.on_commit(reconcile.delay, robust=True)
