"""The control plane's /metrics: fleet and per-tenant aggregates, for staff and the token only."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient

from apps.deployments.models import Deployment, Replica, Worker
from apps.monitoring.models import MetricRollup
from apps.registry.models import Model, ModelVersion
from tests.apps.deployments.factories import WorkerFactory

pytestmark = pytest.mark.django_db


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _fleet(world_a, world_b):
    worker = WorkerFactory.create(worker_id="gpu-0", device_kind="cuda", capacity_bytes=1000, reserved_bytes=300)
    WorkerFactory.create(worker_id="gone", state=Worker.State.DEAD)
    for world, name, state in ((world_a, "clf", "ready"), (world_b, "reg", "loading")):
        model = Model.objects.create(tenant=world.tenant, name=name)
        version = ModelVersion.objects.create(
            model=model, number=1, artifact=f"{name}/1", sha256="a" * 64, size_bytes=1, format="onnx",
            status=ModelVersion.Status.READY, footprint_bytes=300,
        )  # fmt: skip
        deployment = Deployment.objects.create(model=model, traffic={"1": 100})
        Replica.objects.create(deployment=deployment, version=version, worker=worker, state=state, reserved_bytes=300)
    now = timezone.now()
    for world, requests, cost in ((world_a, 7, 2_500_000_000), (world_b, 3, 0)):
        MetricRollup.objects.create(
            resolution="1s", start=now - timedelta(seconds=5), tenant=world.tenant, model_name="m", version=1,
            requests=requests, errors=1, predictions=requests, compute_us=1_500_000, idle_us=500_000,
            cost_nanos=cost,
        )  # fmt: skip


def test_staff_read_fleet_and_tenant_aggregates(world_a, world_b, staff_client):
    _fleet(world_a, world_b)
    answer = staff_client.get("/metrics")
    assert answer.status_code == 200
    seen = _samples(answer.content.decode())
    device = (("device_index", "0"), ("device_kind", "cuda"), ("worker", "gpu-0"))
    assert seen[("berth_fleet_device_capacity_bytes", device)] == 1000
    assert seen[("berth_fleet_device_reserved_bytes", device)] == 300
    assert not any(labels and ("worker", "gone") in labels for _, labels in seen)  # dead workers are not devices
    assert seen[("berth_fleet_workers", (("device_kind", "cpu"), ("state", "dead")))] == 1
    assert seen[("berth_fleet_replicas", (("state", "ready"),))] == 1
    assert seen[("berth_tenant_replicas", (("state", "loading"), ("tenant", "bravo")))] == 1
    assert seen[("berth_tenant_reserved_bytes", (("tenant", "alpha"),))] == 300
    assert ("berth_tenant_reserved_bytes", (("tenant", "bravo"),)) not in seen  # loading holds nothing yet
    assert seen[("berth_tenant_requests_last_minute", (("tenant", "alpha"),))] == 7
    assert seen[("berth_tenant_errors_last_minute", (("tenant", "bravo"),))] == 1
    assert seen[("berth_tenant_predictions_today", (("tenant", "alpha"),))] == 7
    assert seen[("berth_tenant_device_seconds_today", (("tenant", "alpha"),))] == 2.0
    assert seen[("berth_tenant_cost_today", (("currency", "USD"), ("tenant", "alpha")))] == 2.5


def test_tenant_keys_and_members_cannot_read_the_aggregates(world_a, world_b, settings):
    _fleet(world_a, world_b)
    for client in (world_a.session("owner"), world_a.bearer("manage"), APIClient()):
        assert client.get("/metrics").status_code in (401, 403)
    settings.BERTH_METRICS_TOKEN = "scrape-me"
    scraper = APIClient()
    scraper.credentials(HTTP_AUTHORIZATION="Bearer scrape-me")
    assert b"berth_tenant_cost_today" in scraper.get("/metrics").content
