"""Placement properties (hypothesis) and the behaviours that matter, on pure dataclasses."""

from __future__ import annotations

import random

from hypothesis import event, given, settings
from hypothesis import strategies as st

from apps.deployments.placement import Device, Placed, Quota, Wanted, _completion, place

GiB = 1024**3
MiB = 1024**2
BIG = Quota(memory_bytes={"cuda": 10**15, "cpu": 10**15}, max_replicas=10**6)


def rid(tenant: str, model: str, replica: int = 0, version: int = 1):
    return (tenant, model, version, replica)


@st.composite
def fleets(draw):
    devices = [
        Device(
            device_id=f"gpu{i}",
            kind="cuda",
            capacity_bytes=draw(st.integers(1, 80)) * GiB,
            headroom_bytes=draw(st.sampled_from([0, 256 * MiB])),
            schedulable=draw(st.booleans()) or i == 0,
        )
        for i in range(draw(st.integers(1, 6)))
    ]
    tenants = [f"t{i}" for i in range(draw(st.integers(1, 3)))]
    quotas = {
        tenant: Quota(memory_bytes={"cuda": draw(st.integers(0, 200)) * GiB}, max_replicas=draw(st.integers(0, 12)))
        for tenant in tenants
    }
    wanted = []
    for m in range(draw(st.integers(0, 10))):
        tenant = draw(st.sampled_from(tenants))
        footprint = draw(st.integers(50, 8192)) * MiB
        for r in range(draw(st.integers(1, 3))):
            wanted.append(Wanted(replica=rid(tenant, f"m{m}", r), footprint_bytes=footprint, kind="cuda"))
    return devices, wanted, quotas


def reserved_after(plan, devices, placed, wanted):
    sizes = {w.replica: w.footprint_bytes for w in wanted}
    sizes.update({p.replica: p.reserved_bytes for p in placed})
    totals = {d.device_id: 0 for d in devices}
    for replica, device_id in plan.assignments.items():
        totals[device_id] += sizes[replica]
    return totals


@settings(max_examples=150, deadline=None)
@given(fleets())
def test_never_over_commits_a_device(fleet):
    devices, wanted, quotas = fleet
    plan = place(devices=devices, placed=[], wanted=wanted, quotas=quotas, now=0.0)
    totals = reserved_after(plan, devices, [], wanted)
    for device in devices:
        assert totals[device.device_id] <= device.capacity_bytes - device.headroom_bytes
        if not device.schedulable:
            assert totals[device.device_id] == 0


@settings(max_examples=150, deadline=None)
@given(fleets())
def test_never_exceeds_a_quota(fleet):
    devices, wanted, quotas = fleet
    plan = place(devices=devices, placed=[], wanted=wanted, quotas=quotas, now=0.0)
    sizes = {w.replica: w.footprint_bytes for w in wanted}
    for tenant, quota in quotas.items():
        mine = [r for r in plan.assignments if r[0] == tenant]
        assert len(mine) <= quota.max_replicas
        assert sum(sizes[r] for r in mine) <= quota.memory_bytes["cuda"]


@settings(max_examples=150, deadline=None)
@given(fleets(), st.randoms(use_true_random=False))
def test_equal_input_gives_an_equal_plan_in_any_order(fleet, rng: random.Random):
    devices, wanted, quotas = fleet
    first = place(devices=devices, placed=[], wanted=wanted, quotas=quotas, now=0.0)
    shuffled_devices, shuffled_wanted = devices[:], wanted[:]
    rng.shuffle(shuffled_devices)
    rng.shuffle(shuffled_wanted)
    second = place(devices=shuffled_devices, placed=[], wanted=shuffled_wanted, quotas=quotas, now=0.0)
    assert first == second


@settings(max_examples=150, deadline=None)
@given(fleets())
def test_every_wanted_replica_is_placed_or_pending_with_a_reason(fleet):
    devices, wanted, quotas = fleet
    plan = place(devices=devices, placed=[], wanted=wanted, quotas=quotas, now=0.0)
    pending = {replica for replica, reason in plan.pending if reason}
    assert set(plan.assignments) | pending == {w.replica for w in wanted}
    assert not set(plan.assignments) & pending


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 5), st.integers(1, 4))
def test_replicas_of_one_version_never_share_a_device(replicas, device_count):
    devices = [Device(f"gpu{i}", "cuda", 80 * GiB) for i in range(device_count)]
    wanted = [Wanted(rid("t", "m", r), 1 * GiB, "cuda") for r in range(replicas)]
    plan = place(devices=devices, placed=[], wanted=wanted, quotas={"t": BIG}, now=0.0)
    used = [plan.assignments[w.replica] for w in wanted if w.replica in plan.assignments]
    assert len(set(used)) == len(used) == min(replicas, device_count)
    # The rest wait for a device, saying so.
    assert len(plan.pending) == max(replicas - device_count, 0)
    assert all("already hosts a replica" in reason for _, reason in plan.pending)


def test_best_fit_fills_the_tightest_device_in_use_and_opens_the_largest_empty_one():
    devices = [Device("roomy", "cuda", 80 * GiB), Device("snug", "cuda", 10 * GiB), Device("mid", "cuda", 20 * GiB)]
    placed = [Placed(rid("t", "x"), "snug", 1 * GiB), Placed(rid("t", "y"), "mid", 1 * GiB)]
    wanted = [Wanted(p.replica, p.reserved_bytes, "cuda") for p in placed]
    plan = place(
        devices=devices,
        placed=placed,
        wanted=[*wanted, Wanted(rid("t", "a"), 9 * GiB, "cuda")],
        quotas={"t": BIG},
        now=0.0,
    )
    assert plan.assignments[rid("t", "a")] == "snug"  # tightest of the devices in use
    plan = place(
        devices=devices,
        placed=placed,
        wanted=[*wanted, Wanted(rid("t", "b"), 30 * GiB, "cuda")],
        quotas={"t": BIG},
        now=0.0,
    )
    assert plan.assignments[rid("t", "b")] == "roomy"  # none in use fits: the largest empty one


def test_biggest_first_packs_what_first_fit_in_order_would_not():
    devices = [Device("a", "cuda", 10 * GiB), Device("b", "cuda", 10 * GiB)]
    wanted = [Wanted(rid("t", f"s{i}"), 3 * GiB, "cuda") for i in range(4)]
    wanted += [Wanted(rid("t", "big1"), 7 * GiB, "cuda"), Wanted(rid("t", "big2"), 7 * GiB, "cuda")]
    plan = place(devices=devices, placed=[], wanted=wanted, quotas={"t": BIG}, now=0.0)
    assert len(plan.assignments) == 4  # both 7s and one 3 on each device: 2 smalls must wait
    assert {r[1] for r in plan.assignments} >= {"big1", "big2"}


def test_a_mix_that_fills_its_devices_exactly_is_completed_on_them():
    """Largest first puts 5 and 4 together, then 4, 3, 2 on the other device, and the last 2
    finds 1 GB on each: only filling each device to the brim ({5, 3, 2} and {4, 4, 2}) fits."""
    devices = [Device("a", "cuda", 10 * GiB), Device("b", "cuda", 10 * GiB)]
    sizes = {"m5": 5, "m4a": 4, "m4b": 4, "m3": 3, "m2a": 2, "m2b": 2}
    wanted = [Wanted(rid("t", name), size * GiB, "cuda") for name, size in sizes.items()]
    plan = place(devices=devices, placed=[], wanted=wanted, quotas={"t": BIG}, now=0.0)
    assert not plan.pending and len(plan.assignments) == 6
    assert reserved_after(plan, devices, [], wanted) == {"a": 10 * GiB, "b": 10 * GiB}


def test_a_replica_whose_load_failed_goes_back_where_it_failed_when_its_sibling_holds_the_other_device():
    """Its load failed on a (say, the artifact could not be fetched yet); b now hosts its
    sibling, so a, though it failed there once, is the one device it may go to."""
    devices = [Device("a", "cpu", 10 * GiB), Device("b", "cpu", 10 * GiB)]
    placed = [Placed(rid("t", "m", 1), "b", 1 * GiB)]
    wanted = [
        Wanted(rid("t", "m", 0), 1 * GiB, "cpu", avoid=frozenset({"a"})),
        Wanted(rid("t", "m", 1), 1 * GiB, "cpu"),
    ]
    plan = place(devices=devices, placed=placed, wanted=wanted, quotas={"t": BIG}, now=0.0)
    assert list(plan.loads) == [(rid("t", "m", 0), "a")], plan.pending
    # With a third device free it goes there instead, away from a.
    plan = place(
        devices=[*devices, Device("c", "cpu", 10 * GiB)], placed=placed, wanted=wanted, quotas={"t": BIG}, now=0.0
    )
    assert list(plan.loads) == [(rid("t", "m", 0), "c")], plan.pending


def test_completion_keeps_copies_apart_and_off_the_devices_where_their_load_failed():
    """Bin completion's own choice (before the main loop's checks): a version with a copy on
    device a already gets its other two on b and c; a replica whose load failed on a goes
    elsewhere, though it fills a's room exactly; every device is filled within its room,
    24 GiB on 26."""
    room = {"a": 6 * GiB, "b": 10 * GiB, "c": 10 * GiB}
    todo = [Wanted(rid("t", "copies", r), 4 * GiB, "cuda") for r in (1, 2)]
    todo += [
        Wanted(rid("t", "failed-on-a"), 6 * GiB, "cuda", avoid=frozenset({"a"})),
        Wanted(rid("t", "six"), 6 * GiB, "cuda"),
        Wanted(rid("t", "four"), 4 * GiB, "cuda"),
    ]
    chosen = _completion(
        todo=todo,
        pool=[Device(name, "cuda", 10 * GiB) for name in "abc"],
        free=room.__getitem__,
        in_use={"a"},
        versions_on={"a": {("t", "copies", 1)}, "b": set(), "c": set()},
        quotas={"t": BIG},
        tenant_memory={("t", "cuda"): 4 * GiB},
        tenant_replicas={"t": 1},
    )
    assert set(chosen) == {w.replica for w in todo}
    assert {chosen[rid("t", "copies", 1)], chosen[rid("t", "copies", 2)]} == {"b", "c"}
    assert chosen[rid("t", "failed-on-a")] != "a"
    sizes = {w.replica: w.footprint_bytes for w in todo}
    for device, limit in room.items():
        assert sum(sizes[r] for r, d in chosen.items() if d == device) <= limit


def test_the_packing_benchs_fullest_mix_fits_on_its_bound():
    """The packing bench's seed 87, mix 3: 221 replicas, 399.86 GB, where the seven largest
    devices hold 400 GB in all. Largest-first rules leave each device a few scraps short and
    use eight; filling each device in turn by a subset sum uses the bound's seven."""
    from bench.packing import lower_bound, make_mix

    rng = random.Random(87)
    for _ in range(4):
        mix = make_mix(rng)
    plan = place(devices=mix.devices, placed=[], wanted=mix.wanted, quotas=mix.quotas, now=0.0)
    sizes = {w.replica: w.footprint_bytes for w in mix.wanted}
    assert len(plan.assignments) == 221
    copies: dict[tuple[str, str, int], int] = {}
    for replica in plan.assignments:
        copies[replica[:3]] = copies.get(replica[:3], 0) + 1
    bound = lower_bound([sizes[r] for r in plan.assignments], mix.devices, max(copies.values()))
    assert bound == 7 and len(set(plan.assignments.values())) == 7
    capacity = {d.device_id: d.capacity_bytes for d in mix.devices}
    assert all(total <= capacity[d] for d, total in reserved_after(plan, mix.devices, [], mix.wanted).items())


def test_placed_replicas_stay_and_unwanted_ones_are_unloaded():
    devices = [Device("gpu0", "cuda", 10 * GiB), Device("gpu1", "cuda", 10 * GiB)]
    placed = [Placed(rid("t", "keep"), "gpu1", 2 * GiB), Placed(rid("t", "gone"), "gpu0", 2 * GiB)]
    plan = place(
        devices=devices, placed=placed, wanted=[Wanted(rid("t", "keep"), 2 * GiB, "cuda")], quotas={"t": BIG}, now=0.0
    )
    assert plan.assignments == {rid("t", "keep"): "gpu1"}
    assert plan.loads == ()
    assert plan.unloads == ((rid("t", "gone"), "gpu0"),)


def test_replicas_of_a_dead_device_are_placed_again():
    devices = [Device("gpu1", "cuda", 10 * GiB)]
    placed = [Placed(rid("t", "m"), "gpu0", 2 * GiB)]  # gpu0 left the fleet
    plan = place(
        devices=devices, placed=placed, wanted=[Wanted(rid("t", "m"), 2 * GiB, "cuda")], quotas={"t": BIG}, now=0.0
    )
    assert plan.loads == ((rid("t", "m"), "gpu1"),)


def test_idle_replicas_are_evicted_least_recently_used_first_past_the_churn_guard():
    devices = [Device("gpu0", "cuda", 10 * GiB)]
    placed = [
        Placed(rid("t", "old"), "gpu0", 4 * GiB, last_used_at=100.0, idle_evictable=True),
        Placed(rid("t", "older"), "gpu0", 4 * GiB, last_used_at=50.0, idle_evictable=True),
        Placed(rid("t", "busy"), "gpu0", 2 * GiB, last_used_at=990.0, idle_evictable=False),
    ]
    wanted = [Wanted(p.replica, p.reserved_bytes, "cuda") for p in placed] + [Wanted(rid("t", "new"), 4 * GiB, "cuda")]
    plan = place(devices=devices, placed=placed, wanted=wanted, quotas={"t": BIG}, now=1000.0, churn_guard_s=300)
    assert plan.evictions == ((rid("t", "older"), "gpu0"),)
    assert plan.assignments[rid("t", "new")] == "gpu0"


def test_eviction_takes_the_least_recently_used_replica_across_devices():
    # Either device makes room by one eviction; the one used longest ago goes, though the other
    # would free fewer bytes.
    devices = [Device("gpu0", "cuda", 10 * GiB), Device("gpu1", "cuda", 10 * GiB)]
    placed = [
        Placed(rid("t", "recent"), "gpu0", 3 * GiB, last_used_at=600.0, idle_evictable=True),
        Placed(rid("t", "busy0"), "gpu0", 6 * GiB, last_used_at=990.0),
        Placed(rid("t", "oldest"), "gpu1", 5 * GiB, last_used_at=10.0, idle_evictable=True),
        Placed(rid("t", "busy1"), "gpu1", 4 * GiB, last_used_at=990.0),
    ]
    wanted = [Wanted(p.replica, p.reserved_bytes, "cuda") for p in placed] + [Wanted(rid("t", "new"), 4 * GiB, "cuda")]
    plan = place(devices=devices, placed=placed, wanted=wanted, quotas={"t": BIG}, now=1000.0, churn_guard_s=300)
    assert plan.evictions == ((rid("t", "oldest"), "gpu1"),)
    assert plan.assignments[rid("t", "new")] == "gpu1"


def test_nothing_used_within_the_churn_guard_is_evicted():
    devices = [Device("gpu0", "cuda", 10 * GiB)]
    placed = [Placed(rid("t", "recent"), "gpu0", 8 * GiB, last_used_at=900.0, idle_evictable=True)]
    wanted = [Wanted(rid("t", "recent"), 8 * GiB, "cuda"), Wanted(rid("t", "new"), 4 * GiB, "cuda")]
    plan = place(devices=devices, placed=placed, wanted=wanted, quotas={"t": BIG}, now=1000.0, churn_guard_s=300)
    assert plan.evictions == ()
    assert plan.pending[0][0] == rid("t", "new") and "no cuda device has" in plan.pending[0][1]


def test_a_tenant_at_its_quota_makes_way_with_its_own_idle_replicas_only():
    devices = [Device("gpu0", "cuda", 80 * GiB)]
    quota = Quota(memory_bytes={"cuda": 6 * GiB}, max_replicas=5)
    placed = [
        Placed(rid("t", "idle"), "gpu0", 4 * GiB, last_used_at=100.0, idle_evictable=True),
        Placed(rid("t", "busy"), "gpu0", 2 * GiB, last_used_at=100.0, idle_evictable=False),
        Placed(rid("u", "other"), "gpu0", 4 * GiB, last_used_at=10.0, idle_evictable=True),
    ]
    wanted = [Wanted(p.replica, p.reserved_bytes, "cuda") for p in placed] + [Wanted(rid("t", "new"), 3 * GiB, "cuda")]
    quotas = {"t": quota, "u": BIG}
    plan = place(devices=devices, placed=placed, wanted=wanted, quotas=quotas, now=1000.0, churn_guard_s=300)
    assert plan.evictions == ((rid("t", "idle"), "gpu0"),)  # its own; never the other tenant's
    assert plan.assignments[rid("t", "new")] == "gpu0"
    # Used within the churn guard: nothing is evicted and the quota refusal stands.
    plan = place(devices=devices, placed=placed, wanted=wanted, quotas=quotas, now=200.0, churn_guard_s=300)
    assert plan.evictions == ()
    assert plan.pending[0][0] == rid("t", "new") and "quota: needs 3072 MiB" in plan.pending[0][1]
    # The replica cap makes way the same way.
    capped = {"t": Quota(memory_bytes={"cuda": 80 * GiB}, max_replicas=2), "u": BIG}
    plan = place(devices=devices, placed=placed, wanted=wanted, quotas=capped, now=1000.0, churn_guard_s=300)
    assert plan.evictions == ((rid("t", "idle"), "gpu0"),)
    assert rid("t", "new") in plan.assignments


def test_a_quota_eviction_is_undone_when_the_replica_then_finds_no_device():
    # Evicting t's idle replica makes quota room, but the device would still lack room for
    # the new one (u's busy replica holds it): nothing is evicted and the reason is the device.
    devices = [Device("gpu0", "cuda", 10 * GiB)]
    placed = [
        Placed(rid("t", "idle"), "gpu0", 3 * GiB, last_used_at=0.0, idle_evictable=True),
        Placed(rid("u", "busy"), "gpu0", 6 * GiB, last_used_at=0.0, idle_evictable=False),
    ]
    wanted = [Wanted(p.replica, p.reserved_bytes, "cuda") for p in placed] + [Wanted(rid("t", "new"), 5 * GiB, "cuda")]
    quotas = {"t": Quota(memory_bytes={"cuda": 6 * GiB}, max_replicas=5), "u": BIG}
    plan = place(devices=devices, placed=placed, wanted=wanted, quotas=quotas, now=1000.0, churn_guard_s=300)
    assert plan.evictions == ()
    assert plan.assignments[rid("t", "idle")] == "gpu0"
    assert plan.pending == ((rid("t", "new"), "no cuda device has 5120 MiB free (the most free is 1024 MiB)"),)
    # With room for it once the idle replica goes, the same eviction stands.
    roomy = [Device("gpu0", "cuda", 12 * GiB)]
    plan = place(devices=roomy, placed=placed, wanted=wanted, quotas=quotas, now=1000.0, churn_guard_s=300)
    assert plan.evictions == ((rid("t", "idle"), "gpu0"),)
    assert plan.assignments[rid("t", "new")] == "gpu0"


def test_quota_refusals_say_what_is_needed_and_left():
    quota = Quota(memory_bytes={"cuda": 6 * GiB}, max_replicas=5)
    plan = place(
        devices=[Device("gpu0", "cuda", 80 * GiB)],
        placed=[],
        wanted=[Wanted(rid("t", "a"), 4 * GiB, "cuda"), Wanted(rid("t", "b"), 4 * GiB, "cuda")],
        quotas={"t": quota},
        now=0.0,
    )
    assert len(plan.assignments) == 1
    assert "needs 4096 MiB of cuda memory, 2048 MiB left of 6144 MiB" in plan.pending[0][1]


def test_a_replica_wanted_on_another_device_kind_leaves_its_device():
    devices = [Device("cpu0", "cpu", 8 * GiB), Device("gpu0", "cuda", 80 * GiB)]
    moved = rid("t", "m", 0)
    placed = [Placed(moved, "cpu0", 1 * GiB)]
    plan = place(devices=devices, placed=placed, wanted=[Wanted(moved, 1 * GiB, "cuda")], quotas={"t": BIG}, now=0.0)
    assert plan.unloads == ((moved, "cpu0"),)
    assert plan.loads == ((moved, "gpu0"),)
    no_gpu = place(
        devices=devices[:1], placed=placed, wanted=[Wanted(moved, 1 * GiB, "cuda")], quotas={"t": BIG}, now=0.0
    )
    assert no_gpu.unloads == ((moved, "cpu0"),)
    assert "no cuda device" in no_gpu.pending[0][1]


def test_every_deployments_minimum_is_placed_before_anyones_surplus():
    devices = [Device("cpu0", "cpu", 10 * GiB)]
    surplus = Wanted(rid("a", "big", 1), 6 * GiB, "cpu", surplus=True)
    minimum = Wanted(rid("b", "small", 0), 5 * GiB, "cpu")
    plan = place(devices=devices, placed=[], wanted=[surplus, minimum], quotas={"a": BIG, "b": BIG}, now=0.0)
    assert plan.loads == ((minimum.replica, "cpu0"),)
    assert [replica for replica, _ in plan.pending] == [surplus.replica]


def test_a_pinned_copy_holds_its_memory_and_its_device():
    devices = [Device("cpu0", "cpu", 10 * GiB), Device("cpu1", "cpu", 10 * GiB)]
    leaving = Placed(("t", "m", 1, -7), "cpu0", 4 * GiB, pinned=True)
    plan = place(
        devices=devices, placed=[leaving], wanted=[Wanted(rid("t", "m", 0), 4 * GiB, "cpu")], quotas={"t": BIG}, now=0.0
    )
    assert plan.loads == ((rid("t", "m", 0), "cpu1"),)  # not beside the leaving copy of its version
    assert plan.unloads == ()  # a pinned copy is never the plan's to unload


def test_a_versions_copies_go_down_before_small_singles_so_none_is_stranded():
    # Largest-first alone would put S beside L, leave K's third copy no device of its own
    # with room, and keep it pending; copies placed first, everything fits on three devices.
    devices = [Device(device_id=f"d{i}", kind="cuda", capacity_bytes=100) for i in range(3)]
    wanted = [
        Wanted(replica=rid("t", "large"), footprint_bytes=60, kind="cuda"),
        Wanted(replica=rid("t", "single"), footprint_bytes=30, kind="cuda"),
        *(Wanted(replica=rid("t", "copies", n), footprint_bytes=20, kind="cuda") for n in range(3)),
    ]
    quotas = {"t": Quota(memory_bytes={"cuda": 10_000}, max_replicas=100)}
    plan = place(devices=devices, placed=[], wanted=wanted, quotas=quotas, now=0.0)
    assert plan.pending == ()
    assert len({plan.assignments[rid("t", "copies", n)] for n in range(3)}) == 3


def test_copies_spread_over_the_devices_the_fleet_needs_rather_than_opening_another():
    # Best fit alone puts both 4s on the 8, then the pair's copies need two more devices
    # (three in all); spreading the pair over the two devices the total needs packs it in two.
    devices = [Device("d0", "cuda", 6), Device("d1", "cuda", 6), Device("d2", "cuda", 8)]
    wanted = [
        Wanted(rid("t", "m0"), 4, "cuda"),
        Wanted(rid("t", "m1"), 4, "cuda"),
        Wanted(rid("t", "pair", 0), 2, "cuda"),
        Wanted(rid("t", "pair", 1), 2, "cuda"),
    ]
    plan = place(devices=devices, placed=[], wanted=wanted, quotas={"t": BIG}, now=0.0)
    assert plan.pending == ()
    assert len(set(plan.assignments.values())) == 2
    assert plan.assignments[rid("t", "pair", 0)] != plan.assignments[rid("t", "pair", 1)]
    assert reserved_after(plan, devices, [], wanted) in ({"d0": 6, "d1": 0, "d2": 6}, {"d0": 0, "d1": 6, "d2": 6})


@st.composite
def occupied_fleets(draw):
    """A fleet already running a first plan's replicas (some idle and evictable, some no longer
    wanted), asked for more: the properties must hold from any such state, not just empty."""
    devices, first_wanted, quotas = draw(fleets())
    first = place(devices=devices, placed=[], wanted=first_wanted, quotas=quotas, now=0.0)
    sizes = {w.replica: w.footprint_bytes for w in first_wanted}
    placed = [
        Placed(
            replica,
            device_id,
            sizes[replica],
            last_used_at=float(draw(st.integers(0, 1000))),
            idle_evictable=draw(st.booleans()),
        )
        for replica, device_id in sorted(first.assignments.items())
    ]
    kept = [w for w in first_wanted if w.replica in first.assignments and draw(st.integers(0, 4))]
    more = []
    for m in range(draw(st.integers(0, 6))):
        tenant = draw(st.sampled_from(sorted(quotas)))
        footprint = draw(st.integers(50, 8192)) * MiB
        for r in range(draw(st.integers(1, 3))):
            more.append(Wanted(replica=rid(tenant, f"new{m}", r), footprint_bytes=footprint, kind="cuda"))
    return devices, placed, kept + more, quotas


@settings(max_examples=150, deadline=None)
@given(occupied_fleets(), st.randoms(use_true_random=False))
def test_from_an_occupied_fleet_no_over_commit_quotas_kept_no_churn_and_order_free(fleet, rng: random.Random):
    devices, placed, wanted, quotas = fleet
    now, guard = 1000.0, 300.0
    plan = place(devices=devices, placed=placed, wanted=wanted, quotas=quotas, now=now, churn_guard_s=guard)
    sizes = {w.replica: w.footprint_bytes for w in wanted}
    totals = reserved_after(plan, devices, placed, wanted)
    for device in devices:
        assert totals[device.device_id] <= device.capacity_bytes - device.headroom_bytes
    by_replica = {p.replica: p for p in placed}
    evicted = {replica for replica, _ in plan.evictions}
    for replica, device_id in plan.evictions:
        victim = by_replica[replica]
        assert victim.idle_evictable and now - victim.last_used_at >= guard  # only idle, past the guard
        assert device_id == victim.device_id  # unloaded where it is
    for item in placed:
        if item.replica in sizes and item.replica not in evicted:
            assert plan.assignments[item.replica] == item.device_id  # what runs stays where it is
        if item.replica not in sizes:
            assert (item.replica, item.device_id) in plan.unloads
    # Nothing newly loaded breaks a tenant's memory quota on top of what it keeps.
    for tenant, quota in quotas.items():
        loaded = [r for r, _ in plan.loads if r[0] == tenant]
        if loaded:
            mine = [r for r in plan.assignments if r[0] == tenant]
            assert (
                sum(sizes.get(r, by_replica[r].reserved_bytes if r in by_replica else 0) for r in mine)
                <= (quota.memory_bytes["cuda"])
            )
            assert len(mine) <= quota.max_replicas
    shuffled_devices, shuffled_placed, shuffled_wanted = devices[:], placed[:], wanted[:]
    rng.shuffle(shuffled_devices)
    rng.shuffle(shuffled_placed)
    rng.shuffle(shuffled_wanted)
    again = place(
        devices=shuffled_devices,
        placed=shuffled_placed,
        wanted=shuffled_wanted,
        quotas=quotas,
        now=now,
        churn_guard_s=guard,
    )
    assert again == plan
    _anti_affinity_holds(plan, devices)
    event(f"evictions: {bool(plan.evictions)}, loads: {bool(plan.loads)}, unloads: {bool(plan.unloads)}")


def _anti_affinity_holds(plan, devices) -> None:
    """Copies of one version are on distinct devices, and one waits for "a device of its own"
    only when every schedulable device already hosts a copy."""
    by_version: dict[tuple, list[str]] = {}
    for replica, device_id in plan.assignments.items():
        by_version.setdefault(replica[:3], []).append(device_id)
    for device_ids in by_version.values():
        assert len(device_ids) == len(set(device_ids))
    schedulable = {d.device_id for d in devices if d.schedulable}
    for replica, reason in plan.pending:
        if "already hosts a replica" in reason:
            assert schedulable <= set(by_version.get(replica[:3], ()))


@settings(max_examples=150, deadline=None)
@given(fleets())
def test_copies_of_a_version_share_no_device_on_random_fleets(fleet):
    devices, wanted, quotas = fleet
    _anti_affinity_holds(place(devices=devices, placed=[], wanted=wanted, quotas=quotas, now=0.0), devices)


def test_copies_are_spread_over_the_devices_the_quotas_let_fill_not_all_that_is_wanted():
    """The packing bench's seed 50, mix 4: 164 replicas wanted, 156 within the tenants'
    quotas (226.5 GB on three 80 GB devices, 94 % full). Counting the 8 a quota refuses, the
    spreading rule opened a fourth device and spread copies over it; the quotas' share fits
    on the three the bound says."""
    from bench.packing import lower_bound, make_mix

    rng = random.Random(50)
    for _ in range(5):
        mix = make_mix(rng)
    plan = place(devices=mix.devices, placed=[], wanted=mix.wanted, quotas=mix.quotas, now=0.0)
    sizes = {w.replica: w.footprint_bytes for w in mix.wanted}
    assert len(plan.assignments) == 156 and len(plan.pending) == 8
    assert all(reason.startswith("quota:") for _, reason in plan.pending)
    copies: dict[tuple[str, str, int], int] = {}
    for replica in plan.assignments:
        copies[replica[:3]] = copies.get(replica[:3], 0) + 1
    bound = lower_bound([sizes[r] for r in plan.assignments], mix.devices, max(copies.values()))
    assert bound == 3 and len(set(plan.assignments.values())) == 3


def test_the_three_device_check_decides_small_cases_both_ways():
    """bench.packing_three, which settles the packing bench's undecided near-full mixes."""
    from bench.packing_three import fits_three

    unit = 1
    # Copies of a version on distinct devices: three copies of 5 fit 10 + 5 + 5, of 6 do not.
    assert fits_three([(5, 3)], [10, 5, 5], unit=unit, round_up=False)
    assert not fits_three([(6, 3)], [10, 5, 5], unit=unit, round_up=False)
    # 7 + 3 on the large device, 5 and 5 on the small ones: full to the byte.
    assert fits_three([(7, 1), (5, 1), (5, 1), (3, 1)], [10, 5, 5], unit=unit, round_up=False)
    # The same total with two 6s: only the 10 takes a 6, and not two.
    assert not fits_three([(6, 1), (6, 1), (4, 1), (4, 1)], [10, 5, 5], unit=unit, round_up=False)
    # Two copies of 6 need two devices of 6: the 10 and one 5 cannot both take one.
    assert not fits_three([(6, 2)], [10, 5, 5], unit=unit, round_up=False)
    # Rounding: sizes of 14 in steps of 10 are 1 step rounded down (a relaxation), 2 up.
    assert fits_three([(14, 3)], [10, 10, 10], unit=10, round_up=False)
    assert not fits_three([(14, 3)], [10, 10, 10], unit=10, round_up=True)
