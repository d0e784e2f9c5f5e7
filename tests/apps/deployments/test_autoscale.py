from hypothesis import given
from hypothesis import strategies as st

from apps.deployments.autoscale import ScaleInput, replicas_wanted


def test_without_scale_to_zero_a_replica_is_always_wanted():
    assert replicas_wanted(ScaleInput(min_replicas=0, scale_to_zero_after_s=0, last_request_at=None), now=1e9) == 1
    assert replicas_wanted(ScaleInput(min_replicas=3, scale_to_zero_after_s=0, last_request_at=None), now=1e9) == 3


def test_idle_past_the_window_scales_to_zero_and_a_request_brings_it_back():
    idle = ScaleInput(min_replicas=2, scale_to_zero_after_s=60, last_request_at=1000.0)
    assert replicas_wanted(idle, now=1059.0) == 2
    assert replicas_wanted(idle, now=1060.0) == 0
    never = ScaleInput(min_replicas=2, scale_to_zero_after_s=60, last_request_at=None)
    assert replicas_wanted(never, now=1060.0) == 0


@given(
    min_replicas=st.integers(0, 10),
    window=st.integers(0, 3600),
    since=st.one_of(st.none(), st.floats(0, 7200)),
)
def test_wanted_is_zero_or_at_least_one_and_min(min_replicas, window, since):
    now = 10_000.0
    last = None if since is None else now - since
    wanted = replicas_wanted(
        ScaleInput(min_replicas=min_replicas, scale_to_zero_after_s=window, last_request_at=last), now=now
    )
    assert wanted == 0 or wanted == max(min_replicas, 1)
    assert (wanted == 0) == (window > 0 and (since is None or since >= window))
