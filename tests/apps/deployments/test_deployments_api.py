"""Deployments over REST: create/replace, the canary, quota refusals, undeploy."""

from __future__ import annotations

import pytest

from apps.deployments.models import Deployment
from apps.registry.models import Model, ModelVersion
from apps.tenants.models import AuditEvent

pytestmark = pytest.mark.django_db

MiB = 1024**2
URL = "/api/v1/tenants/alpha/models/clf/deployment/"


@pytest.fixture
def versions(world_a):
    model = Model.objects.create(tenant=world_a.tenant, name="clf")
    for number in (1, 2):
        ModelVersion.objects.create(
            model=model,
            number=number,
            artifact=f"x/{number}",
            sha256="0" * 64,
            size_bytes=1,
            format="onnx",
            status=ModelVersion.Status.READY,
            batched=True,
            max_batch_size=32,
            footprint_bytes=500 * MiB,
        )
    ModelVersion.objects.create(
        model=model, number=3, artifact="x/3", sha256="0" * 64, size_bytes=1, status=ModelVersion.Status.FAILED
    )
    return model


def test_put_creates_then_get_shows_desired_and_actual(world_a, versions):
    client = world_a.session("member")
    response = client.put(
        URL,
        {
            "traffic": {"1": 100},
            "min_replicas": 1,
            "max_replicas": 3,
            "batching": {"max_batch_size": 16, "max_queue_delay_us": 500},
        },
        format="json",
    )
    assert response.status_code == 200, response.json()
    body = world_a.session("viewer").get(URL).json()
    assert body["traffic"] == {"1": 100} and body["max_replicas"] == 3
    assert body["batching"]["max_batch_size"] == 16
    assert body["replicas"] == []  # none placed yet
    assert body["versions"] == [{"version": "1", "weight": 100, "wanted": 1, "ready": 0}]  # desired vs actual
    assert AuditEvent.objects.filter(action="deployment.create", target="clf").exists()


def test_the_canary_shifts_traffic_then_promotes_or_rolls_back(world_a, versions):
    client = world_a.session("member")
    client.put(URL, {"traffic": {"1": 100}}, format="json")
    for split in ({"1": 90, "2": 10}, {"1": 50, "2": 50}, {"2": 100}, {"1": 100}):
        response = client.patch(URL, {"traffic": split}, format="json")
        assert response.status_code == 200, response.json()
        assert response.json()["traffic"] == split
    assert Deployment.objects.get().min_replicas == 1  # PATCH kept what it did not name


def test_the_canary_steps_shift_promote_and_roll_back_through_their_endpoints(world_a, versions):
    client = world_a.session("member")
    client.put(URL, {"traffic": {"1": 100}}, format="json")
    canary = client.post(URL + "canary/", {"version": 2, "percent": 10}, format="json")
    assert canary.status_code == 200, canary.json()
    assert canary.json()["traffic"] == {"1": 90, "2": 10} and canary.json()["stable_version"] == 1
    assert client.post(URL + "canary/", {"version": 2, "percent": 50}, format="json").json()["traffic"] == {
        "1": 50,
        "2": 50,
    }
    rolled = client.post(URL + "rollback/", {}, format="json").json()
    assert rolled["traffic"] == {"1": 100} and rolled["stable_version"] == 1
    assert client.post(URL + "rollback/", {}, format="json").status_code == 409  # nothing to roll back
    client.post(URL + "canary/", {"version": 2, "percent": 10}, format="json")
    promoted = client.post(URL + "promote/", {}, format="json").json()
    assert promoted["traffic"] == {"2": 100} and promoted["stable_version"] == 2
    assert client.post(URL + "promote/", {}, format="json").status_code == 409  # no canary left
    missing = client.post(URL + "canary/", {"version": 1}, format="json")
    assert missing.status_code == 400 and "percent" in missing.json()["error"]
    # A viewer may read but not steer traffic.
    assert world_a.session("viewer").post(URL + "rollback/", {}, format="json").status_code == 403


def test_another_tenant_cannot_see_or_steer_the_deployment(world_a, world_b, versions):
    world_a.session("member").put(URL, {"traffic": {"1": 90, "2": 10}}, format="json")
    outsider = world_b.session("member")
    assert outsider.get(URL).status_code == 404
    for step in ("canary/", "promote/", "rollback/"):
        assert outsider.post(URL + step, {"version": 2, "percent": 50}, format="json").status_code == 404, step
    assert outsider.put(URL, {"traffic": {"2": 100}}, format="json").status_code == 404
    assert outsider.patch(URL, {"traffic": {"1": 50, "2": 50}, "max_replicas": 3}, format="json").status_code == 404
    assert outsider.delete(URL).status_code == 404
    kept = Deployment.objects.get()
    assert kept.traffic == {"1": 90, "2": 10} and kept.max_replicas == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"traffic": {"1": 60, "2": 30}}, "traffic"),
        ({"traffic": {"9": 100}}, "traffic"),
        ({"traffic": {"3": 100}}, "traffic"),
        ({"traffic": {"one": 100}}, "traffic"),
        ({"traffic": {"1": 100}, "min_replicas": 3, "max_replicas": 1}, "min_replicas"),
        ({"traffic": {"1": 100}, "batching": {"max_batch_size": 64}}, "batching"),
        ({"traffic": {"1": 100}, "batching": {"instance_count": 0}}, "batching"),
    ],
)
def test_bad_specs_are_400_naming_the_field(world_a, versions, body, field):
    response = world_a.session("member").put(URL, body, format="json")
    assert response.status_code == 400
    assert field in response.json()["field_errors"]
    assert not Deployment.objects.exists()


def test_a_deployment_over_the_memory_quota_is_409_naming_need_and_left(world_a, versions, staff_client):
    staff_client.patch("/api/v1/tenants/alpha/quota/", {"cpu_memory_mb": 1200}, format="json")
    client = world_a.session("member")
    response = client.put(URL, {"traffic": {"1": 50, "2": 50}, "min_replicas": 2, "max_replicas": 2}, format="json")
    assert response.status_code == 409
    error = response.json()["error"]
    assert error == (
        "this deployment needs 2000 MiB of cpu memory for 4 replicas (measured footprints x min_replicas); "
        "tenant 'alpha' has 1200 MiB left of its 1200 MiB (cpu_memory_mb)"
    )
    assert (
        client.put(URL, {"traffic": {"1": 100}, "min_replicas": 2, "max_replicas": 2}, format="json").status_code == 200
    )


def test_other_deployments_count_against_the_quota(world_a, versions, staff_client):
    staff_client.patch("/api/v1/tenants/alpha/quota/", {"cpu_memory_mb": 800}, format="json")
    other = Model.objects.create(tenant=world_a.tenant, name="other")
    ModelVersion.objects.create(
        model=other,
        number=1,
        artifact="o/1",
        sha256="0" * 64,
        size_bytes=1,
        status=ModelVersion.Status.READY,
        footprint_bytes=500 * MiB,
    )
    client = world_a.session("member")
    assert (
        client.put("/api/v1/tenants/alpha/models/other/deployment/", {"traffic": {"1": 100}}, format="json").status_code
        == 200
    )
    response = client.put(URL, {"traffic": {"1": 100}}, format="json")
    assert response.status_code == 409 and "300 MiB left" in response.json()["error"]


def test_max_replicas_quota_is_409(world_a, versions, staff_client):
    staff_client.patch("/api/v1/tenants/alpha/quota/", {"max_replicas": 1, "cpu_memory_mb": 100_000}, format="json")
    response = world_a.session("member").put(URL, {"traffic": {"1": 90, "2": 10}}, format="json")
    assert response.status_code == 409
    error = response.json()["error"]
    assert error == "this deployment needs 2 replicas; tenant 'alpha' has 1 left of its max_replicas 1"


def test_a_deployed_version_cannot_be_deleted_until_traffic_moves_away(world_a, versions):
    client = world_a.session("member")
    client.put(URL, {"traffic": {"1": 90, "2": 10}}, format="json")
    refused = client.delete("/api/v1/tenants/alpha/models/clf/versions/2/")
    assert refused.status_code == 409 and "10% of traffic" in refused.json()["error"]
    client.patch(URL, {"traffic": {"1": 100}}, format="json")
    assert client.delete("/api/v1/tenants/alpha/models/clf/versions/2/").status_code == 204


def test_undeploy(world_a, versions):
    client = world_a.session("member")
    client.put(URL, {"traffic": {"1": 100}}, format="json")
    assert client.delete(URL).status_code == 204
    assert client.get(URL).status_code == 404
    assert AuditEvent.objects.filter(action="deployment.delete").exists()


def test_viewers_and_read_keys_cannot_deploy(world_a, versions):
    assert world_a.session("viewer").put(URL, {"traffic": {"1": 100}}, format="json").status_code == 403
    assert world_a.bearer("read").put(URL, {"traffic": {"1": 100}}, format="json").status_code == 403
    assert world_a.bearer("manage").put(URL, {"traffic": {"1": 100}}, format="json").status_code == 200


def test_a_replica_that_cannot_fit_the_fleet_shows_pending_with_its_reason(world_a, versions):
    from apps.deployments.reconcile import reconcile_once

    client = world_a.session("member")
    assert client.put(URL, {"traffic": {"1": 100}, "min_replicas": 1}, format="json").status_code == 200
    reconcile_once()  # no worker in the fleet
    (replica,) = world_a.session("viewer").get(URL).json()["replicas"]
    assert replica["state"] == "pending" and replica["worker"] is None
    assert replica["reason"] == "no cpu device has 500 MiB free (the most free is 0 MiB)"


def test_a_traffic_change_keeps_the_autoscalers_memory_and_a_scaling_change_clears_it(world_a, versions):
    client = world_a.session("member")
    assert client.put(URL, {"traffic": {"1": 100}, "max_replicas": 3}, format="json").status_code == 200
    held = {"replicas": 3, "needed_at": 1.0}
    Deployment.objects.filter(model=versions).update(autoscale={"1": held, "9": held})
    assert client.patch(URL, {"traffic": {"1": 90, "2": 10}}, format="json").status_code == 200
    # A canary step: the held count of version 1 stays (its scale-down waits out its window).
    assert Deployment.objects.get(model=versions).autoscale == {"1": held}
    assert client.patch(URL, {"max_replicas": 2}, format="json").status_code == 200
    assert Deployment.objects.get(model=versions).autoscale == {}  # applies now


def test_the_quota_check_sizes_a_version_by_what_it_measured_on_the_device_kind(world_a, versions, staff_client):
    """Placement sizes the next replica by what a ready one measured on a worker of the kind
    (a torch model on a GPU: far less than the registry's CPU estimate); the 409 agrees."""
    from apps.deployments.models import Replica, Worker
    from tests.apps.deployments.factories import WorkerFactory

    staff_client.patch("/api/v1/tenants/alpha/quota/", {"gpu_memory_mb": 300}, format="json")
    deployment = Deployment.objects.create(model=versions, traffic={"1": 100}, device_kind="cuda")
    gpu = WorkerFactory.create(device_kind=Worker.DeviceKind.CUDA)
    Replica.objects.create(
        deployment=deployment,
        version=versions.versions.get(number=1),
        worker=gpu,
        state=Replica.State.READY,
        reserved_bytes=100 * MiB,
    )
    client = world_a.session("member")
    spec = {"traffic": {"1": 100}, "min_replicas": 2, "max_replicas": 2, "device_kind": "cuda"}
    assert client.put(URL, spec, format="json").status_code == 200  # 2 x 100 MiB, not 2 x 500
    refused = client.put(URL, spec | {"min_replicas": 4, "max_replicas": 4}, format="json")
    assert refused.status_code == 409
    assert refused.json()["error"] == (
        "this deployment needs 400 MiB of cuda memory for 4 replicas (measured footprints x min_replicas); "
        "tenant 'alpha' has 300 MiB left of its 300 MiB (gpu_memory_mb)"
    )
    # Version 2 has never loaded on a GPU: the registry's figure sizes it.
    both = client.put(URL, spec | {"traffic": {"1": 50, "2": 50}, "min_replicas": 1}, format="json")
    assert both.status_code == 409 and "needs 600 MiB of cuda memory for 2 replicas" in both.json()["error"]


@pytest.fixture
def sent_tasks(monkeypatch):
    """The names of the tasks sent to the broker (nothing reaches it)."""
    from control_plane.celery import app

    sent: list[str] = []
    monkeypatch.setattr(app, "send_task", lambda name, *args, **kwargs: sent.append(name))
    return sent


def test_each_deployment_change_and_a_quota_change_ask_for_one_reconcile_after_commit(
    world_a, versions, staff_client, sent_tasks, django_capture_on_commit_callbacks
):
    """A change is acted on at once, not at beat's next pass: after its commit, never before."""
    from control_plane.celery import RECONCILE_TASK

    client = world_a.session("member")
    changes = (
        lambda: client.put(URL, {"traffic": {"1": 100}}, format="json"),
        lambda: client.patch(URL, {"traffic": {"1": 90, "2": 10}}, format="json"),
        lambda: client.post(f"{URL}promote/", {"version": 2}, format="json"),
        lambda: staff_client.patch("/api/v1/tenants/alpha/quota/", {"cpu_memory_mb": 9000}, format="json"),
        lambda: client.delete(URL),
    )
    for change in changes:
        sent_tasks.clear()
        with django_capture_on_commit_callbacks() as callbacks:
            response = change()
            assert sent_tasks == []  # not before the commit
        assert response.status_code in (200, 204), response.content
        for callback in callbacks:
            callback()
        assert sent_tasks.count(RECONCILE_TASK) == 1, (response.request["PATH_INFO"], sent_tasks)


def test_beat_runs_the_reconcile_pass_every_2_s_and_the_dead_worker_sweep_every_second(settings):
    from control_plane.celery import RECONCILE_TASK, WORKERS_MARK_MISSING_TASK, app

    app.loader.import_default_modules()
    schedule = {entry["task"]: entry["schedule"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert schedule[RECONCILE_TASK] == 2.0
    assert schedule[WORKERS_MARK_MISSING_TASK] == 1.0
    assert {RECONCILE_TASK, WORKERS_MARK_MISSING_TASK} <= set(app.tasks)
