"""Latency histograms with fixed log-spaced buckets: mergeable across processes and time.

Shared by both planes (the worker counts queue and compute time into it, the gateway request
latency, the control plane merges them); it lives here because the data plane never imports
Django or the apps.

Every process (gateway, worker) counts into the same bucket edges, so histograms from
many processes and many seconds merge by adding counts, and percentiles are read from the
merged counts, never by averaging percentiles. Edges grow by 2^(1/4) (about 19 %) from
50 µs, so a percentile read from the counts is within one bucket (≤ 19 % relative) of the
true value; 96 buckets reach beyond 3 minutes. Plain Python, no Django.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping
from typing import Any

FIRST_EDGE_S = 50e-6
GROWTH = 2**0.25
BUCKETS = 96
# Upper edges (seconds) of buckets 0..BUCKETS-2; the last bucket takes everything above.
EDGES: tuple[float, ...] = tuple(FIRST_EDGE_S * GROWTH**i for i in range(BUCKETS - 1))

Counts = dict[int, int]  # bucket index → count, sparse


def bucket_of(seconds: float) -> int:
    """The bucket a duration falls in."""
    return bisect.bisect_left(EDGES, seconds)


def record(counts: Counts, seconds: float) -> None:
    """Counts one observation into ``counts``."""
    index = bucket_of(seconds)
    counts[index] = counts.get(index, 0) + 1


def merge(histograms: Iterable[Mapping[Any, int]]) -> Counts:
    """The sum of histograms (JSON ones have string keys; both are accepted)."""
    total: Counts = {}
    for histogram in histograms:
        for key, count in histogram.items():
            index = int(key)
            total[index] = total.get(index, 0) + int(count)
    return total


def bounds(index: int) -> tuple[float, float]:
    """A bucket's lower and upper edge in seconds (the last one is open: upper = lower * growth)."""
    lower = 0.0 if index == 0 else EDGES[index - 1]
    upper = EDGES[index] if index < len(EDGES) else EDGES[-1] * GROWTH
    return lower, upper


def percentile(counts: Mapping[Any, int], q: float) -> float | None:
    """The q-th percentile (0-100) in seconds, interpolated within its bucket; None when empty."""
    merged = merge([counts])
    total = sum(merged.values())
    if total == 0:
        return None
    rank = max(q / 100.0 * total, 1e-12)
    seen = 0
    for index in sorted(merged):
        count = merged[index]
        if seen + count >= rank:
            lower, upper = bounds(index)
            if index == 0:
                return upper * (rank - seen) / count
            # Geometric interpolation: buckets are log-spaced.
            return lower * math.exp(math.log(upper / lower) * (rank - seen) / count)
        seen += count
    return bounds(max(merged))[1]  # pragma: no cover - rank never exceeds the total
