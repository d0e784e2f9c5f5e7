import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from tests.apps.deployments.factories import WorkerFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/workers/"


def test_staff_see_every_worker_with_heartbeat_age(staff_user):
    WorkerFactory(worker_id="alpha")
    WorkerFactory(worker_id="beta")
    client = APIClient()
    client.force_authenticate(staff_user)
    response = client.get(URL)
    assert response.status_code == 200
    rows = response.json()
    assert [row["worker_id"] for row in rows] == ["alpha", "beta"]
    assert 0.5 < rows[0]["last_heartbeat_age_s"] < 30
    assert rows[0]["capacity_bytes"] == 4 * 1024**3
    assert rows[0]["reserved_bytes"] == 0 and rows[0]["hosted"] == []


def test_each_device_shows_what_placement_may_reserve_on_it(staff_user, settings):
    settings.BERTH_DEVICE_HEADROOM_MB = {"cpu": 0, "cuda": 512}
    WorkerFactory(worker_id="cpu-1", device_kind="cpu", capacity_bytes=4 * 1024**3)
    WorkerFactory(worker_id="gpu-1", device_kind="cuda", capacity_bytes=80 * 1024**3)
    client = APIClient()
    client.force_authenticate(staff_user)
    rows = {row["worker_id"]: row for row in client.get(URL).json()}
    assert rows["cpu-1"]["allocatable_bytes"] == 4 * 1024**3
    assert rows["gpu-1"]["allocatable_bytes"] == 80 * 1024**3 - 512 * 1024**2  # a CUDA context's headroom


def test_non_staff_are_refused(plain_user):
    client = APIClient()
    client.force_authenticate(plain_user)
    response = client.get(URL)
    assert response.status_code == 403
    assert "permission" in response.json()["error"]


def test_anonymous_callers_are_told_to_authenticate():
    response = APIClient().get(URL)
    assert response.status_code == 401
    assert "authentication" in response.json()["error"]


def test_basic_auth_works_for_scripts(staff_user):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Basic b3BlcmF0b3I6cHctb3BlcmF0b3ItMQ==")  # operator:pw-operator-1
    assert client.get(URL).status_code == 200


def test_listing_costs_the_same_queries_for_1_and_20_workers(staff_user):
    client = APIClient()
    client.force_authenticate(staff_user)
    WorkerFactory()
    with CaptureQueriesContext(connection) as one:
        client.get(URL)
    WorkerFactory.create_batch(19)
    with CaptureQueriesContext(connection) as twenty:
        response = client.get(URL)
    assert len(response.json()) == 20
    assert len(twenty) == len(one) <= 3


def test_staff_drain_a_worker_and_take_it_back_and_heartbeats_do_not_undo_it(staff_user, plain_user):
    import time

    from apps.deployments.models import Worker
    from apps.deployments.services import worker_record_heartbeat
    from apps.tenants.models import AuditEvent
    from inference_workers.types import DeviceState, WorkerHeartbeat

    WorkerFactory(worker_id="alpha")
    client = APIClient()
    client.force_authenticate(plain_user)
    assert client.post(f"{URL}alpha/drain/").status_code == 403
    client.force_authenticate(staff_user)
    assert client.post(f"{URL}nobody/drain/").status_code == 404
    drained = client.post(f"{URL}alpha/drain/")
    assert drained.status_code == 200
    assert drained.json()["state"] == "draining" and drained.json()["drain_requested_at"]
    assert AuditEvent.objects.filter(action="worker.drain", target="alpha").exists()
    heartbeat = WorkerHeartbeat(
        worker_id="alpha",
        host="h",
        dataplane_url="http://127.0.0.1:1",
        queue="worker.alpha",
        state="ready",
        sent_at=time.time(),
        device=DeviceState(kind="cpu", index=0, name="cpu", uuid="", total_bytes=1, used_bytes=0, free_bytes=1),
        models=(),
    )
    worker_record_heartbeat(heartbeat=heartbeat)
    assert Worker.objects.get(worker_id="alpha").state == "draining"
    back = client.delete(f"{URL}alpha/drain/")
    assert back.status_code == 200 and back.json()["state"] == "ready"
