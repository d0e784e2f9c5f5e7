"""The whole platform, booted as `make run` boots it."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time

import httpx
import psutil
import pytest

from tests.e2e.conftest import Platform, boot_platform, stop
from tests.inference_workers import models
from tests.inference_workers.redis_server import RedisServer, needs_redis_server

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


def _cmdline(process: psutil.Process) -> str:
    """A process's command line, or "" for one that is gone (or a zombie) already."""
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


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
    assert len(children) >= 4, [_cmdline(c) for c in children]
    # honcho's convention: stopped by SIGTERM exits 128 + 15.
    assert stop(platform.process) == 143
    time.sleep(0.5)
    left = _alive(children)
    assert left == [], f"orphans after SIGTERM: {[_cmdline(p) for p in left]}"


def test_a_dying_process_stops_the_others_and_the_exit_code_says_so(platform: Platform):
    platform.wait_healthy()
    _wait_for_worker(platform, timeout=10)
    children = platform.descendants()
    inference = [p for p in children if "inference_workers" in _cmdline(p)]
    assert inference, [_cmdline(p) for p in children]
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


def _demo_key(platform: Platform) -> str:
    match = re.search(r"API key (brt_\S+)", platform.log())
    assert match, platform.log()[-2000:]
    return match[1]


def test_the_seeded_demo_model_is_validated_by_the_control_worker(platform: Platform):
    platform.wait_healthy()
    headers = {"Authorization": f"Bearer {_demo_key(platform)}"}
    deadline = time.monotonic() + 90
    while True:
        version = httpx.get(
            f"{platform.base_url}/api/v1/tenants/demo/models/demo-mlp/versions/1/", headers=headers
        ).json()
        if version["status"] != "validating":
            break
        assert time.monotonic() < deadline, "validation never finished"
        time.sleep(0.5)
    assert version["status"] == "ready", version
    assert version["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert version["footprint_bytes"] > 0


def _web_process(platform: Platform) -> psutil.Process:
    for process in platform.descendants():
        if "uvicorn" in _cmdline(process):
            return process
    raise AssertionError("no uvicorn process")


def test_a_500_mb_upload_streams_without_holding_it_in_memory(platform: Platform):
    platform.wait_healthy()
    with platform.admin() as admin:
        assert admin.patch("/api/v1/tenants/demo/quota/", json={"max_artifact_mb": 600}).status_code == 200
    web = _web_process(platform)
    baseline = web.memory_info().rss
    peak = baseline
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, web.memory_info().rss)
            time.sleep(0.02)

    boundary = "berthboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    chunk = os.urandom(1024**2)
    size = 500

    def body():
        yield head
        for _ in range(size):
            yield chunk
        yield tail

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        response = httpx.post(
            f"{platform.base_url}/api/v1/tenants/demo/models/big/versions/",
            content=body(),
            headers={
                "Authorization": f"Bearer {_demo_key(platform)}",
                "Content-Type": f"multipart/form-data; boundary={boundary}",
                "Content-Length": str(len(head) + size * len(chunk) + len(tail)),
            },
            timeout=300,
        )
    finally:
        done.set()
        watcher.join()
    assert response.status_code == 202, response.text
    assert response.json()["size_bytes"] == size * 1024**2
    growth = peak - baseline
    assert growth < 64 * 1024**2, f"the server grew by {growth / 1024**2:.0f} MiB during a 500 MiB upload"


def test_an_upload_over_the_tenant_limit_is_refused_before_the_body_is_read(platform: Platform):
    platform.wait_healthy()
    port = int(platform.base_url.rsplit(":", 1)[1])
    key = _demo_key(platform)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            (
                f"POST /api/v1/tenants/demo/models/huge/versions/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Bearer {key}\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                f"Content-Length: {2 * 1024**3}\r\n\r\n"
            ).encode()
        )
        sock.sendall(b"--x\r\n" + b"\0" * 1024)  # a first sliver; the other 2 GiB never come
        chunks = []
        while chunk := sock.recv(65536):  # headers and body may come in separate segments
            chunks.append(chunk)
        reply = b"".join(chunks).decode(errors="replace")
    assert reply.startswith("HTTP/1.1 413"), reply
    assert "max_artifact_mb" in reply


def _deploy_demo(platform: Platform, headers: dict[str, str]) -> list[dict]:
    """Waits for the demo model's validation, deploys it, and returns its ready replicas."""
    base = f"{platform.base_url}/api/v1/tenants/demo/models/demo-mlp"
    deadline = time.monotonic() + 120
    while httpx.get(f"{base}/versions/1/", headers=headers).json()["status"] == "validating":
        assert time.monotonic() < deadline, "validation never finished"
        time.sleep(0.5)
    deployed = httpx.put(f"{base}/deployment/", headers=headers, json={"traffic": {"1": 100}, "min_replicas": 1})
    assert deployed.status_code == 200, deployed.text
    while True:
        replicas = httpx.get(f"{base}/deployment/", headers=headers).json()["replicas"]
        if replicas and replicas[0]["state"] in ("ready", "failed"):
            break
        assert time.monotonic() < deadline, f"no ready replica: {replicas}\n{platform.log()[-3000:]}"
        time.sleep(0.5)
    assert replicas[0]["state"] == "ready", replicas
    return replicas


def test_deploying_the_demo_model_loads_it_on_the_worker(platform: Platform):
    platform.wait_healthy()
    headers = {"Authorization": f"Bearer {_demo_key(platform)}"}
    base = f"{platform.base_url}/api/v1/tenants/demo/models/demo-mlp"
    replicas = _deploy_demo(platform, headers)
    deadline = time.monotonic() + 120
    assert replicas[0]["worker"] == platform.worker_id
    # The worker serves it on its data plane, to the holder of the worker token.
    worker = _wait_for_worker(platform, timeout=10)
    token = (platform.log_path.parent / "var" / "worker-token").read_text().strip()
    body = {"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": [0.5] * 8}]}
    answer = httpx.post(
        f"{worker['dataplane_url']}/v2/models/demo.demo-mlp/infer",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["shape"] == [2, 3]
    # Undeploying unloads it.
    assert httpx.delete(f"{base}/deployment/", headers=headers).status_code == 204
    while (
        httpx.post(
            f"{worker['dataplane_url']}/v2/models/demo.demo-mlp/infer",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        ).status_code
        != 404
    ):
        assert time.monotonic() < deadline, "the model was never unloaded"
        time.sleep(0.5)


def test_a_killed_workers_replica_is_ready_on_another_worker_within_10_s(platform: Platform, tmp_path):
    import subprocess

    from tests.conftest import PYTHON, REPO_ROOT

    platform.wait_healthy()
    spare_id = f"{platform.worker_id}-z"  # sorts last: the empty device placement opens first
    stop_load = threading.Event()
    with (tmp_path / "spare.log").open("wb") as log:
        spare = subprocess.Popen(
            [PYTHON, "-m", "inference_workers", "--device", "cpu", "--worker-id", spare_id],
            cwd=REPO_ROOT,
            env=platform.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        headers = {"Authorization": f"Bearer {_demo_key(platform)}"}
        base = f"{platform.base_url}/api/v1/tenants/demo/models/demo-mlp"
        deadline = time.monotonic() + 120
        with platform.admin() as admin:
            quota = {"requests_per_second": 100_000, "max_concurrent_requests": 1000}  # the load is not refused
            assert admin.patch("/api/v1/tenants/demo/quota/", json=quota).status_code == 200
            while len([w for w in admin.get("/api/v1/workers/").json() if w["state"] == "ready"]) < 2:
                assert time.monotonic() < deadline, "the spare worker never registered"
                time.sleep(0.2)
        while httpx.get(f"{base}/versions/1/", headers=headers).json()["status"] == "validating":
            assert time.monotonic() < deadline
            time.sleep(0.3)
        httpx.put(f"{base}/deployment/", headers=headers, json={"traffic": {"1": 100}, "min_replicas": 1})

        def replica() -> dict:
            replicas = httpx.get(f"{base}/deployment/", headers=headers).json()["replicas"]
            return replicas[0] if replicas else {}

        while replica().get("state") != "ready":
            assert time.monotonic() < deadline, replica()
            time.sleep(0.2)
        assert replica()["worker"] == spare_id
        # Under load: two clients keep calling the model through the gateway across the kill.
        answers: list[tuple[float, int, str]] = []
        one_row = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}

        def load() -> None:
            with httpx.Client(timeout=60) as client:
                while not stop_load.is_set():
                    sent_at = time.monotonic()
                    answer = client.post(f"{platform.base_url}/v2/models/demo-mlp/infer", json=one_row, headers=headers)
                    answers.append((sent_at, answer.status_code, answer.text))

        clients = [threading.Thread(target=load, daemon=True) for _ in range(2)]
        for client in clients:
            client.start()
        time.sleep(1.5)
        cold_starts = platform.metric("berth_gateway_cold_starts_total", tenant="demo", model="demo-mlp")
        spare.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        while not (replica().get("state") == "ready" and replica().get("worker") == platform.worker_id):
            assert time.monotonic() - killed_at < 10, f"not ready elsewhere within 10 s: {replica()}"
            time.sleep(0.2)
        recovered_at = time.monotonic()
        time.sleep(2.0)
        stop_load.set()
        for client in clients:
            client.join(timeout=60)
        before = [code for sent_at, code, _ in answers if sent_at < killed_at]
        # 502: in flight at the kill, not retried; 503: sent just before the kill but reaching
        # the gateway after it, when the dead worker was the only replica (connection refused).
        assert before and set(before) <= {200, 502, 503}, before
        # Between the kill and the new replica: answered (a cold start waits for the new
        # replica) or refused clearly; never a 500, never a hang.
        for _, code, text in answers:
            assert code in (200, 502, 503), (code, text)
            if code != 200:
                assert "error" in text
        after = [code for sent_at, code, _ in answers if sent_at > recovered_at + 1.0]
        assert len(after) > 10 and set(after) == {200}, after
        # Its only replica unreachable (suspect), the gateway asked for a cold start and the
        # requests that waited for it were answered by the new replica.
        assert platform.metric("berth_gateway_cold_starts_total", tenant="demo", model="demo-mlp") > cold_starts
        waited = [code for sent_at, code, _ in answers if killed_at < sent_at < recovered_at]
        assert 200 in waited, waited
    finally:
        stop_load.set()
        if spare.poll() is None:
            spare.kill()
        spare.wait()


@needs_redis_server
def test_a_broker_restart_leaves_every_process_up_serving_and_taking_commands_again(tmp_path):
    """The platform on a Redis broker of its own, which restarts (empty, as one without
    persistence does) while the control worker validates an upload: inference never stops,
    no process exits, the validation ends and is recorded, and once the broker is back a
    control command (an undeploy) reaches the worker again."""
    server = RedisServer(tmp_path / "redis")
    try:
        with boot_platform(tmp_path, CELERY_BROKER_URL=server.url, CELERY_RESULT_BACKEND=server.url) as platform:
            platform.wait_healthy()
            headers = {"Authorization": f"Bearer {_demo_key(platform)}"}
            _deploy_demo(platform, headers)
            infer = f"{platform.base_url}/v2/models/demo-mlp/infer"
            body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [0.5] * 4}]}
            assert httpx.post(infer, json=body, headers=headers).status_code == 200
            before = _alive(platform.descendants())
            # An upload of a model that takes a tenth of a second a call: its validation (the
            # sandbox runs it some fifty times) is a late-acknowledged task the control worker
            # holds for seconds, while the broker goes.
            slow = models.slow_torchscript(tmp_path / "slow.pt", rounds=60)
            specs = {
                "inputs": json.dumps([{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]),
                "outputs": json.dumps([{"name": "output", "datatype": "FP32", "shape": [-1, 4]}]),
            }
            versions = f"{platform.base_url}/api/v1/tenants/demo/models/slow/versions/"
            with platform.admin() as admin:
                uploaded = admin.post(versions, files={"file": ("slow.pt", slow.read_bytes())}, data=specs, timeout=60)
            assert uploaded.status_code == 202, uploaded.text
            deadline = time.monotonic() + 30
            while not any(b"validate_model_version" in raw for raw in server.client().hvals("unacked")):
                assert time.monotonic() < deadline, "the validation never began:\n" + platform.log()[-4000:]
                time.sleep(0.02)
            server.stop()
            with platform.admin() as admin:
                assert admin.get(f"{versions}1/").json()["status"] == "validating"  # still running
            down_until = time.monotonic() + 4.0
            answers = []
            while time.monotonic() < down_until:  # inference needs no broker
                answers.append(httpx.post(infer, json=body, headers=headers, timeout=30).status_code)
                time.sleep(0.1)
            assert set(answers) == {200}, answers
            server.start()
            deadline = time.monotonic() + 120
            with platform.admin() as admin:
                while (status := admin.get(f"{versions}1/").json()["status"]) == "validating":
                    assert time.monotonic() < deadline, "the validation never ended:\n" + platform.log()[-4000:]
                    time.sleep(0.3)
            assert status == "ready", status
            # Commands flow again: the undeploy's unload reaches the worker through the new broker.
            worker = _wait_for_worker(platform, timeout=10)
            token = (platform.log_path.parent / "var" / "worker-token").read_text().strip()
            on_worker = f"{worker['dataplane_url']}/v2/models/demo.demo-mlp/infer"
            worker_headers = {"Authorization": f"Bearer {token}"}
            assert httpx.post(on_worker, json=body, headers=worker_headers).status_code == 200
            base = f"{platform.base_url}/api/v1/tenants/demo/models/demo-mlp"
            assert httpx.delete(f"{base}/deployment/", headers=headers).status_code == 204
            deadline = time.monotonic() + 60
            while httpx.post(on_worker, json=body, headers=worker_headers, timeout=30).status_code != 404:
                assert time.monotonic() < deadline, "the undeploy never reached the worker:\n" + platform.log()[-4000:]
                time.sleep(0.3)
            gone = {process.pid for process in before} - {process.pid for process in _alive(before)}
            assert not gone, f"processes {gone} exited across the broker restart:\n{platform.log()[-4000:]}"
            assert platform.process.poll() is None
    finally:
        server.stop()
