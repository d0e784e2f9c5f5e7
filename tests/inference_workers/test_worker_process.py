"""A real inference worker process: commands over Celery, drain on SIGTERM, broker restarts."""

from __future__ import annotations

import http.server
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from celery import Celery

from inference_workers.settings import WorkerSettings
from tests.conftest import PYTHON, REPO_ROOT, subprocess_env
from tests.inference_workers import models
from tests.inference_workers.redis_server import RedisServer, needs_redis_server

pytestmark = pytest.mark.e2e


class Worker:
    def __init__(self, tmp_path: Path, **env: str) -> None:
        self.worker_id = f"w-{uuid.uuid4().hex[:8]}"
        env = {"BERTH_WORKER_HEARTBEAT_S": "0.5", **env}
        self.env = subprocess_env(BERTH_DATA_DIR=str(tmp_path / "var"), BERTH_WORKER_ID=self.worker_id, **env)
        self.env.pop("DJANGO_SETTINGS_MODULE", None)
        self.settings = WorkerSettings.from_env(self.env)
        self.log = tmp_path / f"{self.worker_id}.log"
        self.process = subprocess.Popen(
            [PYTHON, "-m", "inference_workers", "--device", "cpu"],
            cwd=REPO_ROOT,
            env=self.env,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        self.app = self.client()
        self.headers = {"Authorization": f"Bearer {self.settings.token}"}

    def client(self) -> Celery:
        """A Celery app that sends this worker commands and reads their results."""
        broker = self.settings.broker
        # Not the current app: the control plane's shared tasks would otherwise send through
        # this test's broker (a Redis server the broker-restart test stops) in later tests.
        app = Celery("test-commands", fixups=[], set_as_current=False)
        app.conf.update(
            broker_url=broker.url,
            broker_transport_options=broker.transport_options,
            result_backend=broker.result_backend,
            broker_connection_retry_on_startup=True,
        )
        return app

    def command(self, name: str, *args: object, timeout: float = 120) -> dict:
        return self.app.send_task(f"berth.worker.{name}", args=list(args), queue=self.settings.queue).get(
            timeout=timeout, interval=0.05
        )

    def url(self) -> str:
        return self.command("status")["dataplane_url"]

    def log_tail(self, lines: int = 60) -> str:
        """The end of the worker's log, for a failing assertion's message."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def load_message(path: Path, *, model: str, model_format: str = "onnx", **extra: object) -> dict:
    message = {
        "key": {"tenant": "acme", "model": model, "version": 1},
        "artifact_uri": path.as_uri(),
        "sha256": models.sha256_of(path),
        "format": model_format,
        "batching": {"max_batch_size": 8},
        "reservation_bytes": 1 << 20,
    }
    message.update(extra)
    return message


@pytest.fixture(autouse=True)
def _commands_use_the_workers_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    # Celery lets these variables override an app's explicit broker (the Redis CI run sets
    # them); the test's command client must talk to the worker's broker.
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.delenv("CELERY_RESULT_BACKEND", raising=False)


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Worker]:
    running = Worker(tmp_path)
    yield running
    running.stop()


def infer(url: str, headers: dict[str, str], model: str = "acme.doubler", value: float = 1.0) -> httpx.Response:
    body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [value] * 4}]}
    return httpx.post(f"{url}/v2/models/{model}/infer", json=body, headers=headers, timeout=30)


def ready(url: str, headers: dict[str, str], model: str) -> bool:
    return httpx.get(f"{url}/v2/models/{model}/ready", headers=headers, timeout=30).status_code == 200


def test_commands_load_serve_report_and_unload(worker: Worker, model_files):
    result = worker.command("load", load_message(model_files["doubler"], model="doubler"))
    assert result["state"] == "ready" and result["reserved_bytes"] > 0
    again = worker.command("load", load_message(model_files["doubler"], model="doubler"))
    assert again["state"] == "ready"  # idempotent
    url = worker.url()
    assert infer(url, worker.headers).json()["outputs"][0]["data"] == [2.0] * 4
    status = worker.command("status")
    assert [m["key"]["model"] for m in status["models"]] == ["doubler"]
    assert status["models"][0]["requests"] == 1
    bad = worker.command("load", load_message(model_files["doubler"], model="broken", sha256="0" * 64))
    assert bad["state"] == "failed" and "sha256" in bad["reason"]
    assert worker.command("unload", {"tenant": "acme", "model": "doubler", "version": 1})["unloaded"] is True
    assert worker.command("unload", {"tenant": "acme", "model": "doubler", "version": 1})["unloaded"] is False
    assert infer(url, worker.headers).status_code == 404
    assert worker.command("drain")["state"] == "draining"
    assert worker.command("status")["state"] == "draining"


def test_sigterm_drains_in_flight_then_exits(tmp_path):
    worker = Worker(tmp_path, BERTH_WORKER_HANDOVER_S="0")  # the drain alone (the hand-over is below)
    try:
        _drains_in_flight_then_exits(worker, tmp_path)
    finally:
        worker.stop()


def _drains_in_flight_then_exits(worker: Worker, tmp_path: Path) -> None:
    slow = models.slow_torchscript(tmp_path / "slow.pt")
    specs = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 4]}],
    }
    assert (
        worker.command("load", load_message(slow, model="slow", model_format="torchscript", **specs), timeout=300)[
            "state"
        ]
        == "ready"
    )
    url = worker.url()
    assert infer(url, worker.headers, "acme.slow").status_code == 200
    results: list[int] = []

    def call() -> None:
        results.append(infer(url, worker.headers, "acme.slow").status_code)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    gauge = 'berth_worker_inflight{model="slow",tenant="acme",version="1"} 3.0'
    while gauge not in httpx.get(f"{url}/metrics", headers=worker.headers).text:  # all three reached the worker
        assert time.monotonic() < deadline, "the requests never reached the worker"
        time.sleep(0.01)
    worker.process.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    refused = infer(url, worker.headers, "acme.slow")
    for thread in threads:
        thread.join(timeout=60)
    assert results == [200, 200, 200], f"in-flight requests were lost: {results}"
    assert refused.status_code == 503, refused.text
    assert "draining" in refused.json()["error"]
    assert worker.process.wait(timeout=60) == 0
    with pytest.raises(httpx.ConnectError):
        infer(url, worker.headers, "acme.slow")


def test_after_sigterm_it_serves_until_the_traffic_moves_then_drains_and_exits(tmp_path, model_files):
    """The hand-over: reported draining, it keeps answering while requests still come (the
    control plane is placing replacements); once none has come for a second, it exits."""
    worker = Worker(tmp_path, BERTH_WORKER_HANDOVER_S="20")
    try:
        assert worker.command("load", load_message(model_files["doubler"], model="doubler"))["state"] == "ready"
        url = worker.url()
        assert infer(url, worker.headers).status_code == 200
        worker.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        answers = []
        with httpx.Client(timeout=30) as client:
            body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1.0] * 4}]}
            while time.monotonic() - signalled < 3.0:  # the traffic still comes for 3 s
                answer = client.post(f"{url}/v2/models/acme.doubler/infer", json=body, headers=worker.headers)
                answers.append(answer.status_code)
                time.sleep(0.05)
            traffic_stopped = time.monotonic()
            assert len(answers) > 20 and set(answers) == {200}, answers  # served throughout, not refused
            assert worker.process.poll() is None  # still there while the traffic came
            ready = client.get(f"{url}/v2/health/ready")
            assert ready.status_code == 200
        assert worker.process.wait(timeout=30) == 0
        exited = time.monotonic()
        assert exited - traffic_stopped >= 0.9  # it waited for a quiet second first
        assert "hand-over ended" in worker.log.read_text()
        with pytest.raises(httpx.ConnectError):
            infer(url, worker.headers)
    finally:
        worker.stop()


def test_a_finished_load_is_reported_at_once_not_at_the_next_heartbeat(tmp_path, model_files):
    """With heartbeats 10 minutes apart, the control plane still hears of a load within
    seconds of its end (a worker taking over a dead one's replicas routes them a beat sooner)."""
    worker = Worker(tmp_path, BERTH_WORKER_HEARTBEAT_S="600")
    queue = tmp_path / "var" / "broker" / "queue"

    def heartbeats() -> int:
        return len(list(queue.glob("*.control.msg")))

    try:
        deadline = time.monotonic() + 120
        while heartbeats() == 0:  # the one sent as the worker starts
            assert time.monotonic() < deadline, "no first heartbeat:\n" + worker.log_tail()
            time.sleep(0.1)
        assert worker.command("load", load_message(model_files["doubler"], model="doubler"))["state"] == "ready"
        loaded_at = time.monotonic()
        while heartbeats() < 2:
            assert time.monotonic() - loaded_at < 10, "the load was not reported before the next interval"
            time.sleep(0.05)
        bad = worker.command("load", load_message(model_files["doubler"], model="broken", sha256="0" * 64))
        assert bad["state"] == "failed"
        failed_at = time.monotonic()
        while heartbeats() < 3:  # a failed load too: the control plane retries it elsewhere sooner
            assert time.monotonic() - failed_at < 10, "the failed load was not reported before the next interval"
            time.sleep(0.05)
    finally:
        worker.stop()


@needs_redis_server
def test_the_worker_keeps_serving_through_a_broker_restart(tmp_path, model_files):
    server = RedisServer(tmp_path / "redis")
    worker = Worker(tmp_path, BERTH_WORKER_BROKER_URL=server.url, CELERY_RESULT_BACKEND=server.url)
    try:
        assert worker.command("load", load_message(model_files["doubler"], model="doubler"))["state"] == "ready"
        url = worker.url()
        # Between commands (a broker lost while a command is in flight is the next test).
        _acknowledged(server, worker)
        server.stop()
        time.sleep(1.0)  # heartbeats fail now; the worker must keep serving
        for _ in range(5):
            assert infer(url, worker.headers).status_code == 200
        assert worker.process.poll() is None
        server.start()
        _commands_get_through_again(server, worker, url, model_files["doubler"])
    finally:
        worker.stop()
        server.stop()


def _acknowledged(server: RedisServer, worker: Worker) -> None:
    """Waits until the broker holds no unacknowledged command (a result is stored before its
    command is acknowledged)."""
    deadline = time.monotonic() + 10
    while server.client().hlen("unacked"):
        assert time.monotonic() < deadline, "a command was never acknowledged:\n" + worker.log_tail()
        time.sleep(0.05)


def _commands_get_through_again(server: RedisServer, worker: Worker, url: str, path: Path) -> None:
    """Heartbeats reach the restarted broker, and a load sent through it (by a client made
    after the restart, as the control plane's next command would be) comes to serve."""
    deadline = time.monotonic() + 30
    while server.client().llen("control") == 0:
        assert time.monotonic() < deadline, "no heartbeat after the broker came back:\n" + worker.log_tail()
        time.sleep(0.2)
    # The control plane never reads a command's result (it learns from heartbeats), so
    # neither does this: a load sent after the restart must come to serve on the data plane.
    # (The data plane's URL is the one read before the restart: a status command sent after
    # it through the client made before it once went unanswered for 120 s.)
    worker.app = worker.client()
    worker.app.send_task("berth.worker.load", args=[load_message(path, model="after")], queue=worker.settings.queue)
    deadline = time.monotonic() + 60
    while infer(url, worker.headers, model="acme.after").status_code != 200:
        assert time.monotonic() < deadline, "a load sent after the restart never served:\n" + worker.log_tail()
        time.sleep(0.2)
    assert infer(url, worker.headers).status_code == 200
    assert worker.process.poll() is None, worker.log_tail()


class SlowArtifact:
    """Serves one artifact over HTTP, slowly (``seconds`` for the whole body), so a load that
    fetches it is in flight (delivered, not acknowledged) for that long."""

    def __init__(self, path: Path, seconds: float) -> None:
        body, started = path.read_bytes(), threading.Event()
        self.started = started

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                started.set()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                pieces = 20
                step = -(-len(body) // pieces)
                for offset in range(0, len(body), step):
                    time.sleep(seconds / pieces)
                    self.wfile.write(body[offset : offset + step])

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/{path.name}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@needs_redis_server
@pytest.mark.parametrize("back", ["before the command ends", "after the command ends"])
def test_a_broker_restart_in_the_middle_of_a_command_neither_ends_the_worker_nor_loses_the_command(
    tmp_path, model_files, back
):
    """The broker goes away while a load is delivered but not acknowledged (acks_late): the
    worker keeps serving, the load still comes to serve, and commands get through again."""
    server = RedisServer(tmp_path / "redis")
    artifact = SlowArtifact(model_files["mlp"], seconds=4.0)  # never fetched before: not in the cache
    worker = Worker(tmp_path, BERTH_WORKER_BROKER_URL=server.url, CELERY_RESULT_BACKEND=server.url)
    try:
        assert worker.command("load", load_message(model_files["doubler"], model="doubler"))["state"] == "ready"
        url = worker.url()
        _acknowledged(server, worker)  # the load above: only the slow one is in flight below
        slow = load_message(model_files["mlp"], model="slow") | {"artifact_uri": artifact.url}
        worker.app.send_task("berth.worker.load", args=[slow], queue=worker.settings.queue)
        assert artifact.started.wait(30), "the slow load never began:\n" + worker.log_tail()
        assert server.client().hlen("unacked") == 1  # delivered, not acknowledged
        server.stop()
        if back == "after the command ends":  # its result and acknowledgement have no broker to go to
            deadline = time.monotonic() + 60
            while not ready(url, worker.headers, "acme.slow"):
                assert time.monotonic() < deadline, "the load never ended:\n" + worker.log_tail()
                time.sleep(0.2)
        else:
            time.sleep(1.0)
        for _ in range(5):
            assert infer(url, worker.headers).status_code == 200
        assert worker.process.poll() is None, worker.log_tail()
        server.start()
        deadline = time.monotonic() + 60
        while not ready(url, worker.headers, "acme.slow"):
            assert time.monotonic() < deadline, "the load in flight never came to serve:\n" + worker.log_tail()
            assert worker.process.poll() is None, worker.log_tail()
            time.sleep(0.2)
        _commands_get_through_again(server, worker, url, model_files["doubler"])
        time.sleep(2.0)
        assert worker.process.poll() is None, worker.log_tail()
    finally:
        worker.stop()
        artifact.close()
        server.stop()
