"""The autoscaling decision: load within min/max, stabilised scale-down, scale to zero."""

from hypothesis import given
from hypothesis import strategies as st

from apps.deployments.autoscale import ScaleInput, replicas_wanted


def wanted(now: float = 1e9, stabilisation_s: float = 60.0, **fields) -> int:
    base = {"min_replicas": 1, "scale_to_zero_after_s": 0, "last_request_at": None}
    return replicas_wanted(ScaleInput(**{**base, **fields}), now=now, stabilisation_s=stabilisation_s).replicas


def test_without_scale_to_zero_a_replica_is_always_wanted():
    assert wanted(min_replicas=0) == 1
    assert wanted(min_replicas=3, max_replicas=3) == 3


def test_idle_past_the_window_scales_to_zero_and_a_request_brings_it_back():
    assert wanted(now=1059.0, min_replicas=2, max_replicas=2, scale_to_zero_after_s=60, last_request_at=1000.0) == 2
    assert wanted(now=1060.0, min_replicas=2, max_replicas=2, scale_to_zero_after_s=60, last_request_at=1000.0) == 0
    assert wanted(now=1060.0, min_replicas=2, scale_to_zero_after_s=60, last_request_at=None) == 0


def test_load_scales_up_at_once_to_inflight_over_target_within_max():
    assert wanted(max_replicas=4, target_inflight_per_replica=8, inflight=17, current=1) == 3
    assert wanted(max_replicas=4, target_inflight_per_replica=8, inflight=500, current=1) == 4
    assert wanted(min_replicas=2, max_replicas=4, target_inflight_per_replica=8, inflight=0, current=0) == 2


def test_scale_down_waits_for_the_stabilisation_window():
    busy = {"max_replicas": 4, "target_inflight_per_replica": 8, "inflight": 0.0, "current": 3}
    assert wanted(now=1030.0, needed_at=1000.0, **busy) == 3
    assert wanted(now=1060.0, needed_at=1000.0, **busy) == 1
    # A smaller max applies at once, stabilisation or not.
    assert wanted(now=1030.0, needed_at=1000.0, **{**busy, "max_replicas": 2}) == 2


@given(
    min_replicas=st.integers(0, 6),
    max_replicas=st.integers(0, 8),
    target=st.integers(1, 16),
    inflight=st.floats(0, 1000),
    current=st.integers(0, 8),
    needed_ago=st.one_of(st.none(), st.floats(0, 120)),
    window=st.integers(0, 3600),
    since=st.one_of(st.none(), st.floats(0, 7200)),
)
def test_the_decision_stays_within_bounds(
    min_replicas, max_replicas, target, inflight, current, needed_ago, window, since
):
    now = 10_000.0
    decision = replicas_wanted(
        ScaleInput(
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            target_inflight_per_replica=target,
            inflight=inflight,
            current=current,
            needed_at=None if needed_ago is None else now - needed_ago,
            scale_to_zero_after_s=window,
            last_request_at=None if since is None else now - since,
        ),
        now=now,
    )
    idle = window > 0 and (since is None or since >= window)
    if idle:
        assert decision.replicas == 0
    else:
        floor = max(min_replicas, 1)
        assert floor <= decision.replicas <= max(max_replicas, floor)
        # Never fewer than the load needs (up to the cap).
        needed = min(max(-(-inflight // target), floor), max(max_replicas, floor))
        assert decision.replicas >= needed
