"""``Gateway.forward`` against a real worker data plane serving a real model: a replica that
cannot be reached is retried once elsewhere, and requests in flight steer the choice."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from apps.gateway import metrics
from apps.gateway.app import Gateway, GatewaySettings
from apps.gateway.routing import ModelRoute, ReplicaRoute, TenantRoute, VersionRoute
from inference_workers.artifacts import ArtifactCache
from inference_workers.dataplane import DataPlane
from inference_workers.devices import CpuDevice
from inference_workers.host import ModelHost
from inference_workers.loop import EventLoopThread
from inference_workers.runtimes import RuntimeOptions
from inference_workers.server import DataPlaneServer, build_app
from inference_workers.types import BatchingConfig
from tests.conftest import free_port
from tests.inference_workers import models
from tests.inference_workers.conftest import load_command

TOKEN = "forward-test-token"
BODY = json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}).encode()


@pytest.fixture(scope="module")
def doubler(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return models.doubler_onnx(tmp_path_factory.mktemp("forward") / "doubler.onnx")


@pytest.fixture
def worker_url(tmp_path: Path, doubler: Path) -> Iterator[str]:
    loop = EventLoopThread().start()
    host = ModelHost(
        device=CpuDevice(memory_budget_bytes=1024**3),
        options=RuntimeOptions(device="cpu", intra_op_threads=1),
        cache=ArtifactCache(tmp_path / "cache"),
        loop=loop,
    )
    host.load(load_command(doubler, tenant="acme", model="m", version=1))
    # Version 2 waits 1 s in its queue for company: a request stays in flight that long.
    host.load(
        load_command(
            doubler, tenant="acme", model="m", version=2,
            batching=BatchingConfig(max_batch_size=8, max_queue_delay_us=1_000_000),
        )
    )  # fmt: skip
    dataplane = DataPlane(host, is_draining=lambda: False)
    app = build_app(dataplane, token=TOKEN, max_body_bytes=1 << 20, metrics=host.metrics)
    server = DataPlaneServer(app, host="127.0.0.1", port=0, loop=loop)
    port = server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()
    host.close()
    loop.stop()


def _gateway() -> Gateway:
    settings = GatewaySettings(
        max_body_bytes=1 << 20, timeout_s=10, cold_start_s=1, refresh_s=0.5, key_cache_s=1.5,
        worker_token=TOKEN, redis_url="",
    )  # fmt: skip
    return Gateway(settings)


def _routes(*replicas: ReplicaRoute, number: int = 1) -> tuple[TenantRoute, ModelRoute, VersionRoute]:
    version = VersionRoute(number=number, status="ready", platform="onnx", inputs=(), outputs=(), replicas=replicas)
    model = ModelRoute(
        tenant_slug="acme", name="m", model_id=1, deployment_id=None, versions={number: version},
        traffic=((number, 100),),
    )  # fmt: skip
    tenant = TenantRoute(tenant_id=1, slug="acme", limits=None, models={"m": model})  # type: ignore[arg-type]
    return tenant, model, version


async def test_an_unreachable_replica_is_retried_once_on_another(worker_url):
    dead = ReplicaRoute(replica_id=1, worker_id="dead-worker", url=f"http://127.0.0.1:{free_port()}")
    live = ReplicaRoute(replica_id=2, worker_id="live-worker", url=worker_url)
    gateway = _gateway()
    gateway.outstanding[live.replica_id] = 5  # the dead one looks idler: it is tried first
    retries = metrics.RETRIES.labels("acme", "m")
    before = retries._value.get()
    tenant, model, version = _routes(dead, live)
    answer = await gateway.forward(tenant, model, version, body=BODY, headers=[(b"content-type", b"application/json")])
    assert answer.status == 200 and json.loads(answer.body)["outputs"][0]["data"] == [2, 4, 6, 8]
    assert retries._value.get() == before + 1  # exactly one retry
    assert "dead-worker" in gateway._suspect_workers()  # left out of routing for a while
    assert dict(gateway.outstanding) == {1: 0, 2: 5}  # every slot taken was given back
    # With the dead worker suspect, the next request goes straight to the live one.
    await gateway.forward(tenant, model, version, body=BODY, headers=[])
    assert retries._value.get() == before + 1
    # (Marking the replica suspect in the database runs in the background; no database here.)
    await asyncio.gather(*gateway.background, return_exceptions=True)


async def test_requests_in_flight_count_against_their_replica(worker_url):
    gateway = _gateway()
    first = ReplicaRoute(replica_id=1, worker_id="w1", url=worker_url)
    tenant, model, version = _routes(first, number=2)
    pending = asyncio.ensure_future(gateway.forward(tenant, model, version, body=BODY, headers=[]))
    for _ in range(100):
        await asyncio.sleep(0.01)
        if gateway.outstanding[1] == 1:
            break
    assert gateway.outstanding[1] == 1  # while the worker holds it (1 s in the queue)
    assert not pending.done()
    assert (await pending).status == 200
    assert gateway.outstanding[1] == 0
