"""The whole platform, booted as `make run` boots it."""

from __future__ import annotations

import re
import signal
import time

import httpx
import psutil
import pytest

from tests.e2e.conftest import Platform, stop

pytestmark = pytest.mark.e2e


def _wait_for_worker(platform: Platform, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    with platform.admin() as admin:
        while time.monotonic() < deadline:
            response = admin.get("/api/v1/workers/")
            assert response.status_code == 200, response.text
            for row in response.json():
                if row["worker_id"] == platform.worker_id:
                    return row
            time.sleep(0.2)
    raise AssertionError(f"worker {platform.worker_id} not registered within {timeout}s:\n{platform.log()[-4000:]}")


def _alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            pass
    return alive


def test_boot_register_worker_serve_and_stop_cleanly(platform: Platform):
    platform.wait_healthy()
    health = httpx.get(f"{platform.base_url}/healthz").json()
    assert health == {"database": "ok", "broker": "ok", "status": "ok"}

    started = time.monotonic()
    worker = _wait_for_worker(platform, timeout=10)
    assert time.monotonic() - started < 10
    assert worker["state"] == "ready"
    assert worker["device_kind"] == "cpu"
    assert worker["last_heartbeat_age_s"] < 5

    # The worker's own data plane answers at the URL it registered.
    assert httpx.get(f"{worker['dataplane_url']}/v2/health/live").json() == {"live": True}
    # The gateway answers on the platform's port.
    assert httpx.get(f"{platform.base_url}/v2").json()["name"] == "berth"
    # The console is served with its stylesheet.
    assert httpx.get(f"{platform.base_url}/static/berth/berth.css").status_code == 200
    assert "Berth console" in platform.log()
    # The demo seed printed a working API key for the demo tenant.
    match = re.search(r"API key (brt_\S+)", platform.log())
    assert match, platform.log()[-2000:]
    demo = httpx.get(f"{platform.base_url}/api/v1/tenants/demo/", headers={"Authorization": f"Bearer {match[1]}"})
    assert demo.status_code == 200 and demo.json()["slug"] == "demo"

    children = platform.descendants()
    assert len(children) >= 4, [c.cmdline() for c in children]
    # honcho's convention: stopped by SIGTERM exits 128 + 15.
    assert stop(platform.process) == 143
    time.sleep(0.5)
    left = _alive(children)
    assert left == [], f"orphans after SIGTERM: {[p.cmdline() for p in left]}"


def test_a_dying_process_stops_the_others_and_the_exit_code_says_so(platform: Platform):
    platform.wait_healthy()
    _wait_for_worker(platform, timeout=10)
    children = platform.descendants()
    inference = [p for p in children if "inference_workers" in " ".join(p.cmdline())]
    assert inference, [p.cmdline() for p in children]
    inference[0].send_signal(signal.SIGKILL)
    code = platform.process.wait(timeout=30)
    assert code != 0
    assert "inference stopped" in platform.log()
    time.sleep(0.5)
    assert _alive(children) == []


def test_sigterm_while_the_processes_start_stops_everything(platform: Platform):
    deadline = time.monotonic() + 90
    while "Berth console" not in platform.log():
        assert time.monotonic() < deadline, platform.log()[-3000:]
        assert platform.process.poll() is None, platform.log()[-3000:]
        time.sleep(0.01)
    # honcho is forking the processes right now.
    platform.process.send_signal(signal.SIGTERM)
    children = platform.descendants()
    code = platform.process.wait(timeout=30)
    assert code == 143, platform.log()[-3000:]
    assert "KeyError" not in platform.log()
    time.sleep(0.5)
    assert _alive(children) == []
