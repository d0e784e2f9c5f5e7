"""The reconcile loop on real rows: placement, loading → ready from heartbeats, recovery."""

from __future__ import annotations

import pytest

from apps.deployments.models import Deployment, Replica, Worker
from apps.deployments.reconcile import PassReport, reconcile_once
from apps.registry.models import Model, ModelVersion
from tests.apps.deployments.factories import WorkerFactory

pytestmark = pytest.mark.django_db

MiB = 1024**2


@pytest.fixture
def deployment(world_a):
    model = Model.objects.create(tenant=world_a.tenant, name="clf")
    version = ModelVersion.objects.create(
        model=model,
        number=1,
        artifact="alpha/clf/1",
        sha256="a" * 64,
        size_bytes=1,
        format="onnx",
        status=ModelVersion.Status.READY,
        batched=True,
        max_batch_size=16,
        footprint_bytes=100 * MiB,
    )
    del version
    return Deployment.objects.create(model=model, traffic={"1": 100}, min_replicas=2, max_replicas=2)


def run() -> PassReport:
    report = reconcile_once()
    assert report is not None
    return report


def report_hosted(worker: Worker, state: str, reason: str = "") -> None:
    worker.hosted = [
        {
            "tenant": "alpha",
            "model": "clf",
            "version": 1,
            "state": state,
            "reserved_bytes": 120 * MiB,
            "measured_bytes": 120 * MiB,
            "reason": reason,
        }
    ]
    worker.save()


def test_replicas_are_placed_on_distinct_workers_then_become_ready(deployment, django_capture_on_commit_callbacks):
    first, second = WorkerFactory.create(worker_id="w1"), WorkerFactory.create(worker_id="w2")
    with django_capture_on_commit_callbacks() as sent:
        report = run()
    assert report.loads == 2
    assert len(sent) == 1  # one callback sending both load commands, after commit
    rows = list(Replica.objects.order_by("index"))
    assert {r.worker.worker_id for r in rows if r.worker} == {"w1", "w2"}
    assert all(r.state == "loading" for r in rows)
    with django_capture_on_commit_callbacks() as again:
        assert run().loads == 0  # never the same command twice for one step
    report_hosted(first, "ready")
    report_hosted(second, "ready")
    reconcile_once()
    assert list(Replica.objects.values_list("state", flat=True)) == ["ready", "ready"]
    assert Replica.objects.get(index=0).reserved_bytes == 120 * MiB
    del again


def test_a_dead_workers_replica_is_placed_elsewhere(deployment):
    deployment.min_replicas = 1
    deployment.save()
    first, second = WorkerFactory.create(worker_id="w1"), WorkerFactory.create(worker_id="w2")
    reconcile_once()
    replica = Replica.objects.get()
    original = replica.worker
    assert original is not None
    original.state = Worker.State.DEAD
    original.save()
    reconcile_once()
    replica.refresh_from_db()
    assert replica.state == "loading" and replica.worker not in (None, original)
    del first, second


def test_what_cannot_fit_stays_pending_with_the_reason(deployment):
    WorkerFactory.create(worker_id="tiny", capacity_bytes=50 * MiB)
    reconcile_once()
    rows = list(Replica.objects.all())
    assert rows and all(r.state == "pending" for r in rows)
    assert "no cpu device has 100 MiB free" in rows[0].reason


def test_a_failed_load_stays_failed_with_its_reason_until_the_deployment_changes(deployment, world_a):
    deployment.min_replicas = 1
    deployment.save()
    worker = WorkerFactory.create(worker_id="w1")
    reconcile_once()
    report_hosted(worker, "failed", "sha256 mismatch")
    reconcile_once()
    replica = Replica.objects.get()
    assert replica.state == "failed" and replica.reason == "sha256 mismatch"
    assert run().loads == 0
    response = world_a.session("member").patch(
        "/api/v1/tenants/alpha/models/clf/deployment/", {"min_replicas": 1}, format="json"
    )
    assert response.status_code == 200
    assert run().loads == 1


def test_undeploying_removes_the_replicas(deployment, world_a):
    WorkerFactory.create(worker_id="w1")
    WorkerFactory.create(worker_id="w2")
    reconcile_once()
    assert Replica.objects.count() == 2
    assert world_a.session("member").delete("/api/v1/tenants/alpha/models/clf/deployment/").status_code == 204
    assert Replica.objects.count() == 0


def test_a_second_pass_waits_while_one_holds_the_lock(deployment):
    from django.core.cache import cache

    from apps.deployments.reconcile import LOCK_KEY

    cache.add(LOCK_KEY, "1", timeout=30)
    assert reconcile_once() is None
    cache.delete(LOCK_KEY)
    assert reconcile_once() is not None


def test_an_idle_deployment_scales_to_zero_and_a_cold_start_brings_it_back(deployment):
    from datetime import timedelta

    from django.utils import timezone

    from apps.gateway.services import deployment_cold_start

    WorkerFactory.create(worker_id="w1")
    WorkerFactory.create(worker_id="w2")
    deployment.scale_to_zero_after_s = 60
    deployment.last_request_at = timezone.now() - timedelta(seconds=30)
    deployment.save()
    assert run().loads == 2
    deployment.last_request_at = timezone.now() - timedelta(seconds=61)
    deployment.save()
    assert run().unloads == 2
    assert not Replica.objects.exists()
    assert deployment_cold_start(deployment_id=deployment.pk)
    assert run().loads == 2


def test_a_replica_a_gateway_cannot_reach_marks_its_silent_worker_dead_at_once(deployment):
    from datetime import timedelta

    from django.utils import timezone

    from apps.gateway.services import replica_mark_suspect

    deployment.min_replicas = 1
    deployment.save()
    silent = WorkerFactory.create(worker_id="w1", last_heartbeat_at=timezone.now() - timedelta(seconds=10))
    WorkerFactory.create(worker_id="w2")
    run()
    replica = Replica.objects.get()
    replica.worker = silent
    replica.state = Replica.State.READY
    replica.save()
    run()
    assert Worker.objects.get(worker_id="w1").state == Worker.State.READY  # silence alone waits for 3 beats
    replica_mark_suspect(replica_id=replica.pk)
    run()
    assert Worker.objects.get(worker_id="w1").state == Worker.State.DEAD
    replica.refresh_from_db()
    assert replica.worker is not None and replica.worker.worker_id == "w2"


def test_a_suspect_replica_on_a_worker_still_beating_stays(deployment):
    from apps.gateway.services import replica_mark_suspect

    deployment.min_replicas = 1
    deployment.save()
    WorkerFactory.create(worker_id="w1")
    run()
    replica = Replica.objects.get()
    replica_mark_suspect(replica_id=replica.pk)
    worker = Worker.objects.get(worker_id="w1")
    from django.utils import timezone

    worker.last_heartbeat_at = timezone.now()
    worker.save()
    run()
    assert Worker.objects.get(worker_id="w1").state == Worker.State.READY
