"""A real task round trip through the configured broker (embedded or Redis).

The suite runs once on the embedded defaults and once with CELERY_BROKER_URL=redis://…,
so this one test proves each broker in its run.
"""

import subprocess
import uuid

import pytest
from django.conf import settings

from apps.monitoring.tasks import ping
from tests.conftest import PYTHON, REPO_ROOT, subprocess_env


@pytest.fixture
def control_worker(tmp_path):
    queue = f"roundtrip-{uuid.uuid4().hex[:8]}"
    log = (tmp_path / "worker.log").open("w")
    process = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "celery",
            "-A",
            "control_plane",
            "worker",
            "--queues",
            queue,
            "--pool",
            "solo",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel",
            "INFO",
            "--hostname",
            f"{queue}@%h",
        ],
        cwd=REPO_ROOT,
        env=subprocess_env(DJANGO_SETTINGS_MODULE="control_plane.settings.test"),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    yield queue
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


def test_a_task_goes_to_a_real_worker_and_its_result_comes_back(control_worker):
    nonce = uuid.uuid4().hex
    result = ping.apply_async(args=(nonce,), queue=control_worker)
    assert result.get(timeout=60) == nonce


def test_the_suite_runs_on_the_broker_it_was_asked_for():
    import os

    wanted = os.environ.get("CELERY_BROKER_URL", "")
    if wanted:
        assert wanted == settings.CELERY_BROKER_URL
    else:
        assert settings.CELERY_BROKER_URL == "berthfs://"
        assert settings.CELERY_BROKER_TRANSPORT_OPTIONS["polling_interval"] <= 0.05
