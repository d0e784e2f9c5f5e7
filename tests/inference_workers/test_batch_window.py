"""The batch window a heartbeat carries: sizes, queue and compute time since the last one."""

from __future__ import annotations

import pytest

from inference_workers.histogram import percentile
from inference_workers.metrics import ModelStats, WorkerMetrics
from inference_workers.types import HostedModel, MessageError, ModelKey


def test_a_heartbeat_takes_the_window_once_and_it_starts_afresh():
    stats = ModelStats(ModelKey("acme", "clf", 1), WorkerMetrics())
    assert stats.take_window() is None
    stats.batch_executed(size=4, queue_seconds=[0.001, 0.002, 0.002, 0.004], compute_seconds=0.010, ok=True)
    stats.batch_executed(size=1, queue_seconds=[0.0005], compute_seconds=0.003, ok=True)
    window = stats.take_window()
    assert window is not None
    assert window["batches"] == 2 and window["batch_sizes"] == {"4": 1, "1": 1}
    assert sum(window["queue"].values()) == 5 and sum(window["compute"].values()) == 2
    assert window["compute_s"] == pytest.approx(0.013)
    # For cost: whole microseconds summed per batch, and the requests the batches answered.
    assert window["compute_us"] == 13_000 and window["requests"] == 5
    slowest = percentile(window["compute"], 99)
    assert slowest is not None and 0.008 <= slowest <= 0.012
    assert stats.take_window() is None


def test_the_window_travels_in_the_heartbeat_message_and_bad_ones_are_refused():
    window = {"batches": 1, "batch_sizes": {"2": 1}, "queue": {"10": 2}, "compute": {"30": 1}, "compute_s": 0.01}
    model = HostedModel(
        key=ModelKey("acme", "clf", 1), state="ready", reserved_bytes=1, measured_bytes=1, window=window
    )
    message = {**model.__dict__, "key": model.key.__dict__}
    # An older worker's window (no compute_us / requests) is read with them filled in.
    assert HostedModel.from_message(message).window == {**window, "compute_us": 10_000, "requests": 0}
    with pytest.raises(MessageError):
        HostedModel.from_message({**message, "window": {"batch_sizes": {"two": 1}}})
    with pytest.raises(MessageError):
        HostedModel.from_message({**message, "window": [1, 2]})


def test_a_failed_batch_counts_no_predictions():
    stats = ModelStats(ModelKey("acme", "clf", 1), WorkerMetrics())
    stats.batch_executed(size=3, queue_seconds=[0.001] * 3, compute_seconds=0.0, ok=False)
    stats.batch_executed(size=2, queue_seconds=[0.001] * 2, compute_seconds=0.002, ok=True)
    window = stats.take_window()
    assert window is not None and window["requests"] == 2 and window["compute_us"] == 2_000


def test_the_window_is_rolled_up_per_second_too(monkeypatch):
    import inference_workers.metrics as metrics_module

    clock = [1000.2]
    monkeypatch.setattr(metrics_module.time, "time", lambda: clock[0])
    stats = ModelStats(ModelKey("acme", "clf", 1), WorkerMetrics())
    stats.batch_executed(size=2, queue_seconds=[0.001, 0.001], compute_seconds=0.004, ok=True)
    clock[0] = 1000.9
    stats.batch_executed(size=1, queue_seconds=[0.002], compute_seconds=0.003, ok=True)
    clock[0] = 1001.5
    stats.batch_executed(size=4, queue_seconds=[0.001] * 4, compute_seconds=0.010, ok=True)
    window = stats.take_window()
    assert window is not None and window["requests"] == 7
    parts = window["seconds"]
    assert [(p["second"], p["batches"], p["requests"], p["compute_us"]) for p in parts] == [
        (1000, 2, 3, 7000), (1001, 1, 4, 10_000),
    ]  # fmt: skip
    assert sum(p["compute_us"] for p in parts) == window["compute_us"]
    # It travels in the heartbeat and is read back the same.
    key = ModelKey("acme", "clf", 1)
    model = HostedModel(key=key, state="ready", reserved_bytes=1, measured_bytes=1, window=window)
    assert HostedModel.from_message({**model.__dict__, "key": model.key.__dict__}).window == window
    with pytest.raises(MessageError, match="seconds"):
        HostedModel.from_message({**model.__dict__, "key": model.key.__dict__, "window": {**window, "seconds": [{}]}})


def test_a_window_whose_heartbeat_was_not_sent_goes_out_with_the_next():
    stats = ModelStats(ModelKey("acme", "clf", 1), WorkerMetrics())
    stats.batch_executed(size=2, queue_seconds=[0.001, 0.001], compute_seconds=0.004, ok=True)
    lost = stats.take_window()
    assert lost is not None
    stats.batch_executed(size=1, queue_seconds=[0.001], compute_seconds=0.001, ok=True)
    stats.put_back(lost)  # the broker was down
    window = stats.take_window()
    assert window is not None and window["batches"] == 2 and window["requests"] == 3
    assert window["compute_us"] == 5000 and sum(p["compute_us"] for p in window["seconds"]) == 5000


def test_heartbeat_percentiles_cover_the_last_30_s_at_a_fixed_cost(monkeypatch):
    from inference_workers import metrics

    clock = [1_000_000.0]
    monkeypatch.setattr(metrics.time, "time", lambda: clock[0])
    stats = ModelStats(ModelKey("acme", "clf", 1), WorkerMetrics())
    assert stats.percentiles_ms() == (0.0, 0.0)
    for n in range(10_000):  # 98 % at 1 ms, 2 % at 100 ms, spread over 20 s
        clock[0] = 1_000_000.0 + n * 0.002
        stats.request_finished(seconds=0.1 if n % 50 == 0 else 0.001, ok=True)
    p50, p99 = stats.percentiles_ms()
    assert 0.8 <= p50 <= 1.2 and 80 <= p99 <= 120
    assert len(stats._recent) <= 21  # one histogram per second, not one entry per request
    clock[0] += 31  # a quiet half minute later, the window is empty again
    assert stats.percentiles_ms() == (0.0, 0.0)
    stats.request_finished(seconds=0.002, ok=True)
    assert len(stats._recent) == 1 and 1.6 <= stats.percentiles_ms()[0] <= 2.4
