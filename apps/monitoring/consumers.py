"""WebSocket consumers of the monitoring app: they authenticate, join groups and forward."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.utils import timezone

log = logging.getLogger(__name__)

# Close codes: the browser learns "sign in" or "no such tenant" (foreign and missing read alike).
UNAUTHENTICATED = 4401
NOT_FOUND = 4404
FLEET_INTERVAL_S = 1.0
RECHECK_S = 60.0
HISTORY = timedelta(minutes=5)


def tenant_metrics_group(tenant_id: int) -> str:
    """The channel-layer group a tenant's metric points are sent to."""
    return f"tenant-{tenant_id}.metrics"


class PlatformHealthConsumer(AsyncJsonWebsocketConsumer):
    """``/ws/health/``: greets a signed-in user; proves the WebSocket path is wired."""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=UNAUTHENTICATED)
            return
        await self.accept()
        await self.send_json({"type": "health.ok", "user": user.get_username()})


async def _signed_in(consumer: AsyncJsonWebsocketConsumer) -> Any | None:
    """Accepts the socket and returns its signed-in user, or closes it with 4401 (None).

    Accepting first, then closing with a code: a refusal in the handshake would reach the
    browser as a bare HTTP 403 it cannot tell from a network error.
    """
    await consumer.accept()
    user = consumer.scope.get("user")
    if user is None or not user.is_authenticated:
        await consumer.close(code=UNAUTHENTICATED)
        return None
    return user


def _tenant_id_for(user: Any, slug: str) -> int | None:
    """The tenant's id when ``user`` may read it; None otherwise (foreign and missing alike)."""
    from apps.tenants.access import Action, Actor, access_tenant_by_slug
    from control_plane.errors import ApplicationError

    try:
        return access_tenant_by_slug(Actor(user=user), slug, action=Action.READ).pk
    except ApplicationError:
        return None


def _history(tenant_id: int) -> list[dict[str, Any]]:
    from apps.monitoring.selectors import metric_series
    from apps.tenants.models import Tenant

    tenant = Tenant.objects.get(pk=tenant_id)
    return metric_series(tenant=tenant, since=timezone.now() - HISTORY, resolution="1s")


POLL_FAILURES = 30  # a second apart: the socket closes (1011) after this many failed reads


def _worker_points(tenant_id: int, after_id: int) -> tuple[list[dict[str, Any]], int]:
    """The workers' one-second rows of a tenant stored after row ``after_id`` (the first call,
    with 0, only marks where to start), as chart points with their histograms."""
    from apps.monitoring.models import MetricRollup
    from apps.monitoring.selectors import metric_point

    rows = MetricRollup.objects.filter(resolution="1s", tenant_id=tenant_id, source__startswith="worker:")
    if after_id == 0:
        newest = rows.order_by("-id").values_list("id", flat=True).first()
        return [], newest or -1
    fresh = list(rows.filter(id__gt=after_id).order_by("id")[:2000])
    points = [
        {
            **metric_point(start=row.start, model=row.model_name, version=row.version, rows=[row]),
            "step_s": 1,
            "queue": row.queue,
            "compute": row.compute,
        }
        for row in fresh
        if row.batches
    ]
    return points, fresh[-1].id if fresh else after_id


class TenantMetricsConsumer(AsyncJsonWebsocketConsumer):
    """``/ws/tenants/{slug}/metrics/[?model=name]``: a tenant's live metric points.

    Members of the tenant (and staff) only; anyone else is closed at once with 4404 (a
    foreign tenant exactly like a missing one), or 4401 without a session. After joining the
    tenant's group it sends the last five minutes (``metrics.history``), then every second's
    new points as gateways flush them and, polled each second, the workers' batch figures
    (``metrics.update``; with several gateway processes,
    points of one second and model version arrive once per process: add them up). Access is
    checked again every minute, so a removed member stops receiving.
    """

    group = ""
    model = ""
    slug = ""
    checked_at = 0.0

    async def connect(self) -> None:
        user = await _signed_in(self)
        if user is None:
            return
        self.slug = self.scope["url_route"]["kwargs"]["slug"]
        query = parse_qs(self.scope.get("query_string", b"").decode())
        self.model = (query.get("model") or [""])[0]
        tenant_id = await database_sync_to_async(_tenant_id_for)(user, self.slug)
        if tenant_id is None:
            await self.close(code=NOT_FOUND)
            return
        self.group = tenant_metrics_group(tenant_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        self.checked_at = time.monotonic()
        history = await database_sync_to_async(_history)(tenant_id)
        await self.send_json({"type": "metrics.history", "points": self._only_model(history)})
        self.tenant_id = tenant_id
        self.poller = asyncio.ensure_future(self._workers_forever())

    async def _workers_forever(self) -> None:
        """Every second, the workers' new batch figures (their heartbeats reach the database
        through the control worker, which need not share a channel layer with this process)."""
        seen, failures = 0, 0
        while True:
            if not await self._allowed():
                return
            try:
                points, seen = await database_sync_to_async(_worker_points)(self.tenant_id, seen)
                failures = 0
            except Exception:  # the database is away: try again; give up (close) after a while
                failures += 1
                log.warning("could not read workers' points for a metrics socket", exc_info=True)
                if failures >= POLL_FAILURES:
                    await self.close(code=1011)
                    return
                points = []
            points = self._only_model(points)
            if points:
                await self.send_json({"type": "metrics.update", "points": points})
            await asyncio.sleep(1.0)

    async def disconnect(self, code: int) -> None:
        poller = getattr(self, "poller", None)
        if poller is not None:
            poller.cancel()
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    def _only_model(self, points: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [p for p in points if p["model"] == self.model] if self.model else points

    async def _allowed(self) -> bool:
        """Re-checks access once a minute; closes the socket (4404) when it is gone."""
        if time.monotonic() - self.checked_at > RECHECK_S:
            self.checked_at = time.monotonic()
            if await database_sync_to_async(_tenant_id_for)(self.scope["user"], self.slug) is None:
                await self.close(code=NOT_FOUND)
                return False
            await self.channel_layer.group_add(self.group, self.channel_name)  # renews the group's expiry
        return True

    async def metrics_update(self, event: dict[str, Any]) -> None:
        if not await self._allowed():
            return
        points = self._only_model(event["points"])
        if points:
            await self.send_json({"type": "metrics.update", "points": points})


def _fleet() -> list[dict[str, Any]]:
    from apps.deployments.models import Replica, Worker

    replicas: dict[int, list[dict[str, Any]]] = {}
    for replica in Replica.objects.filter(worker__isnull=False).select_related("version__model__tenant"):
        assert replica.worker_id is not None
        replicas.setdefault(replica.worker_id, []).append(
            {
                "tenant": replica.version.model.tenant.slug,
                "model": replica.version.model.name,
                "version": replica.version.number,
                "state": replica.state,
                "reserved_bytes": replica.reserved_bytes,
            }
        )
    return [
        {
            "worker": worker.worker_id,
            "state": worker.state,
            "device": f"{worker.device_kind}:{worker.device_index} {worker.device_name}".strip(),
            "capacity_bytes": worker.capacity_bytes,
            "used_bytes": worker.used_bytes,
            "reserved_bytes": worker.reserved_bytes,
            "utilisation_pct": worker.utilisation_pct,
            "replicas": replicas.get(worker.pk, []),
        }
        for worker in Worker.objects.exclude(state=Worker.State.DEAD).order_by("worker_id")
    ]


class FleetConsumer(AsyncJsonWebsocketConsumer):
    """``/ws/fleet/``: staff only; every second each live device's memory (capacity, measured
    use, reservations) with every hosted replica and its tenant (``fleet.update``).

    It reads the workers' last heartbeats from the database each second rather than waiting
    for group messages, so it works the same with the in-memory channel layer, where the
    control worker that records heartbeats cannot reach this process.
    """

    _task: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        user = await _signed_in(self)
        if user is None:
            return
        if not (user.is_staff and user.is_active):
            await self.close(code=NOT_FOUND)
            return
        self._task = asyncio.get_running_loop().create_task(self._push())

    async def _push(self) -> None:
        failures = 0
        while True:
            try:
                devices = await database_sync_to_async(_fleet)()
                await self.send_json({"type": "fleet.update", "t": timezone.now().isoformat(), "devices": devices})
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception:  # a database hiccup: say so, and give up after a few in a row
                failures += 1
                log.warning("fleet socket: update failed (%d in a row)", failures, exc_info=True)
                if failures >= 5:
                    await self.close(code=1011)
                    return
            await asyncio.sleep(FLEET_INTERVAL_S)

    async def disconnect(self, code: int) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
