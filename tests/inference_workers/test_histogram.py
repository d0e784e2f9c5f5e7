"""Log-bucket histograms: merging and percentiles against known distributions."""

from __future__ import annotations

import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from inference_workers.histogram import GROWTH, bounds, bucket_of, merge, percentile, record


def histogram_of(samples) -> dict[int, int]:
    counts: dict[int, int] = {}
    for value in samples:
        record(counts, float(value))
    return counts


def test_each_value_falls_within_its_bucket():
    for value in (1e-6, 50e-6, 51e-6, 1e-3, 0.25, 3.0, 1e4):
        lower, upper = bounds(bucket_of(value))
        assert lower <= value <= upper or (value > upper and bucket_of(value) == bucket_of(1e9))


def test_percentiles_of_known_distributions_are_within_one_bucket():
    rng = np.random.default_rng(5)
    for samples in (
        rng.uniform(0.001, 0.010, 20_000),
        rng.exponential(0.004, 20_000) + 0.0002,
        rng.lognormal(np.log(0.02), 0.8, 20_000),
    ):
        counts = histogram_of(samples)
        for q in (50, 95, 99):
            exact = float(np.percentile(samples, q))
            estimate = percentile(counts, q)
            assert estimate is not None
            assert exact / GROWTH <= estimate <= exact * GROWTH, (q, exact, estimate)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(1e-5, 100.0), min_size=1, max_size=300), st.integers(1, 5))
def test_merging_parts_equals_counting_the_whole(values, parts):
    random.Random(1).shuffle(values)
    pieces = [histogram_of(values[i::parts]) for i in range(parts)]
    whole = histogram_of(values)
    assert merge(pieces) == whole
    # JSON round trips (string keys) merge the same way.
    as_json = [{str(k): v for k, v in piece.items()} for piece in pieces]
    assert merge(as_json) == whole
    for q in (50, 99):
        assert percentile(merge(pieces), q) == percentile(whole, q)


def test_an_empty_histogram_has_no_percentile():
    assert percentile({}, 50) is None
