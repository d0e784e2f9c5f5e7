"""Per-model measurements: Prometheus series for /metrics and rolling figures for heartbeats."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from inference_workers.batching import BatchObserver
from inference_workers.histogram import Counts, merge, percentile, record
from inference_workers.types import HostedModel, ModelKey

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
LABELS = ("tenant", "model", "version")


class WorkerMetrics:
    """The worker's Prometheus registry and metric families."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "berth_worker_requests", "Inference requests", (*LABELS, "outcome"), registry=self.registry
        )
        self.request_seconds = Histogram(
            "berth_worker_request_seconds",
            "Time a request spent in the batcher",
            LABELS,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_seconds = Histogram(
            "berth_worker_queue_seconds",
            "Time a request waited for its batch",
            LABELS,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.compute_seconds = Histogram(
            "berth_worker_compute_seconds",
            "Time a batch took to run",
            LABELS,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "berth_worker_batch_size", "Rows per executed batch", LABELS, buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.device_used_bytes = Gauge("berth_worker_device_used_bytes", "Device memory in use", registry=self.registry)
        self.device_total_bytes = Gauge("berth_worker_device_total_bytes", "Device memory", registry=self.registry)
        # Set by the model host: what it hosts now, read at scrape time.
        self.hosted: Callable[[], list[HostedModel]] = list
        self.registry.register(_HostCollector(self))

    def forget(self, key: ModelKey) -> None:
        """Drops an unloaded model's series."""
        labels = (key.tenant, key.model, str(key.version))
        for family in (self.request_seconds, self.queue_seconds, self.compute_seconds, self.batch_size):
            with contextlib.suppress(KeyError):
                family.remove(*labels)
        for outcome in ("ok", "error"):
            with contextlib.suppress(KeyError):
                self.requests.remove(*labels, outcome)


class _HostCollector(Collector):
    """In-flight, queued and reserved figures per model, read from the host at scrape time."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = {
            "inflight": GaugeMetricFamily("berth_worker_inflight", "Requests queued or running", labels=LABELS),
            "queue_depth": GaugeMetricFamily("berth_worker_queue_depth", "Requests waiting for a batch", labels=LABELS),
            "reserved_bytes": GaugeMetricFamily(
                "berth_worker_reserved_bytes", "Memory reserved per model", labels=LABELS
            ),
        }
        for model in self._metrics.hosted():
            labels = [model.key.tenant, model.key.model, str(model.key.version)]
            for name, family in families.items():
                family.add_metric(labels, float(getattr(model, name)))
        yield from families.values()


class _BatchWindow:
    """Batches since the last heartbeat: sizes, queue and compute times as log-bucket histograms."""

    def __init__(self) -> None:
        self.batches = 0
        self.sizes: dict[int, int] = {}
        self.queue: Counts = {}
        self.compute: Counts = {}
        self.compute_s = 0.0
        self.compute_us = 0  # whole microseconds, summed per batch: what cost attribution charges
        self.requests = 0  # requests answered by batches that succeeded (predictions)

    def add(self, *, size: int, queue_seconds: list[float], compute_seconds: float, ok: bool = True) -> None:
        self.batches += 1
        self.compute_us += round(compute_seconds * 1_000_000)
        self.requests += len(queue_seconds) if ok else 0
        self.sizes[size] = self.sizes.get(size, 0) + 1
        for waited in queue_seconds:
            record(self.queue, waited)
        record(self.compute, compute_seconds)
        self.compute_s += compute_seconds

    def absorb(self, message: dict[str, Any]) -> None:
        """Adds a window message's figures (one taken earlier and not delivered)."""
        self.batches += int(message.get("batches", 0))
        for name, counts in (("batch_sizes", self.sizes), ("queue", self.queue), ("compute", self.compute)):
            for key, count in (message.get(name) or {}).items():
                counts[int(key)] = counts.get(int(key), 0) + int(count)
        self.compute_s += float(message.get("compute_s", 0.0))
        self.compute_us += int(message.get("compute_us", 0))
        self.requests += int(message.get("requests", 0))

    def message(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "batch_sizes": {str(k): v for k, v in self.sizes.items()},
            "queue": {str(k): v for k, v in self.queue.items()},
            "compute": {str(k): v for k, v in self.compute.items()},
            "compute_s": round(self.compute_s, 6),
            "compute_us": self.compute_us,
            "requests": self.requests,
        }


class ModelStats(BatchObserver):
    """One hosted model's figures: Prometheus series plus a rolling window for heartbeats."""

    WINDOW_S = 30.0

    def __init__(self, key: ModelKey, metrics: WorkerMetrics) -> None:
        labels = (key.tenant, key.model, str(key.version))
        self._ok = metrics.requests.labels(*labels, "ok")
        self._error = metrics.requests.labels(*labels, "error")
        self._request_seconds = metrics.request_seconds.labels(*labels)
        self._queue_seconds = metrics.queue_seconds.labels(*labels)
        self._compute_seconds = metrics.compute_seconds.labels(*labels)
        self._batch_size = metrics.batch_size.labels(*labels)
        # Request times of the last WINDOW_S seconds as one histogram per second: a fixed,
        # small cost per request and per heartbeat whatever the rate (a list of every
        # request's time held 150,000 entries at 5,000 req/s, and reading its percentiles
        # held the GIL for tens of milliseconds, stalling the data plane at each heartbeat).
        self._recent: dict[int, Counts] = {}
        self._lock = threading.Lock()
        self.requests = 0
        self.errors = 0
        self.last_used = 0.0
        self._window = _BatchWindow()
        self._seconds: dict[int, _BatchWindow] = {}  # the same, rolled up per second

    def batch_executed(self, *, size: int, queue_seconds: list[float], compute_seconds: float, ok: bool) -> None:
        self._batch_size.observe(size)
        self._compute_seconds.observe(compute_seconds)
        for waited in queue_seconds:
            self._queue_seconds.observe(waited)
        second = int(time.time())
        with self._lock:
            self._window.add(size=size, queue_seconds=queue_seconds, compute_seconds=compute_seconds, ok=ok)
            if second not in self._seconds and len(self._seconds) >= self.MAX_SECONDS:
                self._seconds.pop(min(self._seconds))  # no heartbeat for minutes: keep the newest
            self._seconds.setdefault(second, _BatchWindow()).add(
                size=size, queue_seconds=queue_seconds, compute_seconds=compute_seconds, ok=ok
            )

    MAX_SECONDS = 120

    def put_back(self, message: dict[str, Any]) -> None:
        """Returns a taken window whose heartbeat could not be sent: the next one carries it."""
        with self._lock:
            for part in message.get("seconds") or [{**message, "second": int(time.time())}]:
                window = self._seconds.setdefault(int(part["second"]), _BatchWindow())
                window.absorb(part)
            self._window.absorb(message)

    def take_window(self) -> dict[str, Any] | None:
        """What the batches did since the last call (for the heartbeat), or None if nothing ran:
        the totals, and under ``seconds`` the same per second (``second``: Unix time)."""
        with self._lock:
            window, self._window = self._window, _BatchWindow()
            seconds, self._seconds = self._seconds, {}
        if not window.batches:
            return None
        message = window.message()
        message["seconds"] = [{"second": second, **seconds[second].message()} for second in sorted(seconds)]
        return message

    def request_finished(self, *, seconds: float, ok: bool) -> None:
        (self._ok if ok else self._error).inc()
        self._request_seconds.observe(seconds)
        now = time.time()
        second = int(now)
        with self._lock:
            self.requests += 1
            self.errors += 0 if ok else 1
            self.last_used = now
            counts = self._recent.get(second)
            if counts is None:
                counts = self._recent[second] = {}
                for old in [old for old in self._recent if old < second - self.WINDOW_S]:
                    del self._recent[old]
            record(counts, seconds)

    def percentiles_ms(self) -> tuple[float, float]:
        """p50 and p99 request time over the last ``WINDOW_S`` seconds, in ms (within one
        histogram bucket, about 19 %, of the exact figure)."""
        since = int(time.time() - self.WINDOW_S)
        with self._lock:
            merged = merge(counts for second, counts in self._recent.items() if second >= since)
        p50, p99 = percentile(merged, 50), percentile(merged, 99)
        if p50 is None or p99 is None:
            return 0.0, 0.0
        return p50 * 1000, p99 * 1000
