"""The worker's Celery app as built: its settings and its answers to malformed commands."""

from __future__ import annotations

from pathlib import Path

from inference_workers.control import make_celery_app
from inference_workers.settings import WorkerSettings
from inference_workers.types import LOAD_TASK, UNLOAD_TASK


def test_malformed_commands_are_answered_with_the_reason_not_raised(tmp_path: Path):
    app = make_celery_app(WorkerSettings.from_env({"BERTH_DATA_DIR": str(tmp_path)}))
    loaded = app.tasks[LOAD_TASK].run({"key": {"tenant": "acme"}})
    assert loaded["state"] == "failed" and loaded["reason"].startswith("malformed load command: ")
    unloaded = app.tasks[UNLOAD_TASK].run({"tenant": "acme", "model": 7})
    assert unloaded["unloaded"] is False and unloaded["reason"].startswith("malformed unload command: ")


def test_commands_are_acked_late_and_the_broker_is_never_given_up_on(tmp_path: Path):
    conf = make_celery_app(WorkerSettings.from_env({"BERTH_DATA_DIR": str(tmp_path)})).conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost  # a command a dead worker held is redelivered
    assert conf.worker_prefetch_multiplier == 1
    assert conf.broker_connection_max_retries is None  # a long broker outage does not end the process
