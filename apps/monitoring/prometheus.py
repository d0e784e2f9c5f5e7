"""The control plane's own Prometheus figures: fleet and per-tenant aggregates read from the
database on each scrape (``/metrics`` adds them to the process's gateway series)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from django.conf import settings
from django.db.models import Count, Sum
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from apps.deployments.models import Replica, Worker
from apps.monitoring.models import MetricRollup
from apps.monitoring.selectors import rollups_between


class ControlPlaneCollector(Collector):
    """Fleet: workers by state and kind, each live device's memory and utilisation, replicas
    by state. Per tenant: replicas and reserved bytes, requests and errors over the last
    minute, and today's (UTC) predictions, device seconds and cost."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from self._fleet()
        yield from self._tenants()

    def _fleet(self) -> Iterator[GaugeMetricFamily]:
        workers = GaugeMetricFamily("berth_fleet_workers", "Registered workers", labels=["state", "device_kind"])
        for row in Worker.objects.values("state", "device_kind").annotate(n=Count("id")).order_by():
            workers.add_metric([row["state"], row["device_kind"]], row["n"])
        yield workers
        labels = ["worker", "device_kind", "device_index"]
        capacity = GaugeMetricFamily("berth_fleet_device_capacity_bytes", "Device memory", labels=labels)
        used = GaugeMetricFamily("berth_fleet_device_used_bytes", "Measured use (NVML, or RSS)", labels=labels)
        reserved = GaugeMetricFamily("berth_fleet_device_reserved_bytes", "Reserved by replicas", labels=labels)
        busy = GaugeMetricFamily("berth_fleet_device_utilisation_percent", "Device utilisation", labels=labels)
        for worker in Worker.objects.exclude(state=Worker.State.DEAD).order_by("worker_id"):
            values = [worker.worker_id, worker.device_kind, str(worker.device_index)]
            capacity.add_metric(values, worker.capacity_bytes)
            used.add_metric(values, worker.used_bytes)
            reserved.add_metric(values, worker.reserved_bytes)
            if worker.utilisation_pct is not None:
                busy.add_metric(values, worker.utilisation_pct)
        yield from (capacity, used, reserved, busy)
        replicas = GaugeMetricFamily("berth_fleet_replicas", "Replicas by state", labels=["state"])
        for row in Replica.objects.values("state").annotate(n=Count("id")).order_by():
            replicas.add_metric([row["state"]], row["n"])
        yield replicas

    def _tenants(self) -> Iterator[GaugeMetricFamily]:
        replicas = GaugeMetricFamily("berth_tenant_replicas", "A tenant's replicas", labels=["tenant", "state"])
        reserved = GaugeMetricFamily(
            "berth_tenant_reserved_bytes", "Memory its ready replicas reserve", labels=["tenant"]
        )
        by_state = Replica.objects.values("deployment__model__tenant__slug", "state").annotate(n=Count("id"))
        for row in by_state.order_by():
            replicas.add_metric([row["deployment__model__tenant__slug"], row["state"]], row["n"])
        held = (
            Replica.objects.filter(state=Replica.State.READY)
            .values("deployment__model__tenant__slug")
            .annotate(bytes=Sum("reserved_bytes"))
        )
        for row in held.order_by():
            reserved.add_metric([row["deployment__model__tenant__slug"]], row["bytes"] or 0)
        yield from (replicas, reserved)

        now = timezone.now()
        minute = (
            MetricRollup.objects.filter(resolution="1s", start__gte=now - timedelta(minutes=1))
            .values("tenant__slug")
            .annotate(requests=Sum("requests"), errors=Sum("errors"))
        )
        requests = GaugeMetricFamily("berth_tenant_requests_last_minute", "Inference requests", labels=["tenant"])
        errors = GaugeMetricFamily("berth_tenant_errors_last_minute", "Answers with status >= 400", labels=["tenant"])
        for row in minute.order_by():
            requests.add_metric([row["tenant__slug"]], row["requests"] or 0)
            errors.add_metric([row["tenant__slug"]], row["errors"] or 0)
        yield from (requests, errors)

        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        today: dict[str, dict[str, int]] = {}
        for rows in rollups_between(MetricRollup.objects.all(), since=midnight, until=now + timedelta(days=1)):
            sums = rows.values("tenant__slug").annotate(
                p=Sum("predictions"), c=Sum("compute_us"), i=Sum("idle_us"), m=Sum("cost_nanos")
            )
            for row in sums.order_by():
                cell = today.setdefault(row["tenant__slug"], {"p": 0, "d": 0, "m": 0})
                cell["p"] += row["p"] or 0
                cell["d"] += (row["c"] or 0) + (row["i"] or 0)
                cell["m"] += row["m"] or 0
        predictions = GaugeMetricFamily("berth_tenant_predictions_today", "Predictions today (UTC)", labels=["tenant"])
        device = GaugeMetricFamily("berth_tenant_device_seconds_today", "Device time charged today", labels=["tenant"])
        cost = GaugeMetricFamily("berth_tenant_cost_today", "Cost charged today", labels=["tenant", "currency"])
        for slug, cell in sorted(today.items()):
            predictions.add_metric([slug], cell["p"])
            device.add_metric([slug], cell["d"] / 1_000_000)
            cost.add_metric([slug, settings.BERTH_CURRENCY], cell["m"] / 1_000_000_000)
        yield from (predictions, device, cost)
