"""Deployments converge on real workers while traffic flows through the gateway.

Three CPU workers with small memory budgets (the platform's and two more); the demo model
deployed by the seed. Under a steady load: scale 1 → 3 → 1, a second version through the
canary steps (10 %, roll back, 50 %, promote), draining a worker, undeploying. No request may fail on the way:
replicas leave routing before they are unloaded, and a draining worker's replica serves
until its replacement is ready.
"""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import PYTHON, REPO_ROOT
from tests.e2e.conftest import Platform, boot_platform

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

MODEL = "demo-mlp"
ONE_ROW = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


Fleet = tuple[Platform, list[str], dict[str, subprocess.Popen], dict[str, Path]]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("fleet")
    with boot_platform(tmp, BERTH_SEED_DEMO_DEPLOY="1", BERTH_WORKER_MEMORY_BUDGET="256MiB") as platform:
        platform.wait_healthy()
        spares = []
        ids = [platform.worker_id]
        for n in (1, 2):
            worker_id = f"{platform.worker_id}-{n}"
            log = (tmp / f"spare-{n}.log").open("wb")
            spares.append(
                subprocess.Popen(
                    [PYTHON, "-m", "inference_workers", "--device", "cpu", "--worker-id", worker_id],
                    cwd=REPO_ROOT,
                    env=platform.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            ids.append(worker_id)
        try:
            logs = {worker_id: tmp / f"spare-{n}.log" for n, worker_id in enumerate(ids[1:], start=1)}
            yield platform, ids, dict(zip(ids[1:], spares, strict=True)), logs
        finally:
            for spare in spares:
                spare.terminate()
            for spare in spares:
                try:
                    spare.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    spare.kill()


def _key(platform: Platform) -> str:
    match = re.search(r"API key (brt_\S+)", platform.log())
    assert match
    return match[1]


def _until(what: str, check: Callable[[], bool], platform: Platform, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s:\n{platform.log()[-3000:]}"
        time.sleep(0.25)


class Load:
    """Two clients sending requests through the gateway until stopped; counts the answers."""

    def __init__(self, platform: Platform, key: str) -> None:
        self.url = f"{platform.base_url}/v2/models/{MODEL}/infer"
        self.headers = {"Authorization": f"Bearer {key}"}
        self.statuses: Counter[int] = Counter()
        self.versions: Counter[str] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(2)]

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                answer = client.post(self.url, json=ONE_ROW, headers=self.headers)
                self.statuses[answer.status_code] += 1
                if answer.status_code == 200:
                    self.versions[answer.json()["model_version"]] += 1
                else:
                    self.failures.append(f"{answer.status_code} {answer.text}")

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


def test_scale_canary_drain_and_undeploy_converge_under_load_without_a_failed_request(fleet):
    platform, worker_ids, spares, spare_logs = fleet
    key = _key(platform)
    bearer = {"Authorization": f"Bearer {key}"}
    base = f"{platform.base_url}/api/v1/tenants/demo/models/{MODEL}"
    admin = platform.admin()
    assert admin.patch("/api/v1/tenants/demo/quota/", json={"requests_per_second": 100_000}).status_code == 200

    def workers() -> dict[str, dict]:
        return {w["worker_id"]: w for w in admin.get("/api/v1/workers/").json()}

    def replicas() -> list[dict]:
        return httpx.get(f"{base}/deployment/", headers=bearer).json()["replicas"]

    def ready_on() -> dict[str, set[str]]:
        by_version: dict[str, set[str]] = {}
        for replica in replicas():
            if replica["state"] == "ready":
                by_version.setdefault(str(replica["version"]), set()).add(replica["worker"])
        return by_version

    def hosting(version: int) -> set[str]:
        return {
            worker_id
            for worker_id, worker in workers().items()
            if worker["state"] != "dead"
            and any(h["model"] == MODEL and h["version"] == version for h in worker["hosted"])
        }

    _until("three ready workers", lambda: sum(w["state"] == "ready" for w in workers().values()) == 3, platform)
    _until("the seeded replica", lambda: len(ready_on().get("1", ())) == 1, platform)
    time.sleep(1)
    with Load(platform, key) as load:
        # Scale 1 → 3: one replica on each worker.
        assert httpx.patch(
            f"{base}/deployment/", headers=bearer, json={"min_replicas": 3, "max_replicas": 3}
        ).is_success
        _until("three replicas", lambda: ready_on().get("1") == set(worker_ids), platform)
        _until("three hosting workers", lambda: hosting(1) == set(worker_ids), platform)
        # … and back to 1: the others leave routing, then their workers unload them.
        assert httpx.patch(
            f"{base}/deployment/", headers=bearer, json={"min_replicas": 1, "max_replicas": 1}
        ).is_success
        _until("one replica", lambda: len([r for r in replicas() if r["state"] == "ready"]) == 1, platform)
        _until("two workers unloaded it", lambda: len(hosting(1)) == 1, platform)

        # A canary: version 2 gets 10 %, then is promoted.
        from apps.registry.demo import demo_model_bytes

        uploaded = httpx.post(
            f"{base}/versions/", headers=bearer, files={"file": ("v2.onnx", demo_model_bytes())}, timeout=30
        )
        assert uploaded.status_code == 202, uploaded.text
        _until(
            "version 2 validated",
            lambda: httpx.get(f"{base}/versions/2/", headers=bearer).json()["status"] == "ready",
            platform,
        )
        # Through the canary steps: 10 %, roll back, 50 %, promote.
        step = f"{base}/deployment/"
        assert httpx.post(f"{step}canary/", headers=bearer, json={"version": 2, "percent": 10}).is_success
        _until("both versions ready", lambda: set(ready_on()) == {"1", "2"}, platform)
        _until("version 2 answers", lambda: load.versions["2"] >= 5, platform)
        assert httpx.post(f"{step}rollback/", headers=bearer).is_success
        _until("version 2 rolled back", lambda: set(ready_on()) == {"1"} and not hosting(2), platform)
        served_by_1 = load.versions["1"]
        _until("version 1 answers alone", lambda: load.versions["1"] >= served_by_1 + 20, platform)
        assert httpx.post(f"{step}canary/", headers=bearer, json={"version": 2, "percent": 50}).is_success
        served_by_2 = load.versions["2"]
        _until("version 2 answers again", lambda: load.versions["2"] >= served_by_2 + 20, platform)
        assert httpx.post(f"{step}promote/", headers=bearer).is_success
        _until("version 1 gone", lambda: set(ready_on()) == {"2"} and not hosting(1), platform)
        served_by_2 = load.versions["2"]
        _until("only version 2 answers", lambda: load.versions["2"] >= served_by_2 + 20, platform)

        # Drain the worker hosting version 2: its replica moves, serving until the new one is ready.
        (source,) = ready_on()["2"]
        assert admin.post(f"/api/v1/workers/{source}/drain/").status_code == 200
        _until(
            "the replica moved",
            lambda: bool(now := ready_on().get("2", set())) and source not in now | hosting(2),
            platform,
        )
        assert admin.delete(f"/api/v1/workers/{source}/drain/").status_code == 200

        # SIGTERM a worker serving it: it reports draining and keeps serving while the control
        # plane loads a replacement elsewhere, then leaves once the traffic has moved.
        assert httpx.patch(
            f"{base}/deployment/", headers=bearer, json={"min_replicas": 2, "max_replicas": 2}
        ).is_success
        _until("two replicas", lambda: len(ready_on().get("2", ())) == 2, platform)
        time.sleep(1)  # both are in the gateway's routing table
        leaving = sorted(ready_on()["2"] & set(spares))[0]  # one of the two is a spare's
        survivors = set(worker_ids) - {leaving}
        spares[leaving].send_signal(signal.SIGTERM)
        _until("the replica moved", lambda: ready_on().get("2", set()) == survivors, platform)
        assert spares[leaving].wait(timeout=60) == 0
        # It left because the control plane said its replica had moved (its draining heartbeats
        # start the move as SIGTERM arrives, so it may have moved before the first question).
        said = spare_logs[leaving].read_text()
        assert "says 0 of the replicas here still serve" in said, said[-2000:]
        time.sleep(1)
    assert load.failures == [], load.failures[:5]
    assert load.statuses[200] > 100

    # Undeploy: every worker unloads it.
    assert httpx.delete(f"{base}/deployment/", headers=bearer).status_code == 204
    _until("nothing hosted", lambda: not hosting(1) and not hosting(2), platform)
    gone = httpx.post(f"{platform.base_url}/v2/models/{MODEL}/infer", json=ONE_ROW, headers=bearer)
    assert gone.status_code == 503 and "not deployed" in gone.json()["error"]
    admin.close()
