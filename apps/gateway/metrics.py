"""The gateway's Prometheus figures, per tenant / model / version.

They live in the process's default registry, which the control plane's ``/metrics``
serves (to staff or the metrics token, never to a tenant key).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Histogram

from inference_workers.histogram import Counts, record

# Log-spaced from 250 µs to 33 s (Prometheus's own; the rollups use inference_workers.histogram's).
LATENCY_BUCKETS = (
    0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192, 16.384, 32.768,
)  # fmt: skip

REQUESTS = Counter(
    "berth_gateway_requests",
    "Inference requests through the gateway, by tenant, model, version and HTTP status.",
    ["tenant", "model", "version", "code"],
)
LATENCY = Histogram(
    "berth_gateway_request_duration_seconds",
    "Time from a request's arrival at the gateway to its answer.",
    ["tenant", "model", "version"],
    buckets=LATENCY_BUCKETS,
)
COLD_STARTS = Counter(
    "berth_gateway_cold_starts",
    "Cold starts the gateway asked for (shared by concurrent requests).",
    ["tenant", "model"],
)
RETRIES = Counter(
    "berth_gateway_retries",
    "Requests sent to a second replica after the first could not be reached.",
    ["tenant", "model"],
)


Labels = tuple[str, str, str]  # tenant, model, version


@dataclass
class RollupCell:
    """What this process saw of one model version in one second."""

    second: int
    labels: Labels
    requests: int = 0
    errors: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    latency: Counts = field(default_factory=dict)
    inflight_max: int = 0


class Rollups:
    """Per-second figures per (tenant, model, version), drained every second for the
    monitoring pipeline (``apps.monitoring.services.rollups_record``)."""

    def __init__(self) -> None:
        self._cells: dict[tuple[int, Labels], RollupCell] = {}
        self._inflight: dict[Labels, int] = {}
        self._drained_until: int | None = None

    def _cell(self, labels: Labels) -> RollupCell:
        second = int(time.time())
        cell = self._cells.get((second, labels))
        if cell is None:
            cell = self._cells[(second, labels)] = RollupCell(second=second, labels=labels)
        return cell

    @contextlib.contextmanager
    def in_flight(self, labels: Labels) -> Iterator[None]:
        """Counts a request in flight while the block runs."""
        now = self._inflight[labels] = self._inflight.get(labels, 0) + 1
        cell = self._cell(labels)
        cell.inflight_max = max(cell.inflight_max, now)
        try:
            yield
        finally:
            ending = self._cell(labels)  # the second it ends in had it in flight too
            ending.inflight_max = max(ending.inflight_max, self._inflight[labels])
            self._inflight[labels] -= 1

    def observe(self, labels: Labels, status: int, seconds: float) -> None:
        cell = self._cell(labels)
        cell.requests += 1
        if status >= 400:
            cell.errors += 1
        key = str(status)
        cell.statuses[key] = cell.statuses.get(key, 0) + 1
        record(cell.latency, seconds)

    def drain(self, now: float) -> list[RollupCell]:
        """The cells of every second that has ended, removed from this accumulator. A second
        in which requests stayed in flight without any starting still gets its in-flight
        figure (the requests in flight when it is drained)."""
        current = int(now)
        first = current - 1 if self._drained_until is None else self._drained_until
        for labels, inflight in self._inflight.items():
            if inflight <= 0:
                continue
            for second in range(max(first, current - 60), current):
                cell = self._cells.get((second, labels))
                if cell is None:
                    cell = self._cells[(second, labels)] = RollupCell(second=second, labels=labels)
                cell.inflight_max = max(cell.inflight_max, inflight)
        self._drained_until = current
        ended = [key for key in self._cells if key[0] < current]
        return [self._cells.pop(key) for key in sorted(ended)]


ROLLUPS = Rollups()


# (labels, status) → the Prometheus children they count in: ``labels()`` costs a lock and
# a few tuple and string steps per call; the children never change once made.
_children: dict[tuple[Labels, int], tuple[Any, Any]] = {}


def observe(labels: Labels, status: int, seconds: float) -> None:
    """Counts one answered inference request (Prometheus and the rollups)."""
    children = _children.get((labels, status))
    if children is None:
        children = _children[(labels, status)] = (REQUESTS.labels(*labels, str(status)), LATENCY.labels(*labels))
    children[0].inc()
    children[1].observe(seconds)
    ROLLUPS.observe(labels, status, seconds)
