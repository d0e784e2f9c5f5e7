"""Rollups: recording, per-minute compaction with merged histograms, retention, series."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from apps.monitoring.models import MetricRollup
from apps.monitoring.selectors import metric_series
from apps.monitoring.services import RollupPoint, rollups_compact, rollups_record
from inference_workers.histogram import percentile, record

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)


def _latency(*seconds: float) -> dict[int, int]:
    counts: dict[int, int] = {}
    for value in seconds:
        record(counts, value)
    return counts


def _point(at: datetime, *, requests: int, latency: dict[int, int], errors: int = 0, tenant: str = "alpha"):
    return RollupPoint(
        second=int(at.timestamp()),
        tenant=tenant,
        model="clf",
        version=1,
        requests=requests,
        errors=errors,
        statuses={"200": requests - errors, **({"503": errors} if errors else {})},
        latency=latency,
    )


def test_two_gateways_points_of_one_second_add_up_and_percentiles_come_from_merged_histograms(world_a):
    fast = _latency(*([0.001] * 90))
    slow = _latency(*([0.100] * 10))
    rollups_record(points=[_point(T0, requests=90, latency=fast)])
    rollups_record(points=[_point(T0, requests=10, latency=slow, errors=2)])
    (point,) = metric_series(tenant=world_a.tenant, since=T0 - timedelta(seconds=1), resolution="1s")
    assert point["requests"] == 100 and point["errors"] == 2
    assert point["p50_ms"] < 1.3  # from the merged histogram: most requests were fast
    assert 80 < point["p99_ms"] < 120  # the slow tail shows; averaging two p99s would not give this


def test_points_of_an_unknown_tenant_are_dropped(world_a):
    rollups_record(points=[_point(T0, requests=1, latency=_latency(0.01), tenant="ghost")])
    assert not MetricRollup.objects.exists()


def test_complete_minutes_are_compacted_once_and_retention_prunes(world_a):
    for offset in range(0, 120, 10):  # two minutes of points, 12 seconds with traffic
        rollups_record(points=[_point(T0 + timedelta(seconds=offset), requests=5, latency=_latency(0.002, 0.004))])
    assert rollups_compact(now=T0 + timedelta(minutes=4)) == (2, 0)
    minutes = list(MetricRollup.objects.filter(resolution="1m").order_by("start"))
    assert [m.start for m in minutes] == [T0, T0 + timedelta(minutes=1)]
    assert [m.requests for m in minutes] == [30, 30]
    assert sum(minutes[0].latency.values()) == 12  # 6 seconds x 2 observations, merged
    assert percentile(minutes[0].latency, 50) is not None
    # A repeated run rebuilds the same minutes: nothing doubles.
    assert rollups_compact(now=T0 + timedelta(minutes=4, seconds=10)) == (2, 0)
    assert [m.requests for m in MetricRollup.objects.filter(resolution="1m").order_by("start")] == [30, 30]
    # A second that arrives late (a gateway that could not write for a while) still counts.
    rollups_record(points=[_point(T0 + timedelta(seconds=5), requests=7, latency=_latency(0.002))])
    rollups_compact(now=T0 + timedelta(minutes=5))
    assert [m.requests for m in MetricRollup.objects.filter(resolution="1m").order_by("start")] == [37, 30]
    # An hour later the one-second rows are gone; the minutes stay for 30 days.
    result = rollups_compact(now=T0 + timedelta(hours=1, minutes=3))
    assert result is not None
    _, pruned = result
    assert pruned == 13 and not MetricRollup.objects.filter(resolution="1s").exists()
    assert MetricRollup.objects.filter(resolution="1m").count() == 2
    rollups_compact(now=T0 + timedelta(days=31))
    assert not MetricRollup.objects.exists()


def test_the_series_api_serves_members_and_checks_the_range(world_a):
    rollups_record(points=[_point(datetime.now(tz=UTC) - timedelta(seconds=5), requests=3, latency=_latency(0.01))])
    viewer = world_a.session("viewer")
    answer = viewer.get("/api/v1/tenants/alpha/metrics/?range=15m&model=clf")
    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert body["resolution"] == "1s" and [p["requests"] for p in body["points"]] == [3]
    assert viewer.get("/api/v1/tenants/alpha/metrics/?range=7y").status_code == 400
    assert viewer.get("/api/v1/tenants/alpha/metrics/?range=30d").json()["resolution"] == "1m"


def test_worker_heartbeats_add_batches_and_queue_vs_compute_without_counting_requests_twice(world_a):
    import time

    from apps.deployments.services import worker_record_heartbeat
    from inference_workers.types import DeviceState, HostedModel, ModelKey, WorkerHeartbeat

    now = time.time()
    rollups_record(points=[_point(datetime.fromtimestamp(int(now), tz=UTC), requests=6, latency=_latency(0.003))])
    window = {
        "batches": 2,
        "batch_sizes": {"4": 1, "2": 1},
        "queue": {str(k): v for k, v in _latency(*([0.0005] * 6)).items()},
        "compute": {str(k): v for k, v in _latency(0.002, 0.002).items()},
        "compute_s": 0.004,
    }
    hosted = HostedModel(
        key=ModelKey("alpha", "clf", 1), state="ready", reserved_bytes=1, measured_bytes=1, window=window
    )
    worker_record_heartbeat(
        heartbeat=WorkerHeartbeat(
            worker_id="w1",
            host="h",
            dataplane_url="http://127.0.0.1:1",
            queue="worker.w1",
            state="ready",
            sent_at=now,
            device=DeviceState(kind="cpu", index=0, name="cpu", uuid="", total_bytes=1, used_bytes=0, free_bytes=1),
            models=(hosted,),
        )
    )
    (point,) = metric_series(
        tenant=world_a.tenant, since=datetime.fromtimestamp(now - 5, tz=UTC), resolution="1s", model="clf"
    )
    assert point["requests"] == 6  # the gateway's count; the worker's row adds batches only
    assert point["statuses"] == {"200": 6}
    assert point["batches"] == 2 and point["batch_sizes"] == {"2": 1, "4": 1} and point["mean_batch_size"] == 3
    assert point["queue_p50_ms"] < point["compute_p50_ms"]
    assert point["compute_s"] == pytest.approx(0.004)


def test_seconds_left_uncompacted_for_hours_are_compacted_before_they_are_pruned(world_a):
    # The beat task did not run for three hours: every second still kept becomes a minute.
    for offset in (0, 30, 61):
        rollups_record(points=[_point(T0 + timedelta(seconds=offset), requests=2, latency=_latency(0.002))])
    rollups_compact(now=T0 + timedelta(hours=3))
    minutes = MetricRollup.objects.filter(resolution="1m").order_by("start")
    assert [(m.start, m.requests) for m in minutes] == [(T0, 4), (T0 + timedelta(minutes=1), 2)]
    assert not MetricRollup.objects.filter(resolution="1s").exists()


def test_the_long_ranges_reach_the_right_edge_from_seconds_not_yet_compacted(world_a):
    now = datetime.now(tz=UTC).replace(microsecond=0)
    old = now - timedelta(minutes=30)
    rollups_record(points=[_point(old, requests=3, latency=_latency(0.002))])
    rollups_compact(now=now)  # the old second is a minute now
    rollups_record(points=[_point(now - timedelta(seconds=5), requests=2, latency=_latency(0.004))])
    points = metric_series(tenant=world_a.tenant, since=now - timedelta(days=1), resolution="1m", step_s=120)
    assert sum(p["requests"] for p in points) == 5  # the fresh seconds count, nothing twice
    assert points[-1]["requests"] == 2 and points[-1]["step_s"] == 120
