"""The reconcile loop on real rows: placement, loading → ready from heartbeats, recovery."""

from __future__ import annotations

from typing import Any

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


def run(now: float | None = None) -> PassReport:
    report = reconcile_once(now=now)
    assert report is not None
    return report


def report_hosted(worker: Worker, state: str, reason: str = "", at: float | None = None) -> None:
    """A heartbeat from ``worker`` (sent ``at``, default now) reporting the model in ``state``."""
    import time
    from datetime import UTC, datetime

    worker.last_heartbeat_at = datetime.fromtimestamp(at if at is not None else time.time() + 0.001, tz=UTC)
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
    assert again == []  # and no command at all: nothing changed
    report_hosted(first, "ready")
    report_hosted(second, "ready")
    reconcile_once()
    assert list(Replica.objects.values_list("state", flat=True)) == ["ready", "ready"]
    assert Replica.objects.get(index=0).reserved_bytes == 120 * MiB


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


def test_a_failed_load_is_retried_with_backoff_on_another_device_then_fails_with_the_reasons(
    deployment, world_a, settings, django_capture_on_commit_callbacks
):
    import time

    settings.BERTH_LOAD_RETRY_S = 10
    deployment.min_replicas = 1
    deployment.save()
    first = WorkerFactory.create(worker_id="w1")
    second = WorkerFactory.create(worker_id="w2")
    now = time.time()
    reconcile_once(now=now)
    replica = Replica.objects.get()
    tried = replica.worker
    assert tried is not None
    report_hosted(tried, "failed", "sha256 mismatch")
    with django_capture_on_commit_callbacks(execute=False) as sent:
        reconcile_once(now=now + 1)
    replica.refresh_from_db()
    assert replica.state == "pending" and replica.worker is None
    assert "load failed on" in replica.reason and "sha256 mismatch" in replica.reason and "in 10 s" in replica.reason
    assert sent, "the failed entry is unloaded from its worker"
    assert run(now + 5).loads == 0  # backoff
    assert run(now + 12).loads == 1
    replica.refresh_from_db()
    other = replica.worker
    assert other is not None and other != tried  # another device
    report_hosted(tried, "ready")  # (the first worker's state no longer matters)
    report_hosted(other, "failed", "out of memory", at=now + 12.5)
    reconcile_once(now=now + 13)
    replica.refresh_from_db()
    assert replica.state == "pending" and "in 20 s" in replica.reason
    assert run(now + 34).loads == 1  # both devices failed once: any will do
    replica.refresh_from_db()
    assert replica.worker is not None
    report_hosted(replica.worker, "failed", "out of memory", at=now + 34.5)
    reconcile_once(now=now + 35)
    replica.refresh_from_db()
    assert replica.state == "failed"
    assert "load failed 3 times" in replica.reason and "out of memory" in replica.reason
    assert run(now + 100).loads == 0
    # Changing the deployment clears the failure for a fresh start.
    response = world_a.session("member").patch(
        "/api/v1/tenants/alpha/models/clf/deployment/", {"min_replicas": 1}, format="json"
    )
    assert response.status_code == 200
    assert run(now + 101).loads == 1
    del first, second


def test_undeploying_removes_the_replicas(deployment, world_a):
    WorkerFactory.create(worker_id="w1")
    WorkerFactory.create(worker_id="w2")
    reconcile_once()
    assert Replica.objects.count() == 2
    assert world_a.session("member").delete("/api/v1/tenants/alpha/models/clf/deployment/").status_code == 204
    assert Replica.objects.count() == 0


@pytest.mark.parametrize("sweep_first", [False, True], ids=["undeploy-task-first", "orphan-sweep-first"])
def test_an_undeploy_sends_each_unload_once(
    deployment, world_a, monkeypatch, settings, django_capture_on_commit_callbacks, sweep_first
):
    """After the delete commits, the control worker gets the reconcile pass (whose orphan
    sweep sees the model in the workers' last heartbeats) and the undeploy's unloads, in
    either order: each worker gets one unload in all."""
    from apps.deployments.tasks import undeploy_unloads
    from control_plane.celery import RECONCILE_TASK, app

    sent: list[tuple[str, Any]] = []  # (queue, the message) of every task but the reconcile pass

    def send_task(name, args=None, kwargs=None, queue=None, **options):
        if name != RECONCILE_TASK:
            sent.append((queue, args[0]))

    monkeypatch.setattr(app, "send_task", send_task)
    first, second = WorkerFactory.create(worker_id="w1"), WorkerFactory.create(worker_id="w2")
    reconcile_once()
    report_hosted(first, "ready")
    report_hosted(second, "ready")
    reconcile_once()
    sent.clear()
    with django_capture_on_commit_callbacks(execute=True):
        assert world_a.session("member").delete("/api/v1/tenants/alpha/models/clf/deployment/").status_code == 204
    # The web process sends nothing to a worker itself: one message to the control worker,
    # where the claims are those the orphan sweep (in the same process) sees.
    assert [queue for queue, _ in sent] == [settings.CELERY_TASK_DEFAULT_QUEUE]
    (unloads,) = [message for _, message in sent]
    sent.clear()
    with django_capture_on_commit_callbacks(execute=True):
        if sweep_first:
            reconcile_once()
        undeploy_unloads(unloads)
        reconcile_once()
    assert sorted(queue for queue, _ in sent) == [first.queue, second.queue]
    assert all(key == {"tenant": "alpha", "model": "clf", "version": 1} for _, key in sent)
    # The workers' last heartbeats still list the model: the next passes send nothing more,
    # nor does the same message delivered twice.
    sent.clear()
    undeploy_unloads(unloads)
    with django_capture_on_commit_callbacks(execute=True):
        reconcile_once()
    assert sent == []


@pytest.fixture
def sent_tasks(monkeypatch):
    """Every task the reconcile loop sends: (task name, queue, message)."""
    from control_plane.celery import app

    sent: list[tuple[str, str, dict]] = []
    monkeypatch.setattr(app, "send_task", lambda name, args, queue: sent.append((name, queue, args[0])))
    return sent


def test_a_failed_loads_unload_is_sent_once_though_the_heartbeat_still_lists_it(
    deployment, settings, sent_tasks, django_capture_on_commit_callbacks
):
    import time

    from inference_workers.types import UNLOAD_TASK

    settings.BERTH_LOAD_RETRY_S = 10
    deployment.min_replicas = 1
    deployment.save()
    WorkerFactory.create(worker_id="w1")
    WorkerFactory.create(worker_id="w2")
    now = time.time()
    reconcile_once(now=now)
    tried = Replica.objects.get().worker
    assert tried is not None
    report_hosted(tried, "failed", "sha256 mismatch")
    sent_tasks.clear()
    with django_capture_on_commit_callbacks(execute=True):
        reconcile_once(now=now + 1)
    assert [(name, queue) for name, queue, _ in sent_tasks] == [(UNLOAD_TASK, tried.queue)]
    sent_tasks.clear()
    with django_capture_on_commit_callbacks(execute=True):
        reconcile_once(now=now + 2)  # in the backoff; the heartbeat still lists the failure
    assert sent_tasks == []


def test_a_scaled_down_replicas_unload_is_sent_once_after_the_grace(
    deployment, settings, sent_tasks, django_capture_on_commit_callbacks
):
    import time

    from inference_workers.types import UNLOAD_TASK

    settings.BERTH_UNLOAD_GRACE_S = 5
    first, second = WorkerFactory.create(worker_id="w1"), WorkerFactory.create(worker_id="w2")
    now = time.time()
    reconcile_once(now=now)
    report_hosted(first, "ready")
    report_hosted(second, "ready")
    reconcile_once(now=now + 1)
    deployment.min_replicas = deployment.max_replicas = 1
    deployment.save()
    sent_tasks.clear()
    with django_capture_on_commit_callbacks(execute=True):
        reconcile_once(now=now + 2)  # out of routing first: nothing sent within the grace
    assert sent_tasks == []
    assert Replica.objects.filter(state="unloading").count() == 1
    leaving = Replica.objects.get(state="unloading").worker
    assert leaving is not None
    with django_capture_on_commit_callbacks(execute=True):
        reconcile_once(now=now + 8)
        reconcile_once(now=now + 9)  # both heartbeats still list the model
    assert [(name, queue) for name, queue, _ in sent_tasks] == [(UNLOAD_TASK, leaving.queue)]
    assert Replica.objects.count() == 1


def test_a_second_pass_waits_while_one_holds_the_lock(deployment):
    from django.core.cache import cache

    from apps.deployments.reconcile import LOCK_KEY

    cache.add(LOCK_KEY, "1", timeout=30)
    assert reconcile_once() is None
    cache.delete(LOCK_KEY)
    assert reconcile_once() is not None


def test_a_pass_asked_for_while_one_runs_runs_after_it(deployment, monkeypatch):
    from django.core.cache import cache

    from apps.deployments import reconcile

    passes: list[float] = []
    asked: list[bool] = []
    real = reconcile._reconcile

    def counted(now: float) -> PassReport:
        passes.append(now)
        if not asked:
            asked.append(True)
            assert reconcile_once() is None  # asked for while this one holds the lock
        return real(now)

    monkeypatch.setattr(reconcile, "_reconcile", counted)
    assert reconcile_once() is not None
    assert len(passes) == 2  # the one asked for ran once the first had committed
    assert cache.get(reconcile.LOCK_KEY) is None
    passes.clear()
    assert reconcile_once() is not None
    assert len(passes) == 1  # nothing was asked for meanwhile


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
    import time
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
    report_hosted(silent, "ready", at=time.time() - 10)  # its last heartbeat, 10 s ago
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


def test_load_scales_a_version_up_in_one_pass_and_down_after_the_stabilisation_window(deployment, settings):
    import time

    settings.BERTH_SCALE_DOWN_STABILISATION_S = 60
    deployment.min_replicas, deployment.max_replicas, deployment.target_inflight_per_replica = 1, 3, 4
    deployment.save()
    workers = [WorkerFactory.create(worker_id=f"w{i}") for i in range(1, 4)]
    now = time.time()
    assert run(now).loads == 1
    busy = Replica.objects.get().worker
    assert busy is not None
    busy.hosted = [
        {"tenant": "alpha", "model": "clf", "version": 1, "state": "ready", "reserved_bytes": 100 * MiB,
         "inflight": 6, "queue_depth": 4}
    ]  # fmt: skip
    busy.save()
    report = reconcile_once(now=now + 2)
    assert report is not None and report.loads == 2  # ceil(10 / 4) = 3 replicas, at once
    assert {r.worker_id for r in Replica.objects.all()} == {w.pk for w in workers}
    busy.hosted[0]["inflight"], busy.hosted[0]["queue_depth"] = 0, 0
    busy.save()
    assert run(now + 30).unloads == 0  # within the window: held
    assert Replica.objects.count() == 3
    assert run(now + 63).unloads == 2
    assert Replica.objects.count() == 1


def test_a_drained_workers_replica_serves_until_its_replacement_is_ready_then_unloads(
    deployment, staff_user, django_capture_on_commit_callbacks
):
    import time

    from apps.deployments.services import worker_drain
    from apps.gateway.selectors import routing_snapshot_load
    from apps.tenants.access import Actor

    deployment.min_replicas = 1
    deployment.save()
    WorkerFactory.create(worker_id="w1")
    reconcile_once()
    first = Replica.objects.get()
    assert first.worker is not None
    report_hosted(first.worker, "ready")
    reconcile_once()
    spare = WorkerFactory.create(worker_id="w2")

    def routed_workers() -> set[str]:
        snapshot = routing_snapshot_load()
        tenant = next(t for t in snapshot.tenants.values() if t.slug == "alpha")
        return {r.worker_id for r in tenant.models["clf"].versions[1].replicas}

    assert routed_workers() == {"w1"}
    worker_drain(actor=Actor(user=staff_user), worker=first.worker)
    with django_capture_on_commit_callbacks(execute=False):
        report = run()
    assert report.loads == 1
    rows = {(r.worker.worker_id if r.worker else None, r.state, r.retiring) for r in Replica.objects.all()}
    assert rows == {("w1", "ready", True), ("w2", "loading", False)}
    assert routed_workers() == {"w1"}  # still served where it was
    from apps.deployments.tasks import worker_serving

    assert worker_serving("w1") == 1  # what a worker handing over after SIGTERM asks
    report_hosted(spare, "ready")
    with django_capture_on_commit_callbacks(execute=False) as sent:
        run()
    rows = {(r.worker.worker_id if r.worker else None, r.state, r.retiring) for r in Replica.objects.all()}
    assert rows == {("w1", "unloading", True), ("w2", "ready", False)}
    assert routed_workers() == {"w2"}  # out of routing at once...
    assert worker_serving("w1") == 0 and worker_serving("w2") == 1
    assert not sent
    with django_capture_on_commit_callbacks(execute=False) as sent:
        reconcile_once(now=time.time() + 10)  # ...and unloaded after the grace period
    rows = {(r.worker.worker_id if r.worker else None, r.state, r.retiring) for r in Replica.objects.all()}
    assert rows == {("w2", "ready", False)}
    assert sent


def test_a_ready_replica_no_longer_wanted_leaves_routing_before_it_is_unloaded(
    deployment, django_capture_on_commit_callbacks
):
    import time

    deployment.min_replicas = 1
    deployment.save()
    WorkerFactory.create(worker_id="w1")
    reconcile_once()
    replica = Replica.objects.get()
    assert replica.worker is not None
    report_hosted(replica.worker, "ready")
    reconcile_once()
    deployment.traffic = {}
    deployment.save()
    now = time.time()
    with django_capture_on_commit_callbacks(execute=False) as sent:
        reconcile_once(now=now)
    replica = Replica.objects.get()
    assert (replica.state, replica.retiring) == ("unloading", True)
    assert not sent
    with django_capture_on_commit_callbacks(execute=False) as sent:
        reconcile_once(now=now + 5)
    assert not Replica.objects.exists()
    assert sent


def _rows() -> set[tuple[str | None, int, str, bool]]:
    return {
        (r.worker.worker_id if r.worker else None, r.index, r.state, r.retiring)
        for r in Replica.objects.select_related("worker")
    }


def test_scaling_back_up_within_the_grace_never_lands_on_the_copy_being_unloaded(deployment):
    import time

    w1, w2 = WorkerFactory.create(worker_id="w1"), WorkerFactory.create(worker_id="w2")
    now = time.time()
    run(now)
    for worker in (w1, w2):
        report_hosted(worker, "ready", at=now + 0.5)
    run(now + 1)
    deployment.min_replicas = deployment.max_replicas = 1
    deployment.autoscale = {}
    deployment.save()
    run(now + 2)
    leaving = next(r for r in Replica.objects.select_related("worker") if r.retiring)
    assert leaving.state == "unloading" and leaving.worker is not None
    deployment.min_replicas = deployment.max_replicas = 2
    deployment.autoscale = {}
    deployment.save()
    run(now + 3)  # within the grace: the version's leaving copy still holds that worker
    assert (leaving.worker.worker_id, 1, "loading", False) not in _rows()
    assert (None, 1, "pending", False) in _rows()
    run(now + 10)  # unloaded after the grace...
    assert not Replica.objects.filter(retiring=True).exists()
    run(now + 11)  # ...then placed there again
    assert (leaving.worker.worker_id, 1, "loading", False) in _rows()
    assert not Replica.objects.filter(retiring=True).exists()


def test_a_ready_replica_its_worker_no_longer_reports_is_placed_again(deployment):
    deployment.min_replicas = 1
    deployment.save()
    worker = WorkerFactory.create(worker_id="w1")
    run()
    report_hosted(worker, "ready")
    run()
    assert Replica.objects.get().state == "ready"
    worker.hosted = []  # restarted under the same id, empty
    worker.save()
    run()
    assert Replica.objects.get().state == "loading"  # placed (and loaded) again


def test_a_load_never_reported_counts_as_failed_after_the_timeout(deployment, settings):
    import time

    settings.BERTH_LOAD_TIMEOUT_S = 60
    deployment.min_replicas = 1
    deployment.save()
    worker = WorkerFactory.create(worker_id="w1")
    now = time.time()
    run(now)
    worker.hosted = []
    worker.last_heartbeat_at = __import__("datetime").datetime.fromtimestamp(now + 30, tz=__import__("datetime").UTC)
    worker.save()
    run(now + 30)
    assert Replica.objects.get().state == "loading"
    worker.last_heartbeat_at = __import__("datetime").datetime.fromtimestamp(now + 61, tz=__import__("datetime").UTC)
    worker.save()
    run(now + 61)
    replica = Replica.objects.get()
    assert replica.state == "pending" and replica.attempts == 1 and "no word of the load" in replica.reason


def test_an_undrained_worker_keeps_its_replica_when_no_replacement_was_placed(deployment, staff_user):
    from apps.deployments.services import worker_drain
    from apps.tenants.access import Actor

    deployment.min_replicas = 1
    deployment.save()
    worker = WorkerFactory.create(worker_id="only")
    run()
    report_hosted(worker, "ready")
    run()
    worker_drain(actor=Actor(user=staff_user), worker=worker)
    run()
    assert _rows() == {("only", 0, "ready", True), (None, 0, "pending", False)}  # nowhere to go
    worker_drain(actor=Actor(user=staff_user), worker=Worker.objects.get(pk=worker.pk), drain=False)
    run()
    assert _rows() == {("only", 0, "ready", False)}


def test_a_model_no_replica_wants_is_unloaded_from_a_live_worker(deployment, django_capture_on_commit_callbacks):
    deployment.delete()
    worker = WorkerFactory.create(worker_id="w1")
    report_hosted(worker, "ready")  # e.g. it was marked dead by mistake and came back
    with django_capture_on_commit_callbacks(execute=False) as sent:
        run()
    assert len(sent) == 1
    with django_capture_on_commit_callbacks(execute=False) as again:
        run()
    assert not again  # not re-sent every pass


def _second_model(world_a, name: str, footprint: int) -> Deployment:
    model = Model.objects.create(tenant=world_a.tenant, name=name)
    ModelVersion.objects.create(
        model=model, number=1, artifact=f"alpha/{name}/1", sha256="b" * 64, size_bytes=1, format="onnx",
        status=ModelVersion.Status.READY, batched=True, max_batch_size=16, footprint_bytes=footprint,
    )  # fmt: skip
    return Deployment.objects.create(model=model, traffic={"1": 100}, min_replicas=1, max_replicas=1)


def test_an_idle_scale_to_zero_replica_is_evicted_lru_for_one_that_must_load(deployment, world_a, settings):
    import time
    from datetime import UTC, datetime, timedelta

    from django.utils import timezone

    from apps.gateway.services import deployment_cold_start

    settings.BERTH_EVICT_CHURN_GUARD_S = 300
    now = time.time()
    deployment.min_replicas = deployment.max_replicas = 1
    deployment.scale_to_zero_after_s = 3600  # may go to zero, but not idle that long yet
    deployment.last_request_at = timezone.now() - timedelta(minutes=10)
    deployment.save()
    only = WorkerFactory.create(worker_id="only", capacity_bytes=150 * MiB)
    assert run(now).loads == 1
    report_hosted(only, "ready")
    run(now)
    Replica.objects.update(last_used_at=datetime.fromtimestamp(now - 600, tz=UTC))
    assert Replica.objects.get().state == "ready"
    other = _second_model(world_a, "reg", 100 * MiB)  # must load; no room beside the idle one
    report = run(now)
    assert report.loads == 1
    (row,) = Replica.objects.all()
    assert row.deployment == other and row.state == "loading"
    deployment.refresh_from_db()
    assert deployment.autoscale["1"]["evicted_at"] == now
    assert run(now + 5).loads == 0 and Replica.objects.count() == 1  # clf stays at zero
    only.hosted, only.last_heartbeat_at = [], timezone.now()  # the worker unloaded clf
    only.save()
    # A request asks for clf again: it wants its replica back (pending: reg holds the room).
    assert deployment_cold_start(deployment_id=deployment.pk)
    run(now + 6)
    clf = Replica.objects.get(deployment=deployment)
    assert clf.state == "pending" and "MiB" in clf.reason


def test_a_replica_used_within_the_churn_guard_is_not_evicted(deployment, world_a, settings):
    import time
    from datetime import UTC, datetime

    settings.BERTH_EVICT_CHURN_GUARD_S = 300
    now = time.time()
    deployment.min_replicas = deployment.max_replicas = 1
    deployment.scale_to_zero_after_s = 3600
    deployment.last_request_at = datetime.fromtimestamp(now - 60, tz=UTC)
    deployment.save()
    only = WorkerFactory.create(worker_id="only", capacity_bytes=150 * MiB)
    run(now)
    report_hosted(only, "ready")
    run(now)
    Replica.objects.update(last_used_at=datetime.fromtimestamp(now - 60, tz=UTC))
    other = _second_model(world_a, "reg", 100 * MiB)
    run(now)
    assert Replica.objects.get(deployment=other).state == "pending"
    assert Replica.objects.get(deployment=deployment).state == "ready"


def test_headroom_is_kept_free_on_each_device(deployment, settings):
    settings.BERTH_DEVICE_HEADROOM_MB = {"cpu": 64, "cuda": 512}
    deployment.min_replicas = deployment.max_replicas = 1
    deployment.save()
    WorkerFactory.create(worker_id="snug", capacity_bytes=150 * MiB)  # 100 MiB fits, not with 64 kept
    run()
    assert Replica.objects.get().state == "pending"
    settings.BERTH_DEVICE_HEADROOM_MB = {"cpu": 32, "cuda": 512}
    run()
    assert Replica.objects.get().state == "loading"


def test_scaling_down_drops_a_pending_copy_before_a_ready_one(deployment, settings):
    import time

    settings.BERTH_SCALE_DOWN_STABILISATION_S = 0
    deployment.min_replicas, deployment.max_replicas = 2, 2
    deployment.save()
    only = WorkerFactory.create(worker_id="w1")
    now = time.time()
    run(now)  # index 0 loads on w1; index 1 cannot go on the same device: pending
    report_hosted(only, "ready")
    run(now + 1)
    states = dict(Replica.objects.values_list("index", "state"))
    assert states == {0: "ready", 1: "pending"}
    Replica.objects.filter(index=0).update(index=5)  # the ready copy is not index 0
    Replica.objects.filter(index=1).update(index=0)
    deployment.min_replicas = deployment.max_replicas = 1
    deployment.save()
    run(now + 2)
    (kept,) = Replica.objects.all()
    assert kept.state == "ready" and kept.index == 5


def test_each_replica_learns_when_it_was_last_used_from_its_workers_heartbeats(deployment):
    import time

    deployment.min_replicas = deployment.max_replicas = 1
    deployment.save()
    worker = WorkerFactory.create(worker_id="w1")
    run()
    report_hosted(worker, "ready")
    used = time.time() - 42
    worker.hosted[0]["last_used_at"] = used
    worker.save()
    run()
    replica = Replica.objects.get()
    assert replica.state == "ready" and replica.last_used_at is not None
    assert abs(replica.last_used_at.timestamp() - used) < 0.01


def test_a_worker_marked_dead_asks_for_a_reconcile_at_once(deployment, django_capture_on_commit_callbacks):
    from datetime import timedelta

    from django.utils import timezone

    from apps.deployments.services import worker_mark_missing

    WorkerFactory.create(worker_id="w1", last_heartbeat_at=timezone.now() - timedelta(seconds=60))
    with django_capture_on_commit_callbacks() as callbacks:
        assert worker_mark_missing(now=timezone.now(), interval_s=2, missed=3) == 1
    assert len(callbacks) == 1  # the reconcile task, queued after commit


def test_the_next_replica_is_sized_by_what_a_loaded_one_measured_on_that_kind(
    deployment, sent_tasks, django_capture_on_commit_callbacks
):
    from inference_workers.types import LOAD_TASK

    deployment.min_replicas = deployment.max_replicas = 1
    deployment.save()
    first = WorkerFactory.create(worker_id="w1")
    WorkerFactory.create(worker_id="w2")
    with django_capture_on_commit_callbacks(execute=True):
        reconcile_once()
    (name, _, message), *_ = sent_tasks
    assert name == LOAD_TASK and message["reservation_bytes"] == 100 * MiB  # the registry's measure
    loaded = Replica.objects.get().worker
    assert loaded is not None
    report_hosted(loaded, "ready")  # the worker measured 120 MiB
    reconcile_once()
    deployment.min_replicas = deployment.max_replicas = 2
    deployment.save()
    sent_tasks.clear()
    with django_capture_on_commit_callbacks(execute=True):
        reconcile_once()
    loads = [message for name, _, message in sent_tasks if name == LOAD_TASK]
    assert [m["reservation_bytes"] for m in loads] == [120 * MiB]
    assert Replica.objects.get(index=1).reserved_bytes == 120 * MiB
    del first
