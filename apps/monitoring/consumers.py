"""WebSocket consumers of the monitoring app: they authenticate, join groups and forward."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.utils import timezone

# Close codes: the browser learns "sign in" or "no such tenant" (foreign and missing read alike).
UNAUTHENTICATED = 4401
NOT_FOUND = 4404
FLEET_INTERVAL_S = 1.0
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


def _tenant_for(user: Any, slug: str) -> tuple[int, list[dict[str, Any]]] | None:
    """The tenant's id and recent points when ``user`` may read it; None otherwise."""
    from apps.monitoring.selectors import metric_series
    from apps.tenants.access import Action, Actor, access_tenant_by_slug
    from control_plane.errors import ApplicationError

    try:
        tenant = access_tenant_by_slug(Actor(user=user), slug, action=Action.READ)
    except ApplicationError:
        return None
    history = metric_series(tenant=tenant, since=timezone.now() - HISTORY, resolution="1s")
    return tenant.pk, history


class TenantMetricsConsumer(AsyncJsonWebsocketConsumer):
    """``/ws/tenants/{slug}/metrics/[?model=name]``: a tenant's live metric points.

    Members of the tenant (and staff) only; anyone else is refused at connect, a foreign
    tenant exactly like a missing one. On connect it sends the last five minutes
    (``metrics.history``), then every second's new points as gateways flush them
    (``metrics.update``; with several gateway processes, points of one second and model
    version arrive once per process: add them up).
    """

    group = ""
    model = ""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=UNAUTHENTICATED)
            return
        slug = self.scope["url_route"]["kwargs"]["slug"]
        query = parse_qs(self.scope.get("query_string", b"").decode())
        self.model = (query.get("model") or [""])[0]
        found = await database_sync_to_async(_tenant_for)(user, slug)
        if found is None:
            await self.close(code=NOT_FOUND)
            return
        tenant_id, history = found
        self.group = tenant_metrics_group(tenant_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send_json({"type": "metrics.history", "points": self._only_model(history)})

    async def disconnect(self, code: int) -> None:
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    def _only_model(self, points: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [p for p in points if p["model"] == self.model] if self.model else points

    async def metrics_update(self, event: dict[str, Any]) -> None:
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
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=UNAUTHENTICATED)
            return
        if not (user.is_staff and user.is_active):
            await self.close(code=NOT_FOUND)
            return
        await self.accept()
        self._task = asyncio.get_running_loop().create_task(self._push())

    async def _push(self) -> None:
        while True:
            await self.send_json(
                {
                    "type": "fleet.update",
                    "t": timezone.now().isoformat(),
                    "devices": await database_sync_to_async(_fleet)(),
                }
            )
            await asyncio.sleep(FLEET_INTERVAL_S)

    async def disconnect(self, code: int) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
