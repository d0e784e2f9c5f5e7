"""The dynamic batcher, knob by knob (Triton's semantics), with real Python models."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from inference_workers.batching import INLINE_NEVER_S, INLINE_SLOW_ALLOWED, BatchObserver, DynamicBatcher
from inference_workers.errors import (
    ExecutionFailedError,
    InvalidInputError,
    QueueFullError,
    RequestTimeoutError,
    UnavailableError,
)
from inference_workers.types import BatchingConfig


class Recorder(BatchObserver):
    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.queue_waits: list[float] = []
        self.finished: list[bool] = []

    def batch_executed(self, *, size, queue_seconds, compute_seconds, ok):
        self.sizes.append(size)
        self.queue_waits += queue_seconds

    def request_finished(self, *, seconds, ok):
        self.finished.append(ok)


class Model:
    """y = 2x, optionally slow, failing on a poison value, or returning wrong rows."""

    def __init__(self, *, delay: float = 0.0, poison: float | None = None, wrong_rows: bool = False) -> None:
        self.delay = delay
        self.poison = poison
        self.wrong_rows = wrong_rows
        self.calls: list[int] = []
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def __call__(self, inputs):
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            x = inputs["x"]
            self.calls.append(int(x.shape[0]))
            if self.delay:
                time.sleep(self.delay)
            if self.poison is not None and (x == self.poison).any():
                raise RuntimeError("poisoned input")
            y = x * 2
            return {"y": y[:1] if self.wrong_rows else y}
        finally:
            with self._lock:
                self.active -= 1


def row(value: float, width: int = 4) -> dict[str, np.ndarray]:
    return {"x": np.full((1, width), value, dtype=np.float32)}


async def make(model: Model, recorder: Recorder | None = None, **config) -> DynamicBatcher:
    batcher = DynamicBatcher(execute=model, config=BatchingConfig(**config), batched=True, name="t", observer=recorder)
    batcher.start()
    return batcher


async def test_each_request_gets_its_own_rows_back():
    model = Model(delay=0.02)
    batcher = await make(model, max_batch_size=8)
    results = await asyncio.gather(*(batcher.submit(row(float(i))) for i in range(12)))
    for i, result in enumerate(results):
        assert np.array_equal(result["y"], np.full((1, 4), 2.0 * i, dtype=np.float32))
    await batcher.close()


async def test_batches_never_exceed_max_batch_size():
    model = Model(delay=0.02)
    recorder = Recorder()
    batcher = await make(model, recorder, max_batch_size=4)
    await asyncio.gather(*(batcher.submit(row(1.0)) for _ in range(10)))
    assert max(recorder.sizes) <= 4
    assert sum(recorder.sizes) == 10
    assert 4 in recorder.sizes  # requests queued behind a busy instance were stacked
    await batcher.close()


async def test_a_request_over_max_batch_size_is_refused():
    batcher = await make(Model(), max_batch_size=2)
    with pytest.raises(InvalidInputError, match="at most 2"):
        await batcher.submit({"x": np.zeros((3, 4), dtype=np.float32)})
    await batcher.close()


async def test_queue_delay_waits_for_company_then_sends_what_there_is():
    recorder = Recorder()
    batcher = await make(Model(), recorder, max_batch_size=8, max_queue_delay_us=100_000)
    started = time.perf_counter()
    first = asyncio.ensure_future(batcher.submit(row(1.0)))
    await asyncio.sleep(0.02)
    second = asyncio.ensure_future(batcher.submit(row(2.0)))
    await asyncio.gather(first, second)
    elapsed = time.perf_counter() - started
    assert recorder.sizes == [2]  # the second arrival joined the first one's batch
    assert 0.09 <= elapsed < 0.5  # sent when the oldest had waited the delay
    await batcher.close()


async def test_an_arrival_that_fills_the_batch_sends_it_at_once():
    recorder = Recorder()
    batcher = await make(Model(), recorder, max_batch_size=2, max_queue_delay_us=2_000_000)
    started = time.perf_counter()
    await asyncio.gather(batcher.submit(row(1.0)), batcher.submit(row(2.0)))
    assert time.perf_counter() - started < 1.0
    assert recorder.sizes == [2]
    await batcher.close()


async def test_preferred_size_is_sent_at_once_without_waiting_the_delay():
    recorder = Recorder()
    batcher = await make(Model(), recorder, max_batch_size=8, max_queue_delay_us=3_000_000, preferred_batch_sizes=(2,))
    started = time.perf_counter()
    first = [asyncio.ensure_future(batcher.submit(row(float(i)))) for i in range(3)]
    await asyncio.wait_for(asyncio.gather(first[0], first[1]), timeout=1.0)
    assert time.perf_counter() - started < 1.0  # the preferred size (2) left at once
    assert not first[2].done()
    assert recorder.sizes == [2]
    await asyncio.gather(*first)  # the third leaves when its delay runs out
    assert recorder.sizes == [2, 1]
    await batcher.close()


async def test_a_full_queue_rejects_at_once():
    model = Model(delay=0.3)
    batcher = await make(model, max_batch_size=1, max_queue_size=2)
    running = asyncio.ensure_future(batcher.submit(row(0.0)))
    await asyncio.sleep(0.05)  # the instance is now busy
    queued = [asyncio.ensure_future(batcher.submit(row(1.0))) for _ in range(2)]
    await asyncio.sleep(0.01)
    started = time.perf_counter()
    with pytest.raises(QueueFullError):
        await batcher.submit(row(9.0))
    assert time.perf_counter() - started < 0.2  # not after the busy instance (0.3 s)
    await asyncio.gather(running, *queued)
    await batcher.close()


async def test_cancelled_requests_hold_no_place_in_a_full_queue():
    model = Model(delay=0.3)
    batcher = await make(model, max_batch_size=1, max_queue_size=2)
    running = asyncio.ensure_future(batcher.submit(row(0.0)))
    await asyncio.sleep(0.05)  # the instance is now busy
    gone = [asyncio.ensure_future(batcher.submit(row(1.0))) for _ in range(2)]
    await asyncio.sleep(0.01)
    for task in gone:
        task.cancel()  # their clients left
    await asyncio.sleep(0.01)
    assert (await batcher.submit(row(2.0)))["y"].tolist() == [[4.0] * 4]  # taken, not refused
    await running
    assert model.calls == [1, 1]  # the cancelled ones never ran
    await batcher.close()


async def test_a_request_that_waits_past_its_timeout_is_failed_not_run():
    model = Model(delay=0.3)
    batcher = await make(model, max_batch_size=1, default_timeout_us=50_000)
    running = asyncio.ensure_future(batcher.submit(row(0.0)))
    await asyncio.sleep(0.02)
    with pytest.raises(RequestTimeoutError):
        await batcher.submit(row(5.0))
    await running
    await asyncio.sleep(0.05)
    assert model.calls == [1]  # the expired request never reached the model
    await batcher.close()


async def test_a_request_may_lower_the_timeout_but_not_raise_it():
    batcher = await make(Model(), max_batch_size=1, default_timeout_us=100_000)
    assert batcher._timeout_s(20_000) == pytest.approx(0.02)
    assert batcher._timeout_s(500_000) == pytest.approx(0.1)
    await batcher.close()


async def test_cancelled_requests_are_dropped_before_execution():
    model = Model(delay=0.2)
    batcher = await make(model, max_batch_size=8)
    running = asyncio.ensure_future(batcher.submit(row(0.0)))
    await asyncio.sleep(0.05)
    doomed = asyncio.ensure_future(batcher.submit(row(7.0)))
    kept = asyncio.ensure_future(batcher.submit(row(3.0)))
    await asyncio.sleep(0.01)
    doomed.cancel()
    await running
    result = await kept
    assert np.array_equal(result["y"], np.full((1, 4), 6.0, dtype=np.float32))
    assert model.calls == [1, 1]  # the cancelled one was not in the second batch
    await batcher.close()


async def test_only_equal_non_batch_shapes_are_stacked():
    model = Model(delay=0.05)
    recorder = Recorder()
    batcher = await make(model, recorder, max_batch_size=8)
    running = asyncio.ensure_future(batcher.submit(row(0.0)))
    await asyncio.sleep(0.01)
    narrow = [asyncio.ensure_future(batcher.submit(row(1.0, width=4))) for _ in range(2)]
    wide = [asyncio.ensure_future(batcher.submit(row(1.0, width=5))) for _ in range(2)]
    results = await asyncio.gather(running, *narrow, *wide)
    assert [r["y"].shape for r in results[3:]] == [(1, 5), (1, 5)]
    assert recorder.sizes == [1, 2, 2]
    await batcher.close()


async def test_an_error_fails_its_batch_only():
    model = Model(delay=0.05, poison=666.0)
    batcher = await make(model, max_batch_size=8)
    blocker = asyncio.ensure_future(batcher.submit(row(0.0)))
    await asyncio.sleep(0.01)
    bad_batch = [asyncio.ensure_future(batcher.submit(row(v))) for v in (1.0, 666.0)]
    outcomes = await asyncio.gather(blocker, *bad_batch, return_exceptions=True)
    assert isinstance(outcomes[1], ExecutionFailedError) and isinstance(outcomes[2], ExecutionFailedError)
    assert "poisoned input" in str(outcomes[2])
    after = await batcher.submit(row(4.0))  # the model keeps serving
    assert after["y"][0, 0] == 8.0
    await batcher.close()


async def test_a_wrong_number_of_output_rows_fails_the_batch():
    batcher = await make(Model(delay=0.01, wrong_rows=True), max_batch_size=8)
    outcomes = await asyncio.gather(*(batcher.submit(row(1.0)) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(o, ExecutionFailedError) for o in outcomes[1:])
    assert "rows" in str(outcomes[-1])
    await batcher.close()


async def test_instance_count_runs_batches_in_parallel():
    model = Model(delay=0.1)
    batcher = await make(model, max_batch_size=1, instance_count=3)
    started = time.perf_counter()
    await asyncio.gather(*(batcher.submit(row(1.0)) for _ in range(3)))
    assert model.max_active == 3
    assert time.perf_counter() - started < 0.25
    await batcher.close()


async def test_close_lets_running_finish_and_fails_the_rest():
    model = Model(delay=0.2)
    batcher = await make(model, max_batch_size=1)
    running = asyncio.ensure_future(batcher.submit(row(1.0)))
    await asyncio.sleep(0.05)
    queued = asyncio.ensure_future(batcher.submit(row(2.0)))
    await asyncio.sleep(0.01)
    await batcher.close(drain_seconds=0.0)
    assert (await running)["y"][0, 0] == 2.0
    with pytest.raises(UnavailableError):
        await queued
    with pytest.raises(UnavailableError):
        await batcher.submit(row(3.0))


async def test_close_returns_once_nothing_on_the_loop_holds_the_model():
    import gc
    import weakref

    model = Model()
    batcher = await make(model, max_batch_size=4)
    await batcher.submit(row(1.0))
    await asyncio.sleep(0.05)  # idle: the close has nothing to drain and waits for nothing
    gone = weakref.ref(model)
    await batcher.close()
    # The scheduler has ended, not just been told to: its frame no longer holds the batcher,
    # so dropping the batcher frees the model at once (an unload collects right after close).
    assert batcher._scheduler is not None and batcher._scheduler.done()
    del batcher, model
    gc.collect()
    assert gone() is None


async def test_fast_models_run_on_the_loop_and_still_batch_under_load():
    model = Model()
    recorder = Recorder()
    batcher = await make(model, recorder, max_batch_size=16)
    for _ in range(3):  # measured on a thread first
        await batcher.submit(row(1.0))
    assert batcher._runs_inline()
    results = await asyncio.gather(*(batcher.submit(row(float(i))) for i in range(16)))
    assert [r["y"][0, 0] for r in results] == [2.0 * i for i in range(16)]
    assert max(recorder.sizes) > 1  # requests queued in one loop turn went as one batch
    await batcher.close()


async def test_a_fast_model_stays_on_the_loop_through_a_preempted_batch_but_not_a_slow_streak():
    batcher = await make(Model(), max_batch_size=16)
    # The rule over the last 32 batches' times (as measured; set here, as real timing on
    # shared cores would make the fast ones flaky).
    batcher._recent_compute.extend([1e-5] * (32 - INLINE_SLOW_ALLOWED) + [1e-3] * INLINE_SLOW_ALLOWED)
    assert batcher._runs_inline()  # a couple of slow (preempted) batches in 32: still on the loop
    batcher._recent_compute.append(1e-3)
    assert not batcher._runs_inline()  # one more: the model is slow, back to the thread pool
    batcher._recent_compute.extend([1e-5] * 32)
    assert batcher._runs_inline()  # fast again for a full window
    await batcher.close()


async def test_one_very_slow_batch_sends_a_fast_model_back_to_the_thread_pool():
    model = Model()
    batcher = await make(model, max_batch_size=16)
    batcher._recent_compute.extend([1e-5] * 32)
    assert batcher._runs_inline()
    model.delay = INLINE_NEVER_S  # a real batch, on the loop, that takes at least that long
    await batcher.submit(row(1.0))
    assert not batcher._runs_inline()
    await batcher.close()


async def test_a_requests_own_timeout_expires_on_time_while_the_instance_is_busy():
    batcher = await make(Model(delay=1.0), max_batch_size=1)
    running = asyncio.ensure_future(batcher.submit(row(0.0)))
    await asyncio.sleep(0.02)
    started = time.perf_counter()
    with pytest.raises(RequestTimeoutError):
        await batcher.submit(row(1.0), timeout_us=50_000)
    assert time.perf_counter() - started < 0.3  # not when the busy instance frees up (1 s)
    await running
    await batcher.close()


async def test_a_preferred_size_is_sent_even_when_the_queue_could_fill_the_batch():
    model = Model(delay=0.1)
    recorder = Recorder()
    batcher = await make(model, recorder, max_batch_size=8, preferred_batch_sizes=(4,))
    running = asyncio.ensure_future(batcher.submit(row(0.0)))
    await asyncio.sleep(0.02)
    queued = [asyncio.ensure_future(batcher.submit(row(1.0))) for _ in range(8)]
    await asyncio.gather(running, *queued)
    assert recorder.sizes == [1, 4, 4]
    await batcher.close()


async def test_inputs_that_disagree_on_the_batch_dimension_are_refused():
    batcher = DynamicBatcher(execute=lambda inputs: inputs, config=BatchingConfig(max_batch_size=8), batched=True)
    batcher.start()
    with pytest.raises(InvalidInputError, match="dimension 0"):
        await batcher.submit({"a": np.zeros((1, 4), np.float32), "b": np.zeros((2, 4), np.float32)})
    await batcher.close()


async def test_every_request_is_reported_finished():
    recorder = Recorder()
    batcher = await make(Model(poison=5.0), recorder, max_batch_size=1)
    await batcher.submit(row(1.0))
    with pytest.raises(ExecutionFailedError):
        await batcher.submit(row(5.0))
    assert recorder.finished == [True, False]
    await batcher.close()
