"""A dynamic batcher per hosted model, with Triton's semantics, knob for knob.

Requests queue with their future and enqueue time. When an execution instance is free,
the scheduler forms a batch from the head of the queue: only requests whose non-batch
dimensions and dtypes match the head's are stacked, up to ``max_batch_size`` rows. It
sends at once when the batch is full, when it cannot grow (the next request does not
fit), when a preferred size can be formed (the largest such), or when there is no queue
delay; otherwise it waits while the oldest request has waited less than
``max_queue_delay_us``. Cancelled requests are dropped before execution, expired ones get
a timeout, and every other future gets its rows of the result or its batch's error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from inference_workers.errors import (
    ExecutionFailedError,
    InvalidInputError,
    QueueFullError,
    RequestTimeoutError,
    UnavailableError,
)
from inference_workers.types import BatchingConfig

log = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]
Execute = Callable[[Arrays], Arrays]

# A batch that takes less than this runs on the event loop itself: handing it to a thread
# and back costs more than the model (the reference MLP runs in ~0.08 ms).
INLINE_BELOW_S = 0.0005
# Of the last batches (``_recent_compute``), how many may have been slower than that with
# the model still on the loop: on shared cores a fast model's batch is now and then
# preempted mid-run (about 1 in 100 on a 2-core VM under load), which says nothing about
# the model. None may have taken ``INLINE_NEVER_S``: such a model belongs on a thread.
INLINE_SLOW_ALLOWED = 2
INLINE_NEVER_S = 0.005


class BatchObserver:
    """Receives the batcher's measurements (see ``metrics.ModelStats``); does nothing here."""

    def batch_executed(self, *, size: int, queue_seconds: list[float], compute_seconds: float, ok: bool) -> None:
        """One batch ran: its rows, each request's queue time, its compute time."""

    def request_finished(self, *, seconds: float, ok: bool) -> None:
        """One request left the batcher, with its total time in it."""


@dataclass(eq=False)
class _Pending:
    inputs: Arrays
    rows: int
    shape_key: tuple[object, ...]
    future: asyncio.Future[Arrays]
    enqueued: float
    deadline: float | None = None
    queue_seconds: float = field(default=0.0)
    dispatched: bool = False


def _shape_key(inputs: Mapping[str, np.ndarray]) -> tuple[object, ...]:
    return tuple((name, array.dtype.str, array.shape[1:]) for name, array in sorted(inputs.items()))


class DynamicBatcher:
    """Batches requests for one model and runs them on ``instance_count`` executions.

    Slow models run on a thread pool of ``instance_count`` threads, fed by a scheduler
    task. Fast models (batches under ``INLINE_BELOW_S``, one instance, no queue delay) run
    on the event loop: a dispatch callback, queued behind the request handlers that are
    ready in the same loop iteration, forms the batch from everything they queued.
    """

    def __init__(
        self,
        *,
        execute: Execute,
        config: BatchingConfig,
        batched: bool,
        name: str = "model",
        observer: BatchObserver | None = None,
    ) -> None:
        self._execute = execute
        self.config = config
        self.batched = batched and config.max_batch_size > 0
        self.name = name
        self._observer = observer or BatchObserver()
        self._queue: deque[_Pending] = deque()
        self._preferred = sorted(config.preferred_batch_sizes)
        self._executor = ThreadPoolExecutor(max_workers=config.instance_count, thread_name_prefix=f"berth-{name}")
        self._free = config.instance_count
        self._slot_freed = asyncio.Event()
        self._wake = asyncio.Event()
        self._closing = False
        self._dispatch_scheduled = False
        self._scheduler: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._recent_compute: deque[float] = deque(maxlen=32)
        self.inflight = 0

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a batch (cancelled ones not yet dropped included)."""
        return len(self._queue)

    def start(self) -> None:
        """Starts the scheduler on the running event loop."""
        self._scheduler = asyncio.get_running_loop().create_task(self._schedule(), name=f"batcher-{self.name}")
        self._scheduler.add_done_callback(self._scheduler_ended)

    def _scheduler_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        log.error("the batcher of %s stopped: %s", self.name, task.exception())
        self._closing = True
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_exception(UnavailableError(f"model {self.name}'s batcher failed; retry elsewhere"))
        self._queue.clear()

    async def submit(self, inputs: Arrays, *, timeout_us: int | None = None) -> Arrays:
        """Queues one request and waits for its outputs.

        Args:
            inputs: Arrays by input name; with batching, dimension 0 is this request's rows.
            timeout_us: The request's own queue timeout; it may only lower the model's.

        Raises:
            QueueFullError: The queue is at ``max_queue_size`` (rejected at once).
            RequestTimeoutError: It waited in the queue past its timeout.
            ExecutionFailedError: The model failed on its batch.
            UnavailableError: The batcher is closing.
            InvalidInputError: It has more rows than ``max_batch_size``.
        """
        if self._closing:
            raise UnavailableError(f"model {self.name} is being unloaded; retry on another replica")
        if self.config.max_queue_size and len(self._queue) >= self.config.max_queue_size:
            self._drop_dead(asyncio.get_running_loop().time())  # cancelled and expired ones hold no place
        if self.config.max_queue_size and len(self._queue) >= self.config.max_queue_size:
            raise QueueFullError(f"model {self.name} has {len(self._queue)} requests queued (its max_queue_size)")
        rows = 1
        if self.batched:
            counts = {int(array.shape[0]) if array.ndim else 0 for array in inputs.values()}
            if len(counts) != 1 or 0 in counts:
                raise InvalidInputError(
                    f"model {self.name} is batched: every input needs the same, non-zero dimension 0 (got {counts})"
                )
            rows = counts.pop()
            if rows > self.config.max_batch_size:
                raise InvalidInputError(
                    f"the request has {rows} rows; model {self.name} takes at most {self.config.max_batch_size}"
                )
        loop = asyncio.get_running_loop()
        now = loop.time()
        timeout = self._timeout_s(timeout_us)
        pending = _Pending(
            inputs=inputs,
            rows=rows,
            shape_key=_shape_key(inputs),
            future=loop.create_future(),
            enqueued=now,
            deadline=now + timeout if timeout else None,
        )
        self._queue.append(pending)
        self.inflight += 1
        if pending.deadline is not None:
            # Expire on time, whether or not an instance is free to notice.
            timer = loop.call_at(pending.deadline, self._expire, pending)
            pending.future.add_done_callback(lambda _: timer.cancel())
        if self._runs_inline() and self.config.max_queue_delay_us == 0:
            if not self._dispatch_scheduled:
                self._dispatch_scheduled = True
                loop.call_soon(self._dispatch_inline)
        else:
            self._wake.set()
        try:
            # Cancelling this await cancels the future, and dispatch drops it.
            return await pending.future
        finally:
            self.inflight -= 1
            future = pending.future
            self._observer.request_finished(
                seconds=loop.time() - now, ok=future.done() and not future.cancelled() and future.exception() is None
            )

    def _expire(self, pending: _Pending) -> None:
        # A timeout bounds the wait in the queue; once its batch runs, the request finishes.
        if not pending.future.done() and not pending.dispatched:
            waited = asyncio.get_running_loop().time() - pending.enqueued
            pending.future.set_exception(
                RequestTimeoutError(f"the request waited {waited:.3f} s in {self.name}'s queue, past its timeout")
            )

    def _timeout_s(self, timeout_us: int | None) -> float:
        default = self.config.default_timeout_us
        if timeout_us is not None and timeout_us > 0 and (default == 0 or timeout_us < default):
            return timeout_us / 1e6
        return default / 1e6

    async def close(self, *, drain_seconds: float = 30.0) -> None:
        """Stops taking requests, lets queued and running ones finish, then stops.

        Requests still queued after ``drain_seconds`` get ``UnavailableError``.
        """
        self._closing = True
        self._wake.set()
        deadline = time.monotonic() + drain_seconds
        while (self._queue or self._running or self._free < self.config.instance_count) and (
            time.monotonic() < deadline
        ):
            await asyncio.sleep(0.01)
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_exception(UnavailableError(f"model {self.name} was unloaded"))
        self._queue.clear()
        try:
            if self._scheduler is not None:
                self._scheduler.cancel()
                # Its end is awaited: a cancelled task ends on a later turn of the loop, and
                # until then its frame holds this batcher and the model, so an unload's
                # collection on another thread, run as soon as this returns, could find them
                # still alive.
                await asyncio.wait({self._scheduler})
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def _runs_inline(self) -> bool:
        """Fast single-instance models run on the loop once their speed is known.

        Of the last 32 batches, all but ``INLINE_SLOW_ALLOWED`` must have been under
        ``INLINE_BELOW_S`` and none as slow as ``INLINE_NEVER_S``: a model that is really
        slow goes back to the thread pool after a few batches (at once after a very slow
        one), while a fast one whose batch was preempted now and then stays on the loop. So
        the loop (and other models) stall at most a few times per 32 batches, each time for
        less than ``INLINE_NEVER_S``.
        """
        recent = self._recent_compute
        if self.config.instance_count != 1 or len(recent) < 3:
            return False
        slow = 0
        for took in recent:
            if took >= INLINE_NEVER_S:
                return False
            slow += took >= INLINE_BELOW_S
        return slow <= INLINE_SLOW_ALLOWED

    # Forming batches ---------------------------------------------------------------

    def _drop_dead(self, now: float) -> None:
        """Drops cancelled requests and fails expired ones, anywhere in the queue."""
        if not any(p.future.done() or (p.deadline is not None and p.deadline <= now) for p in self._queue):
            return
        alive: deque[_Pending] = deque()
        for pending in self._queue:
            if pending.future.done():
                continue
            if pending.deadline is not None and pending.deadline <= now:
                pending.future.set_exception(
                    RequestTimeoutError(f"the request waited {now - pending.enqueued:.3f} s in {self.name}'s queue")
                )
                continue
            alive.append(pending)
        self._queue = alive

    def _candidate(self) -> tuple[list[_Pending], bool]:
        """The batch the head of the queue can form now, and whether it can still grow."""
        head = self._queue[0]
        if not self.batched:
            return [head], False
        batch = [head]
        rows = head.rows
        for pending in list(self._queue)[1:]:
            if pending.shape_key != head.shape_key or rows + pending.rows > self.config.max_batch_size:
                return batch, False
            batch.append(pending)
            rows += pending.rows
        return batch, rows < self.config.max_batch_size

    def _preferred_prefix(self, batch: list[_Pending]) -> list[_Pending] | None:
        if not self._preferred:
            return None
        rows = 0
        best = None
        for index, pending in enumerate(batch):
            rows += pending.rows
            if rows in self._preferred:
                best = index + 1
        return batch[:best] if best else None

    def _take(self, batch: list[_Pending], now: float) -> list[_Pending]:
        for pending in batch:
            self._queue.popleft()
            pending.queue_seconds = now - pending.enqueued
            pending.dispatched = True
        return batch

    # Fast models: on the loop --------------------------------------------------------

    def _dispatch_inline(self) -> None:
        self._dispatch_scheduled = False
        loop = asyncio.get_event_loop()
        while self._queue and self._free > 0:
            now = loop.time()
            self._drop_dead(now)
            if not self._queue:
                return
            batch, _ = self._candidate()
            preferred = self._preferred_prefix(batch)
            self._free -= 1
            try:
                self._execute_batch(self._take(preferred or batch, now))
            finally:
                self._release()
        if self._queue:
            self._wake.set()  # what is left (an instance was busy) goes to the scheduler

    # Slow models: the scheduler and the thread pool ----------------------------------

    def _release(self) -> None:
        self._free += 1
        self._slot_freed.set()

    async def _acquire(self) -> None:
        while self._free == 0:
            self._slot_freed.clear()
            await self._slot_freed.wait()
        self._free -= 1

    async def _schedule(self) -> None:
        while True:
            # Wait for work without holding an instance.
            while not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
            await self._acquire()
            batch = await self._next_batch()
            if batch is None:
                self._release()
                continue
            if self._runs_inline():
                try:
                    self._execute_batch(batch)
                finally:
                    self._release()
                continue
            task = asyncio.get_running_loop().create_task(self._run_in_thread(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _next_batch(self) -> list[_Pending] | None:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            self._drop_dead(now)
            if not self._queue:
                return None
            batch, can_grow = self._candidate()
            preferred = self._preferred_prefix(batch)
            waited = now - batch[0].enqueued
            delay = self.config.max_queue_delay_us / 1e6
            if preferred is not None:
                batch = preferred
            elif can_grow and delay > 0 and waited < delay and not self._closing:
                wait_for = delay - waited
                deadlines = [p.deadline - now for p in self._queue if p.deadline is not None]
                if deadlines:
                    wait_for = min(wait_for, max(min(deadlines), 0.0))
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=wait_for)
                continue
            return self._take(batch, now)

    async def _run_in_thread(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        try:
            merged = self._merge(batch)
            outputs, took = await loop.run_in_executor(self._executor, self._timed, merged)
            self._finish(batch, outputs, took)
        except Exception as exc:  # noqa: BLE001 — the isolation boundary: a model's failure fails only its batch
            self._fail(batch, exc)
        finally:
            self._release()

    # Running one batch -------------------------------------------------------------

    def _timed(self, merged: Arrays) -> tuple[Arrays, float]:
        """Runs the model and times the run itself (not the hand-off to the thread)."""
        started = time.perf_counter()
        outputs = self._execute(merged)
        return outputs, time.perf_counter() - started

    def _merge(self, batch: list[_Pending]) -> Arrays:
        if len(batch) == 1:
            return batch[0].inputs
        return {name: np.concatenate([p.inputs[name] for p in batch], axis=0) for name in batch[0].inputs}

    def _execute_batch(self, batch: list[_Pending]) -> None:
        """Runs a batch on the calling (event-loop) thread."""
        try:
            merged = self._merge(batch)
            started = time.perf_counter()
            outputs = self._execute(merged)
            self._finish(batch, outputs, time.perf_counter() - started)
        except Exception as exc:  # noqa: BLE001 — the isolation boundary: a model's failure fails only its batch
            self._fail(batch, exc)

    def _finish(self, batch: list[_Pending], outputs: Arrays, took: float) -> None:
        self._recent_compute.append(took)
        rows = sum(p.rows for p in batch)
        if self.batched:
            for name, array in outputs.items():
                if array.ndim == 0 or array.shape[0] != rows:
                    got = array.shape[0] if array.ndim else "a scalar"
                    raise ExecutionFailedError(
                        f"model {self.name} returned {got} rows of '{name}' for a batch of {rows}"
                    )
        offset = 0
        for pending in batch:
            if not pending.future.done():
                if self.batched:
                    pending.future.set_result(
                        {name: array[offset : offset + pending.rows] for name, array in outputs.items()}
                    )
                else:
                    pending.future.set_result(outputs)
            offset += pending.rows
        self._observer.batch_executed(
            size=rows, queue_seconds=[p.queue_seconds for p in batch], compute_seconds=took, ok=True
        )

    def _fail(self, batch: list[_Pending], exc: Exception) -> None:
        rows = sum(p.rows for p in batch)
        error = exc if isinstance(exc, ExecutionFailedError) else ExecutionFailedError(f"model {self.name}: {exc}")
        log.warning("batch of %d rows failed in %s: %s", rows, self.name, exc)
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(error)
        self._observer.batch_executed(
            size=rows, queue_seconds=[p.queue_seconds for p in batch], compute_seconds=0.0, ok=False
        )
