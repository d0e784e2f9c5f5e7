"""The gateway's routing choices: weighted versions and least-outstanding replicas."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from apps.gateway.routing import ModelRoute, ReplicaRoute, replica_choose


def _model(traffic: tuple[tuple[int, int], ...]) -> ModelRoute:
    return ModelRoute(tenant_slug="t", name="m", model_id=1, deployment_id=1, versions={}, traffic=traffic)


def test_a_90_10_split_holds_within_5_percent_over_2000_requests():
    model = _model(((1, 90), (2, 10)))
    rng = random.Random(1234)
    counts = Counter(model.pick_version(rng.random()) for _ in range(2000))
    assert abs(counts[1] / 2000 - 0.90) <= 0.05
    assert abs(counts[2] / 2000 - 0.10) <= 0.05


@given(
    weights=st.lists(st.integers(1, 100), min_size=1, max_size=5),
    draw=st.floats(0, 1, exclude_max=True),
)
def test_every_draw_lands_on_a_version_of_the_split(weights, draw):
    traffic = tuple((number + 1, weight) for number, weight in enumerate(weights))
    assert _model(traffic).pick_version(draw) in {number for number, _ in traffic}


def test_draws_map_to_versions_by_cumulative_weight():
    model = _model(((1, 50), (2, 30), (3, 20)))
    assert model.pick_version(0.0) == 1
    assert model.pick_version(0.499) == 1
    assert model.pick_version(0.5) == 2
    assert model.pick_version(0.79) == 2
    assert model.pick_version(0.8) == 3
    assert model.pick_version(0.9999) == 3


def _replicas(n: int) -> tuple[ReplicaRoute, ...]:
    return tuple(ReplicaRoute(replica_id=i, worker_id=f"w{i}", url=f"http://127.0.0.1:{9000 + i}") for i in range(n))


def test_the_less_busy_of_two_replicas_is_chosen():
    replicas = _replicas(2)
    rng = random.Random(7)
    for _ in range(50):
        assert replica_choose(replicas, {0: 5, 1: 1}, rng=rng) == replicas[1]
        assert replica_choose(replicas, {0: 0, 1: 3}, rng=rng) == replicas[0]


def test_load_spreads_and_the_busiest_replica_is_never_chosen():
    replicas = _replicas(4)
    outstanding = {0: 9, 1: 0, 2: 0, 3: 0}
    rng = random.Random(3)
    picks = [replica_choose(replicas, outstanding, rng=rng) for _ in range(3000)]
    chosen = Counter(pick.replica_id for pick in picks if pick is not None)
    # Replica 0 loses every comparison it is drawn into; the idle three share the rest.
    assert chosen[0] == 0
    assert all(chosen[i] > 700 for i in (1, 2, 3))


def test_excluded_workers_are_skipped_and_none_is_left_is_none():
    replicas = _replicas(3)
    assert replica_choose(replicas, {}, exclude=frozenset({"w0", "w1"})) == replicas[2]
    assert replica_choose(replicas, {}, exclude=frozenset({"w0", "w1", "w2"})) is None
    assert replica_choose((), {}) is None
