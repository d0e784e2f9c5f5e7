"""The gateway's hand-over to monitoring: live pushes once, stores late, bounded prediction logs."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from channels.layers import get_channel_layer

from apps.gateway import metrics
from apps.gateway.admission import Limits
from apps.gateway.app import OVERSIZED_SAMPLE_BYTES, PREDICTION_BUFFER_BYTES, Gateway, GatewaySettings
from apps.gateway.routing import LogRoute, ModelRoute, RoutingSnapshot, TenantRoute, VersionRoute
from apps.gateway.upstream import UpstreamResponse
from apps.monitoring import services as monitoring
from apps.monitoring.consumers import tenant_metrics_group
from apps.monitoring.models import MetricRollup

pytestmark = pytest.mark.django_db(transaction=True)

LABELS = ("alpha", "clf", "1")


def _gateway(tenant) -> Gateway:
    settings = GatewaySettings(
        max_body_bytes=1 << 20, timeout_s=1, cold_start_s=1, refresh_s=0.5, key_cache_s=1, worker_token="t",
        redis_url="",
    )  # fmt: skip
    gateway = Gateway(settings)
    gateway.snapshot = RoutingSnapshot(
        tenants={tenant.pk: TenantRoute(tenant_id=tenant.pk, slug=tenant.slug, limits=Limits(10, 10, 10))},
        loaded_at=time.time(),
    )
    return gateway


async def _pushed(channel: str) -> list[dict]:
    layer = get_channel_layer()
    received = []
    while True:
        try:
            received.append(await asyncio.wait_for(layer.receive(channel), timeout=0.2))
        except TimeoutError:
            return received


def test_a_failed_store_keeps_the_points_and_never_pushes_them_twice(world_a, monkeypatch):
    gateway = _gateway(world_a.tenant)
    layer = get_channel_layer()
    real = monitoring.rollups_record
    calls: list[int] = []

    def flaky(*, points):
        calls.append(len(points))
        if len(calls) == 1:
            raise RuntimeError("database is locked")
        return real(points=points)

    monkeypatch.setattr(monitoring, "rollups_record", flaky)

    async def scenario() -> tuple[list[dict], list[dict]]:
        channel = await layer.new_channel()
        await layer.group_add(tenant_metrics_group(world_a.tenant.pk), channel)
        metrics.ROLLUPS.observe(LABELS, 200, 0.002)
        await asyncio.sleep(1.05)  # the second ends
        await gateway._flush_rollups()  # pushed, store fails: kept
        first = await _pushed(channel)
        metrics.ROLLUPS.observe(LABELS, 200, 0.004)
        await asyncio.sleep(1.05)
        await gateway._flush_rollups()  # only the new second is pushed; both are stored
        return first, await _pushed(channel)

    first, second = asyncio.run(scenario())
    assert [sum(p["requests"] for p in m["points"]) for m in first] == [1]
    assert [sum(p["requests"] for p in m["points"]) for m in second] == [1]  # not 2: nothing re-pushed
    assert all("latency" in p for m in first + second for p in m["points"])  # pages merge them exactly
    assert calls == [1, 2]
    assert sum(MetricRollup.objects.values_list("requests", flat=True)) == 2


def test_sampled_predictions_are_bounded_in_bytes_and_oversized_bodies_are_not_kept(world_a, monkeypatch):
    gateway = _gateway(world_a.tenant)
    version = VersionRoute(number=1, status="ready", platform="onnx", inputs=(), outputs=())
    model = ModelRoute(
        tenant_slug="alpha", name="clf", model_id=1, deployment_id=1, versions={1: version},
        log=LogRoute(sample_rate=1.0, retention_days=7),
    )  # fmt: skip
    scope: dict[str, Any] = {"headers": []}
    small = UpstreamResponse(status=200, headers=[], body=b'{"outputs":[]}')
    huge = b"x" * (monitoring.PREDICTION_LOG_MAX_BODY + 1)
    gateway.log_prediction(model, version, b"r-huge", scope, huge, small)
    (entry,) = gateway.predictions
    assert entry.request_body == b"" and entry.too_large == len(huge)
    assert gateway._prediction_bytes == OVERSIZED_SAMPLE_BYTES  # counted, though its bodies are dropped
    monkeypatch.setattr(gateway, "_prediction_bytes", PREDICTION_BUFFER_BYTES - 10)
    gateway.log_prediction(model, version, b"r-over", scope, b'{"inputs":[]}', small)
    assert len(gateway.predictions) == 1  # past the byte cap the sample is skipped
    monkeypatch.setattr(gateway, "_prediction_bytes", OVERSIZED_SAMPLE_BYTES)  # the one kept entry
    never = ModelRoute(**{**model.__dict__, "log": LogRoute(sample_rate=0.0, retention_days=7)})
    for _ in range(50):
        gateway.log_prediction(never, version, b"r-zero", scope, b"{}", small)
    assert len(gateway.predictions) == 1  # a rate of 0 samples nothing
    asyncio.run(gateway._flush_predictions())
    assert not gateway.predictions and gateway._prediction_bytes == 0
    from apps.monitoring.models import PredictionLog

    (logged,) = PredictionLog.objects.all()
    assert logged.request_id == "r-huge" and "over the log's" in logged.outputs[0]["omitted"]


def test_seconds_a_long_request_spans_show_it_in_flight(monkeypatch):
    clock = [5000.1]
    monkeypatch.setattr(metrics.time, "time", lambda: clock[0])
    rollups = metrics.Rollups()
    assert rollups.drain(5000.1) == []
    with rollups.in_flight(LABELS):
        clock[0] = 5003.4  # three seconds later, nothing new started meanwhile
        cells = rollups.drain(5003.4)
        assert [(c.second, c.inflight_max, c.requests) for c in cells] == [(5000, 1, 0), (5001, 1, 0), (5002, 1, 0)]
        rollups.observe(LABELS, 200, 3.3)
    clock[0] = 5004.2
    (last,) = rollups.drain(5004.2)
    assert (last.second, last.requests, last.inflight_max) == (5003, 1, 1)


def test_a_channel_layer_that_is_down_still_lets_the_seconds_be_stored(world_a, monkeypatch):
    gateway = _gateway(world_a.tenant)
    layer = get_channel_layer()

    async def down(*args, **kwargs):
        raise ConnectionError("redis is restarting")

    monkeypatch.setattr(layer, "group_send", down)

    async def scenario() -> None:
        metrics.ROLLUPS.observe(LABELS, 200, 0.002)
        await asyncio.sleep(1.05)
        await gateway._flush_rollups()

    asyncio.run(scenario())
    assert sum(MetricRollup.objects.values_list("requests", flat=True)) == 1
