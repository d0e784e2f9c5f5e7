import socket
import threading
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from apps.deployments.models import Worker
from apps.deployments.services import dataplane_refuses, worker_mark_missing, worker_record_heartbeat
from apps.deployments.tasks import worker_heartbeat
from inference_workers.types import DeviceState, WorkerHeartbeat
from tests.apps.deployments.factories import WorkerFactory

pytestmark = pytest.mark.django_db


def _heartbeat(*, sent_at: float, used: int = 100, state: str = "ready") -> WorkerHeartbeat:
    return WorkerHeartbeat(
        worker_id="w-1",
        host="10.0.0.5",
        dataplane_url="http://10.0.0.5:9100",
        queue="worker.w-1",
        state=state,  # type: ignore[arg-type]
        device=DeviceState(
            kind="cuda",
            index=0,
            name="H200",
            uuid="GPU-abc",
            total_bytes=1000,
            used_bytes=used,
            free_bytes=1000 - used,
            utilisation_pct=40.0,
        ),
        sent_at=sent_at,
    )


def test_first_heartbeat_registers_the_worker():
    now = timezone.now().timestamp()
    worker = worker_record_heartbeat(heartbeat=_heartbeat(sent_at=now))
    assert Worker.objects.count() == 1
    assert worker.device_kind == "cuda" and worker.device_uuid == "GPU-abc"
    assert worker.capacity_bytes == 1000 and worker.used_bytes == 100
    assert worker.state == Worker.State.READY


def test_later_heartbeat_updates_and_an_older_one_changes_nothing():
    now = timezone.now().timestamp()
    worker_record_heartbeat(heartbeat=_heartbeat(sent_at=now - 4, used=100))
    worker_record_heartbeat(heartbeat=_heartbeat(sent_at=now - 2, used=300, state="draining"))
    worker_record_heartbeat(heartbeat=_heartbeat(sent_at=now - 3, used=999))  # delivered late
    worker = Worker.objects.get()
    assert worker.used_bytes == 300
    assert worker.state == Worker.State.DRAINING


def test_a_heartbeat_from_the_future_is_clamped_to_now():
    worker = worker_record_heartbeat(heartbeat=_heartbeat(sent_at=timezone.now().timestamp() + 3600))
    assert worker.last_heartbeat_at <= timezone.now()


def test_a_dead_worker_comes_back_ready_with_its_next_heartbeat():
    WorkerFactory(worker_id="w-1", state=Worker.State.DEAD, last_heartbeat_at=timezone.now() - timedelta(minutes=5))
    worker_record_heartbeat(heartbeat=_heartbeat(sent_at=timezone.now().timestamp()))
    assert Worker.objects.get().state == Worker.State.READY


def test_workers_silent_for_three_intervals_are_marked_dead():
    now = timezone.now()
    WorkerFactory(worker_id="fresh", last_heartbeat_at=now - timedelta(seconds=5))
    WorkerFactory(worker_id="silent", last_heartbeat_at=now - timedelta(seconds=7))
    listening = lambda url: False  # noqa: E731 — both data planes answer: the heartbeat rule alone
    assert worker_mark_missing(now=now, interval_s=2.0, missed=3, refuses=listening) == 1
    assert Worker.objects.get(worker_id="fresh").state == Worker.State.READY
    assert Worker.objects.get(worker_id="silent").state == Worker.State.DEAD
    assert worker_mark_missing(now=now, interval_s=2.0, missed=3, refuses=listening) == 0  # idempotent


def test_a_late_worker_whose_data_plane_refuses_connections_is_dead_without_waiting_three_beats():
    with socket.socket() as alive, socket.socket() as gone:
        alive.bind(("127.0.0.1", 0))
        alive.listen()  # never accepts: a busy worker's listening socket still takes the connection
        gone.bind(("127.0.0.1", 0))  # bound, not listening: a connection to it is refused
        now = timezone.now()
        url = "http://127.0.0.1:{}".format
        WorkerFactory(
            worker_id="busy", dataplane_url=url(alive.getsockname()[1]), last_heartbeat_at=now - timedelta(seconds=3)
        )
        WorkerFactory(
            worker_id="killed", dataplane_url=url(gone.getsockname()[1]), last_heartbeat_at=now - timedelta(seconds=3)
        )
        WorkerFactory(
            worker_id="on-time", dataplane_url=url(gone.getsockname()[1]), last_heartbeat_at=now - timedelta(seconds=1)
        )
        WorkerFactory(worker_id="no-host", dataplane_url="http://:9", last_heartbeat_at=now - timedelta(seconds=3))
        started = time.monotonic()
        assert worker_mark_missing(now=now, interval_s=2.0, missed=3) == 1
        assert time.monotonic() - started < 2  # probes in parallel, each bounded
    states = dict(Worker.objects.values_list("worker_id", "state"))
    assert states == {"busy": "ready", "killed": "dead", "on-time": "ready", "no-host": "ready"}


def test_a_data_plane_that_refuses_once_then_listens_is_not_called_gone():
    with socket.socket() as restarting:
        restarting.bind(("127.0.0.1", 0))  # refuses until it listens
        url = f"http://127.0.0.1:{restarting.getsockname()[1]}"
        assert dataplane_refuses(url, tries=1)
        threading.Timer(0.1, restarting.listen).start()
        assert not dataplane_refuses(url, tries=2, pause_s=0.4)


@pytest.mark.django_db(transaction=True)  # the probe runs on another thread, with its own connection
def test_a_heartbeat_that_lands_during_the_probe_keeps_the_worker_alive():
    worker = WorkerFactory.create(worker_id="w", last_heartbeat_at=timezone.now() - timedelta(seconds=4))

    def refuses_while_it_beats(url: str) -> bool:
        Worker.objects.filter(pk=worker.pk).update(last_heartbeat_at=timezone.now())
        connection.close()  # this thread's own; left open it would outlive the test database
        return True

    assert worker_mark_missing(now=timezone.now(), interval_s=2.0, missed=3, refuses=refuses_while_it_beats) == 0
    assert Worker.objects.get().state == Worker.State.READY


def test_heartbeat_task_drops_a_malformed_message_without_writing(caplog):
    worker_heartbeat({"worker_id": "x"})
    assert Worker.objects.count() == 0
    assert "malformed heartbeat" in caplog.text


def test_heartbeat_task_records_a_good_message():
    worker_heartbeat(_heartbeat(sent_at=timezone.now().timestamp()).to_message())
    assert Worker.objects.filter(worker_id="w-1").exists()


def test_a_heartbeat_records_hosted_models_and_their_reservations():
    from inference_workers.types import HostedModel, ModelKey

    beat = _heartbeat(sent_at=timezone.now().timestamp())
    models = (
        HostedModel(
            key=ModelKey("acme", "clf", 2),
            state="ready",
            reserved_bytes=300,
            measured_bytes=280,
            inflight=3,
            p50_ms=1.5,
        ),
        HostedModel(
            key=ModelKey("acme", "bad", 1), state="failed", reserved_bytes=0, measured_bytes=0, reason="sha256 mismatch"
        ),
    )
    worker = worker_record_heartbeat(heartbeat=WorkerHeartbeat(**{**beat.__dict__, "models": models}))
    assert worker.reserved_bytes == 300
    assert [(h["model"], h["state"]) for h in worker.hosted] == [("clf", "ready"), ("bad", "failed")]
    assert worker.hosted[1]["reason"] == "sha256 mismatch" and worker.hosted[0]["inflight"] == 3


def test_a_heartbeat_that_changes_a_models_state_triggers_a_reconcile_after_commit(
    django_capture_on_commit_callbacks,
):
    from inference_workers.types import HostedModel, ModelKey

    def beat(at: float, state: str | None) -> WorkerHeartbeat:
        models = () if state is None else (HostedModel(ModelKey("acme", "clf", 1), state, 100, 100),)  # type: ignore[arg-type]
        return WorkerHeartbeat(**{**_heartbeat(sent_at=at).__dict__, "models": models})

    now = timezone.now().timestamp()
    worker_record_heartbeat(heartbeat=beat(now - 10, "loading"))
    for at, state, triggers in (
        (now - 8, "loading", False),  # nothing changed: the beat's pass will do
        (now - 6, "ready", True),  # loaded
        (now - 4, "ready", False),
        (now - 2, None, True),  # gone
    ):
        with django_capture_on_commit_callbacks() as callbacks:
            worker_record_heartbeat(heartbeat=beat(at, state))
        assert len(callbacks) == int(triggers), (state, callbacks)
