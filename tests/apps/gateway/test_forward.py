"""``Gateway.forward`` against a real worker data plane serving a real model: a replica that
cannot be reached is retried once elsewhere, and requests in flight steer the choice."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from apps.gateway import metrics
from apps.gateway.admission import RedisAdmission
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


def _settings() -> GatewaySettings:
    return GatewaySettings(
        max_body_bytes=1 << 20, timeout_s=10, cold_start_s=1, refresh_s=0.5, key_cache_s=1.5,
        worker_token=TOKEN, redis_url="",
    )  # fmt: skip


def _gateway() -> Gateway:
    return Gateway(_settings())


def _routes(*replicas: ReplicaRoute, number: int = 1) -> tuple[TenantRoute, ModelRoute, VersionRoute]:
    version = VersionRoute(number=number, status="ready", platform="onnx", inputs=(), outputs=(), replicas=replicas)
    model = ModelRoute(
        tenant_slug="acme", name="m", model_id=1, deployment_id=None, versions={number: version},
        traffic=((number, 100),),
    )  # fmt: skip
    tenant = TenantRoute(tenant_id=1, slug="acme", limits=None, models={"m": model})  # type: ignore[arg-type]
    return tenant, model, version


def test_a_shared_concurrency_slot_outlives_the_longest_request():
    # A request may hold its slot through its body (the timeout), a cold start, a first
    # attempt answered 404 just before its deadline, a second cold start for the retry and
    # the retry's fresh timeout; a slot that expired sooner would let the tenant past its
    # concurrency limit while the request still runs.
    settings = dataclasses.replace(_settings(), timeout_s=30, cold_start_s=30, redis_url="redis://127.0.0.1:1/0")
    assert settings.longest_request_s == 30 + 30 + 30 + 30 + 30
    admission = Gateway(settings).admission
    assert isinstance(admission, RedisAdmission)
    assert admission._slot_ttl_us > settings.longest_request_s * 1_000_000


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


async def test_a_workers_error_names_the_model_as_the_tenant_does(worker_url):
    replica = ReplicaRoute(replica_id=1, worker_id="w1", url=worker_url)
    rows = {"inputs": [{"name": "input", "shape": [9, 4], "datatype": "FP32", "data": list(range(36))}]}
    answer = await _gateway().forward(*_routes(replica), body=json.dumps(rows).encode(), headers=[])
    assert answer.status == 400  # the version takes batches of 8 rows at most
    error = json.loads(answer.body)["error"]
    assert "model 'm' version 1 takes at most 8" in error, error
    assert "acme" not in error


class _RawReplica:
    """A stand-in worker on a real socket: reads each request whole, then answers ``reply``,
    or, with ``reply=None``, closes the connection without a word (it died while it had the
    request). Counts the requests it read."""

    def __init__(self, reply: bytes | None) -> None:
        self.reply = reply
        self.requests = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                self.requests += 1
                if self.reply is None:
                    break
                writer.write(self.reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def _http(status: str, body: bytes) -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


OK_REPLY = _http("200 OK", b'{"model_name":"acme.m","outputs":[]}')


async def test_a_replica_that_dies_holding_the_request_is_502_and_never_retried():
    from apps.gateway.app import GatewayError

    broken, live = _RawReplica(None), _RawReplica(OK_REPLY)
    first = ReplicaRoute(replica_id=1, worker_id="broken-worker", url=await broken.start())
    second = ReplicaRoute(replica_id=2, worker_id="live-worker", url=await live.start())
    gateway = _gateway()
    gateway.outstanding[second.replica_id] = 5  # the broken one looks idler: it is tried first
    retries = metrics.RETRIES.labels("acme", "m")
    before = retries._value.get()
    tenant, model, version = _routes(first, second)
    try:
        with pytest.raises(GatewayError) as refused:
            await gateway.forward(tenant, model, version, body=BODY, headers=[])
        assert refused.value.status == 502 and "not retried because it may have run" in refused.value.message
        assert broken.requests == 1  # it had the request whole
        assert live.requests == 0  # and it was not sent again
        assert retries._value.get() == before
        assert "broken-worker" in gateway._suspect_workers()
    finally:
        await asyncio.gather(*gateway.background, return_exceptions=True)
        await broken.stop()
        await live.stop()


async def test_a_connection_failure_is_retried_once_and_not_twice():
    from apps.gateway.app import GatewayError

    live = _RawReplica(OK_REPLY)
    dead = [ReplicaRoute(replica_id=n, worker_id=f"dead-{n}", url=f"http://127.0.0.1:{free_port()}") for n in (1, 2)]
    alive = ReplicaRoute(replica_id=3, worker_id="live-worker", url=await live.start())
    gateway = _gateway()
    gateway.outstanding[alive.replica_id] = 50  # both dead ones look idler
    retries = metrics.RETRIES.labels("acme", "m")
    before = retries._value.get()
    tenant, model, version = _routes(*dead, alive)
    try:
        with pytest.raises(GatewayError) as refused:
            await gateway.forward(tenant, model, version, body=BODY, headers=[])
        assert refused.value.status == 503 and refused.value.retry_after_s == 1
        assert "could take the request" in refused.value.message
        assert retries._value.get() == before + 1  # one retry, no third try
        assert live.requests == 0
    finally:
        await asyncio.gather(*gateway.background, return_exceptions=True)
        await live.stop()


async def _beside_a_live_one(reply: bytes) -> tuple[_RawReplica, _RawReplica, Gateway, ReplicaRoute, ReplicaRoute]:
    """A replica answering ``reply`` and a live one, whose requests in flight make the first
    look idler: a gateway tries the first first."""
    answering, live = _RawReplica(reply), _RawReplica(OK_REPLY)
    first = ReplicaRoute(replica_id=1, worker_id="answering-worker", url=await answering.start())
    second = ReplicaRoute(replica_id=2, worker_id="live-worker", url=await live.start())
    gateway = _gateway()
    gateway.outstanding[second.replica_id] = 5
    return answering, live, gateway, first, second


async def test_a_workers_500_is_passed_on_with_its_reason_and_not_retried():
    reply = _http("500 Internal Server Error", b'{"error":"model raised: ValueError: bad weights"}')
    failing, live, gateway, first, second = await _beside_a_live_one(reply)
    try:
        answer = await gateway.forward(*_routes(first, second), body=BODY, headers=[])
        assert answer.status == 500
        assert json.loads(answer.body) == {"error": "model raised: ValueError: bad weights"}
        assert (failing.requests, live.requests) == (1, 0)
    finally:
        await failing.stop()
        await live.stop()


async def test_a_workers_503_goes_out_with_retry_after():
    full = _RawReplica(_http("503 Service Unavailable", b'{"error":"model acme/m/1 has 8 requests queued"}'))
    only = ReplicaRoute(replica_id=1, worker_id="full-worker", url=await full.start())
    tenant, model, version = _routes(only)
    try:
        answer = await _gateway().forward(tenant, model, version, body=BODY, headers=[])
        assert answer.status == 503 and (b"retry-after", b"1") in answer.headers
        # The worker's name for the model (<tenant>/<model>/<version>) is not the tenant's.
        assert json.loads(answer.body) == {"error": "model 'm' version 1 has 8 requests queued"}
    finally:
        await full.stop()


NOT_HOSTED = _http("404 Not Found", b'{"error":"model acme.m version 1 is not hosted here"}')


def _asking(gateway: Gateway, *later: ReplicaRoute) -> list[int]:
    """Stands in for the cold start: the first call gives the routing table's replicas, the
    next ones what the control plane has loaded since (``later``). Returns the call count."""
    calls = [0]
    first = Gateway.ready_replicas.__get__(gateway)  # the real one, even when patched before

    async def ready_replicas(tenant, model, version):
        calls[0] += 1
        if calls[0] == 1:
            return await first(tenant, model, version)
        return later

    gateway.ready_replicas = ready_replicas  # type: ignore[method-assign]
    return calls


async def test_a_lone_unreachable_replica_waits_for_the_one_the_control_plane_loads():
    new = _RawReplica(OK_REPLY)
    dead = ReplicaRoute(replica_id=1, worker_id="dead-worker", url=f"http://127.0.0.1:{free_port()}")
    loaded = ReplicaRoute(replica_id=2, worker_id="new-worker", url=await new.start())
    gateway = _gateway()
    calls = _asking(gateway, loaded)
    retries = metrics.RETRIES.labels("acme", "m")
    before = retries._value.get()
    tenant, model, version = _routes(dead)
    try:
        answer = await gateway.forward(tenant, model, version, body=BODY, headers=[])
        assert answer.status == 200 and new.requests == 1
        assert calls[0] == 2  # asked once more, after the connection failed: the cold start's wait
        assert retries._value.get() == before + 1
        assert "dead-worker" in gateway._suspect_workers()
    finally:
        await asyncio.gather(*gateway.background, return_exceptions=True)
        await new.stop()


async def test_a_replica_whose_worker_no_longer_hosts_the_model_is_left_and_the_request_goes_on():
    gone, other, new = _RawReplica(NOT_HOSTED), _RawReplica(OK_REPLY), _RawReplica(OK_REPLY)
    first = ReplicaRoute(replica_id=1, worker_id="w1", url=await gone.start())
    second = ReplicaRoute(replica_id=2, worker_id="w2", url=await other.start())
    gateway = _gateway()
    gateway.outstanding[second.replica_id] = 5  # the unloaded one looks idler: it is tried first
    calls = _asking(gateway)
    try:
        # Two replicas: the other one answers, with no cold start.
        answer = await gateway.forward(*_routes(first, second), body=BODY, headers=[])
        assert answer.status == 200 and (gone.requests, other.requests) == (1, 1) and calls[0] == 1
        # Alone: the gone replica is left out and the retry waits for a newly loaded one (its
        # worker may be the same one: it is alive, it just unloaded the model).
        loaded = ReplicaRoute(replica_id=3, worker_id="w1", url=await new.start())
        calls = _asking(gateway, loaded)
        gateway._gone.clear()
        answer = await gateway.forward(*_routes(first), body=BODY, headers=[])
        assert answer.status == 200 and gone.requests == 2 and new.requests == 1 and calls[0] == 2
        assert gateway._usable(_routes(first, loaded)[2]) == (loaded,)  # left out for a while
    finally:
        await gone.stop()
        await other.stop()
        await new.stop()


async def test_a_workers_503_is_tried_once_on_another_replica_when_there_is_one():
    reply = _http("503 Service Unavailable", b'{"error":"the worker is draining"}')
    full, live, gateway, first, second = await _beside_a_live_one(reply)  # the draining one is tried first
    try:
        answer = await gateway.forward(*_routes(first, second), body=BODY, headers=[])
        assert answer.status == 200 and (full.requests, live.requests) == (1, 1)
        # Both refusing: the last refusal is passed on, with Retry-After, after one retry.
        live.reply = _http("503 Service Unavailable", b'{"error":"model acme.m has 8 requests queued"}')
        gateway.outstanding[second.replica_id] = 5
        answer = await gateway.forward(*_routes(first, second), body=BODY, headers=[])
        assert answer.status == 503 and (b"retry-after", b"1") in answer.headers
        assert (full.requests, live.requests) == (2, 2)
    finally:
        await full.stop()
        await live.stop()
