"""Cost per prediction: exact attribution of device time, prices, the usage API (JSON, CSV)."""

from __future__ import annotations

import csv
import io
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.deployments.services import worker_record_heartbeat
from apps.monitoring.cost import ReplicaUse, apportion, attribute_window, cost_nanos, share_equally
from apps.monitoring.models import DeviceSample, MetricRollup
from apps.monitoring.services import RollupPoint, rollups_compact, rollups_record
from apps.tenants.models import AuditEvent
from inference_workers.types import DeviceKind, DeviceState, HostedModel, ModelKey, WorkerHeartbeat

# ---------------------------------------------------------------- attribution (pure, property)


@given(total=st.integers(0, 10**12), weights=st.lists(st.integers(0, 10**12), min_size=1, max_size=20))
def test_apportioned_parts_sum_exactly_and_stay_within_one_of_the_proportion(total, weights):
    parts = apportion(total, weights)
    assert sum(parts) == total and all(p >= 0 for p in parts)
    whole = sum(weights) or len(weights)
    for part, weight in zip(parts, weights if any(weights) else [1] * len(weights), strict=True):
        assert abs(part * whole - total * weight) < whole  # off by less than one unit


@given(total=st.integers(0, 10**9), requests=st.integers(1, 512))
def test_a_batch_is_shared_equally_by_its_requests(total, requests):
    shares = share_equally(total, requests)
    assert sum(shares) == total and max(shares) - min(shares) <= 1


replicas = st.lists(
    st.tuples(st.integers(0, 4), st.integers(0, 10**10), st.integers(0, 3_000_000)), min_size=0, max_size=12
)


@settings(max_examples=300)
@given(window=st.integers(0, 10_000_000), capacity=st.integers(0, 2 * 10**10), hosted=replicas)
def test_cost_attribution_sums_exactly_to_the_device_time_charged(window, capacity, hosted):
    uses = [ReplicaUse(key=key, reserved_bytes=reserved, compute_us=compute) for key, reserved, compute in hosted]
    result = attribute_window(window_us=window, capacity_bytes=capacity, uses=uses)
    compute = sum(u.compute_us for u in uses)
    reserved = sum(u.reserved_bytes for u in uses)
    idle = max(0, window - compute)
    assert result.idle_us == idle
    # Every microsecond of the window is either charged to a replica or left unattributed.
    assert result.charged_us + result.unattributed_us == compute + idle
    assert sum(c.compute_us for c in result.charges.values()) == compute
    idle_charged = sum(c.idle_us for c in result.charges.values())
    if reserved == 0:
        assert idle_charged == 0
    elif capacity == 0 or reserved >= capacity:
        assert idle_charged == idle  # the replicas hold the whole device: they pay all of it
    else:
        assert idle_charged == idle * reserved // capacity
    # By footprint: each key's idle share matches its reserved bytes within a microsecond each.
    for key, charge in result.charges.items():
        own = sum(u.reserved_bytes for u in uses if u.key == key)
        holders = sum(1 for u in uses if u.key == key)
        if reserved:
            assert abs(charge.idle_us * reserved - idle_charged * own) <= holders * reserved


def test_worked_example_and_money():
    uses = [ReplicaUse("a", 300, 400_000), ReplicaUse("b", 200, 0)]
    result = attribute_window(window_us=2_000_000, capacity_bytes=1000, uses=uses)
    # 1.6 s idle; half the device is reserved: 0.8 s charged, 3:2 between a and b.
    assert result.charges["a"].compute_us == 400_000 and result.charges["a"].idle_us == 480_000
    assert result.charges["b"].idle_us == 320_000 and result.unattributed_us == 800_000
    assert cost_nanos(device_us=3_600_000_000, price_per_hour=Decimal("2.50")) == 2_500_000_000
    assert cost_nanos(device_us=880_000, price_per_hour=Decimal("3.60")) == 880_000


# ---------------------------------------------------------------- from heartbeats to rows


def _heartbeat(sent_at: float, *models: HostedModel, kind: DeviceKind = "cpu", capacity: int = 1000) -> WorkerHeartbeat:
    return WorkerHeartbeat(
        worker_id="w1",
        host="h",
        dataplane_url="http://127.0.0.1:1",
        queue="worker.w1",
        state="ready",
        sent_at=sent_at,
        device=DeviceState(
            kind=kind, index=0, name=kind, uuid="", total_bytes=capacity, used_bytes=420, free_bytes=580
        ),
        models=models,
    )


def _hosted(model: str, reserved: int, *, compute_us: int = 0, requests: int = 0, tenant: str = "alpha"):
    window = None
    if compute_us or requests:
        window = {
            "batches": 1,
            "batch_sizes": {str(requests): 1},
            "queue": {},
            "compute": {},
            "compute_s": compute_us / 1e6,
            "compute_us": compute_us,
            "requests": requests,
        }
    return HostedModel(
        key=ModelKey(tenant, model, 1), state="ready", reserved_bytes=reserved, measured_bytes=reserved, window=window
    )


@pytest.mark.django_db
def test_heartbeats_charge_compute_and_idle_at_the_kinds_price(world_a, world_b, staff_client):
    staff_client.put("/api/v1/prices/cpu/", {"price_per_hour": "3.60"}, format="json")
    now = time.time() - 10
    worker_record_heartbeat(heartbeat=_heartbeat(now, _hosted("clf", 300), _hosted("reg", 200)))
    # The first heartbeat has no window behind it: nothing is charged yet, but the device is sampled.
    assert not MetricRollup.objects.exists()
    assert DeviceSample.objects.get().replicas == {"alpha/clf@1": 300, "alpha/reg@1": 200}
    worker_record_heartbeat(
        heartbeat=_heartbeat(
            now + 2,
            _hosted("clf", 300, compute_us=400_000, requests=8),
            _hosted("reg", 200),
            _hosted("other", 0, tenant="bravo"),
        )
    )
    rows = {row.model_name: row for row in MetricRollup.objects.all()}
    assert set(rows) == {"clf", "reg"}  # nothing reserved, nothing computed: no row for bravo
    assert (rows["clf"].compute_us, rows["clf"].idle_us, rows["clf"].predictions) == (400_000, 480_000, 8)
    assert (rows["reg"].compute_us, rows["reg"].idle_us, rows["reg"].predictions) == (0, 320_000, 0)
    assert rows["clf"].cost_nanos == 880_000 and rows["reg"].cost_nanos == 320_000  # 3.60/h: 1 nano per µs
    sample = DeviceSample.objects.latest("at")
    assert (sample.idle_us, sample.unattributed_us, sample.reserved_bytes) == (1_600_000, 800_000, 500)


@pytest.mark.django_db
def test_a_long_silence_is_charged_only_up_to_the_dead_worker_horizon(world_a):
    now = time.time() - 100
    worker_record_heartbeat(heartbeat=_heartbeat(now, _hosted("clf", 1000)))
    worker_record_heartbeat(heartbeat=_heartbeat(now + 60, _hosted("clf", 1000)))
    (row,) = MetricRollup.objects.all()
    assert row.idle_us == 6_000_000  # 3 heartbeats of 2 s, not the minute nobody heard from it


# ---------------------------------------------------------------- usage API


def _usage_world(world_a):
    day_before = datetime.now(tz=UTC).replace(hour=12, minute=0, second=0, microsecond=0) - timedelta(days=1)
    for at, clf_cost in ((day_before, 2_000_000_000), (datetime.now(tz=UTC) - timedelta(seconds=30), 1_000_000_000)):
        rollups_record(points=[RollupPoint(int(at.timestamp()), "alpha", "clf", 1, requests=1000, errors=0)])
        MetricRollup.objects.create(
            resolution="1s",
            start=at,
            tenant=world_a.tenant,
            model_name="clf",
            version=1,
            source="worker:w1",
            predictions=1000,
            compute_us=500_000,
            idle_us=100_000,
            cost_nanos=clf_cost,
        )
    return day_before


@pytest.mark.django_db
def test_usage_per_day_and_version_with_cost_per_1000(world_a):
    day_before = _usage_world(world_a)
    # Compact: yesterday's minute is read from the one-minute row, today's from seconds.
    rollups_compact(now=datetime.now(tz=UTC))
    answer = world_a.session("viewer").get(f"/api/v1/tenants/alpha/usage/?from={day_before.date()}")
    assert answer.status_code == 200, answer.json()
    body = answer.json()
    assert body["currency"] == "USD" and set(body["prices"]) == {"cpu", "cuda"}
    days = {line["date"]: line for line in body["days"]}
    yesterday = days[str(day_before.date())]
    assert yesterday["predictions"] == 1000 and yesterday["requests"] == 1000
    assert yesterday["cost"] == "2.000000000" and yesterday["cost_per_1000"] == "2.000000000"
    assert yesterday["compute_s"] == 0.5 and yesterday["idle_s"] == 0.1 and yesterday["device_s"] == 0.6
    (model,) = body["models"]
    assert model["predictions"] == 2000 and model["cost"] == "3.000000000" and model["cost_per_1000"] == "1.500000000"
    assert body["total"]["cost"] == "3.000000000"
    assert [d["cost"] for d in body["daily_totals"]] == ["2.000000000", "1.000000000"]  # the tenant's, per day


@pytest.mark.django_db
def test_usage_as_csv(world_a):
    day_before = _usage_world(world_a)
    answer = world_a.bearer("read").get(f"/api/v1/tenants/alpha/usage/?from={day_before.date()}&format=csv")
    assert answer.status_code == 200
    assert answer["Content-Type"].startswith("text/csv") and "attachment" in answer["Content-Disposition"]
    lines = list(csv.DictReader(io.StringIO(answer.content.decode())))
    assert [line["date"] for line in lines] == sorted(line["date"] for line in lines) and len(lines) == 2
    assert {line["cost"] for line in lines} == {"2.000000000", "1.000000000"} and lines[0]["currency"] == "USD"


@pytest.mark.django_db
def test_usage_is_for_the_tenants_own_members_only(world_a, world_b):
    _usage_world(world_a)
    assert world_b.session("owner").get("/api/v1/tenants/alpha/usage/").status_code == 404
    assert world_b.bearer("read").get("/api/v1/tenants/alpha/usage/").status_code == 404
    assert world_b.bearer("read").get("/api/v1/tenants/alpha/usage/?format=csv").status_code == 404
    own = world_b.session("owner").get("/api/v1/tenants/bravo/usage/").json()
    assert own["days"] == [] and own["total"]["cost"] == "0.000000000"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "named"),
    [("from=yesterday", "from"), ("to=2026-13-01", "to"), ("from=2026-01-10&to=2026-01-01", "from"),
     ("from=2026-01-01&to=2026-03-01", "from")],
)  # fmt: skip
def test_bad_usage_ranges_are_refused_naming_the_parameter(world_a, query, named):
    answer = world_a.session("viewer").get(f"/api/v1/tenants/alpha/usage/?{query}")
    assert answer.status_code == 400 and named in answer.json()["field_errors"], answer.json()


# ---------------------------------------------------------------- prices


@pytest.mark.django_db
def test_staff_set_prices_members_read_them_and_it_is_audited(world_a, staff_client):
    assert world_a.session("viewer").get("/api/v1/prices/").json()["prices"]["cuda"] == "3.50"
    answer = staff_client.put("/api/v1/prices/cuda/", {"price_per_hour": "4.25"}, format="json")
    assert answer.status_code == 200, answer.json()
    assert world_a.bearer("read").get("/api/v1/prices/").json()["prices"]["cuda"] == "4.25"
    event = AuditEvent.objects.get(action="price.set")
    assert event.details == {"before": "3.50", "after": "4.25"} and event.target == "device-hour/cuda"
    for client in (world_a.session("owner"), world_a.bearer("manage")):
        assert client.put("/api/v1/prices/cuda/", {"price_per_hour": "0"}, format="json").status_code == 403
    assert staff_client.put("/api/v1/prices/tpu/", {"price_per_hour": "1"}, format="json").status_code == 400
    assert staff_client.put("/api/v1/prices/cpu/", {"price_per_hour": "-1"}, format="json").status_code == 400
    assert staff_client.put("/api/v1/prices/cpu/", {"price_per_hour": "NaN"}, format="json").status_code == 400


@pytest.mark.django_db
def test_device_samples_are_compacted_per_minute_and_pruned(world_a):
    base = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    for second, used in ((0, 100), (2, 300), (4, 200)):
        DeviceSample.objects.create(
            resolution="hb", at=base + timedelta(seconds=second), worker_id="w1", device_kind="cpu",
            capacity_bytes=1000, used_bytes=used, reserved_bytes=used, utilisation_pct=second * 10.0,
            replicas={"alpha/clf@1": used}, idle_us=1000, unattributed_us=10,
        )  # fmt: skip
    rollups_compact(now=base + timedelta(minutes=5))
    minute = DeviceSample.objects.get(resolution="1m")
    assert (minute.used_bytes, minute.utilisation_pct, minute.idle_us, minute.replicas) == (
        300, 20.0, 3000, {"alpha/clf@1": 200},
    )  # fmt: skip
    rollups_compact(now=base + timedelta(hours=2))
    assert not DeviceSample.objects.filter(resolution="hb").exists()
    assert DeviceSample.objects.filter(resolution="1m").count() == 1


@pytest.mark.parametrize("raw", ["two", "-1", "NaN", "1e9"])
def test_a_bad_default_price_stops_start_up_naming_the_variable(raw, monkeypatch):
    from django.core.exceptions import ImproperlyConfigured

    from control_plane.settings.env import price_per_hour

    monkeypatch.setenv("BERTH_PRICE_PER_HOUR_CUDA", raw)
    with pytest.raises(ImproperlyConfigured, match="BERTH_PRICE_PER_HOUR_CUDA"):
        price_per_hour("BERTH_PRICE_PER_HOUR_CUDA", default="3.50")
    monkeypatch.setenv("BERTH_PRICE_PER_HOUR_CUDA", " 2.75 ")
    assert price_per_hour("BERTH_PRICE_PER_HOUR_CUDA", default="3.50") == Decimal("2.75")


@pytest.mark.django_db
def test_device_series_are_for_staff_and_follow_heartbeats(world_a, staff_client):
    now = time.time() - 30
    worker_record_heartbeat(heartbeat=_heartbeat(now, _hosted("clf", 300)))
    worker_record_heartbeat(heartbeat=_heartbeat(now + 2, _hosted("clf", 300), _hosted("reg", 200)))
    answer = staff_client.get("/api/v1/devices/series/?range=1h&worker=w1")
    assert answer.status_code == 200, answer.json()
    points = answer.json()["points"]
    assert points and points[-1]["reserved_bytes"] == 500 and points[-1]["used_bytes"] == 420
    assert points[-1]["replicas"] == {"alpha/clf@1": 300, "alpha/reg@1": 200}
    assert staff_client.get("/api/v1/devices/series/?range=2y").status_code == 400
    for client in (world_a.session("owner"), world_a.bearer("read")):
        assert client.get("/api/v1/devices/series/").status_code == 403  # names every tenant's replicas


@pytest.mark.django_db
def test_a_heartbeat_delivered_late_still_counts_its_batches(world_a):
    now = time.time() - 20
    worker_record_heartbeat(heartbeat=_heartbeat(now, _hosted("clf", 300)))
    worker_record_heartbeat(heartbeat=_heartbeat(now + 4, _hosted("clf", 300, compute_us=1000, requests=2)))
    late = _heartbeat(now + 2, _hosted("clf", 300, compute_us=500, requests=1))
    worker_record_heartbeat(heartbeat=late)  # older than the stored one: arrives after it
    rows = MetricRollup.objects.filter(model_name="clf")
    assert sum(row.predictions for row in rows) == 3 and sum(row.compute_us for row in rows) == 1500
    assert DeviceSample.objects.count() == 2  # the stale device state is not sampled


@pytest.mark.django_db
def test_a_heartbeat_writes_one_row_per_second_its_batches_ran_in(world_a):
    now = int(time.time()) - 20
    worker_record_heartbeat(heartbeat=_heartbeat(now, _hosted("clf", 500)))
    seconds = [
        {"second": now + 1, "batches": 2, "batch_sizes": {"1": 2}, "queue": {}, "compute": {}, "compute_s": 0.002,
         "compute_us": 2000, "requests": 2},
        {"second": now + 2, "batches": 1, "batch_sizes": {"3": 1}, "queue": {}, "compute": {}, "compute_s": 0.001,
         "compute_us": 1000, "requests": 3},
    ]  # fmt: skip
    window = {"batches": 3, "batch_sizes": {"1": 2, "3": 1}, "queue": {}, "compute": {}, "compute_s": 0.003,
              "compute_us": 3000, "requests": 5, "seconds": seconds}  # fmt: skip
    hosted = HostedModel(key=ModelKey("alpha", "clf", 1), state="ready", reserved_bytes=500, measured_bytes=500,
                         window=window)  # fmt: skip
    worker_record_heartbeat(heartbeat=_heartbeat(now + 2, hosted))
    rows = list(MetricRollup.objects.order_by("start"))
    assert [(int(r.start.timestamp()), r.batches, r.predictions, r.compute_us) for r in rows] == [
        (now + 1, 2, 2, 2000), (now + 2, 1, 3, 1000),
    ]  # fmt: skip
    assert rows[-1].idle_us == (2_000_000 - 3000) // 2  # half the device reserved; idle on the heartbeat's second
    assert rows[0].idle_us == 0


@pytest.mark.django_db
def test_device_minutes_are_kept_through_hours_without_inference(world_a):
    base = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    for minute in range(0, 180, 1):  # three hours of heartbeats, no inference at all
        DeviceSample.objects.create(
            resolution="hb", at=base + timedelta(minutes=minute), worker_id="w1", device_kind="cpu",
            capacity_bytes=1000, used_bytes=10, reserved_bytes=0,
        )  # fmt: skip
        if minute % 30 == 29:  # the beat task runs every so often
            rollups_compact(now=base + timedelta(minutes=minute + 3))
    rollups_compact(now=base + timedelta(minutes=183))
    assert DeviceSample.objects.filter(resolution="1m").count() == 180


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/api/v1/tenants/alpha/usage/?model=a%00b", "/api/v1/tenants/alpha/metrics/?model=A B",
                                 "/api/v1/devices/series/?worker=x%00"])  # fmt: skip
def test_filters_that_cannot_name_anything_are_refused(world_a, staff_client, url):
    answer = staff_client.get(url)
    assert answer.status_code == 400 and answer.json()["field_errors"], answer.content
