"""Memory-aware placement: a pure function from the fleet and the wanted replicas to a plan.

Best-fit decreasing by **measured** footprint: each new replica (those over half a typical
device first, then versions with more copies, then largest first) goes to
the device already in use where it leaves the least memory free, and opens the largest
empty device only when none has room; never past a device's capacity less its headroom.
It plans once per fit rule (best fit; the largest device in use first; copies spread over the
devices the total wanted, or the total the quotas let in, needs, opened up front; each
device filled in turn by a subset sum, bin completion) and keeps the plan that leaves the
fewest replicas pending, evicts the fewest, and uses the fewest devices.
Replicas of one version always go to distinct devices (a worker hosts a version once). Each tenant's memory quota
(per device kind) and replica cap are kept. When nothing fits, idle scale-to-zero
replicas are evicted least-recently-used first, but never one used within the churn
guard; a tenant at its quota likewise makes way with its own idle replicas. Replicas
already placed stay where they are (no churn); replicas no longer wanted are unloaded.
Equal input gives an equal plan, whatever its order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

ReplicaId = tuple[str, str, int, int]  # tenant, model, version, replica index


@dataclass(frozen=True)
class Device:
    """One device of the fleet, with what is placed on it now."""

    device_id: str
    kind: str  # "cpu" or "cuda"
    capacity_bytes: int
    headroom_bytes: int = 0
    schedulable: bool = True  # False while draining or dead


@dataclass(frozen=True)
class Placed:
    """A replica that holds memory on a device now."""

    replica: ReplicaId
    device_id: str
    reserved_bytes: int
    last_used_at: float = 0.0
    idle_evictable: bool = False  # scaled to zero: may be evicted when memory is short
    pinned: bool = False  # leaving (drain, unload grace): holds its memory and its device, never moved


@dataclass(frozen=True)
class Wanted:
    """A replica the deployments want, with its version's measured footprint."""

    replica: ReplicaId
    footprint_bytes: int
    kind: str
    avoid: frozenset[str] = frozenset()  # devices where its load failed: others first
    surplus: bool = False  # above its deployment's minimum (autoscaled): placed after every minimum


@dataclass(frozen=True)
class Quota:
    """A tenant's limits: memory per device kind (bytes) and replicas in all."""

    memory_bytes: dict[str, int]
    max_replicas: int


@dataclass(frozen=True)
class Plan:
    """What to do: loads and unloads by device, evictions, and what cannot be placed (why)."""

    loads: tuple[tuple[ReplicaId, str], ...] = ()
    unloads: tuple[tuple[ReplicaId, str], ...] = ()
    evictions: tuple[tuple[ReplicaId, str], ...] = ()
    pending: tuple[tuple[ReplicaId, str], ...] = ()
    assignments: dict[ReplicaId, str] = field(default_factory=dict)


def _mib(size: int) -> str:
    return f"{size / 1024**2:.0f} MiB"


# How a replica picks among the devices in use that have room for it: the one it leaves
# with the least free (best fit); the largest (first fit over devices by capacity, which
# fills big devices before small ones); or, for a version with copies, the one with the most
# free among the devices the total needs, opened up front (spread): the total wanted, or the
# total the tenants' quotas let in (spread_quota). Neither of the two spreads is always the
# better: opening for replicas a quota then refuses spreads copies over a device too many
# (the packing bench's seed 50 mix 4), while the wider spread leaves copies room that
# a tighter one lacks (seed 87 mix 3).
# The fifth, "complete", fills the devices one at a time, each with the replicas whose
# footprints come closest to its room (a subset sum), so that a near-full mix fits on the
# fewest devices where largest-first rules leave each device a few scraps short (seed 87
# mix 3: 221 replicas, 399.9 GB, on 7 devices of 400 GB in all; the other rules need 8).
FITS = ("best", "largest", "spread", "spread_quota", "complete")
# The subset sums count memory in steps of the power of two nearest below a device's room
# / 2**18 (256 KiB on 80 GB), rounded up per replica: never less than the real sizes, fine
# enough to fill a device within MBs.
COMPLETE_STEPS_LOG2 = 18
# How many device counts "complete" tries in all: the fewest whose room covers the
# replicas, then one and two more.
COMPLETE_TRIES = 3


def place(
    *,
    devices: list[Device],
    placed: list[Placed],
    wanted: list[Wanted],
    quotas: dict[str, Quota],
    now: float,
    churn_guard_s: float = 300.0,
) -> Plan:
    """Computes a placement plan.

    Plans once per fit rule (``FITS``) and keeps the plan that leaves the fewest replicas
    pending, then evicts the fewest, then uses the fewest devices (the first rule on a tie).

    Args:
        devices: The fleet.
        placed: Replicas holding memory now (their reservations).
        wanted: Every replica the deployments want (placed ones included).
        quotas: Per tenant; a tenant without an entry may place nothing.
        now: The current time (seconds), for the churn guard.
        churn_guard_s: Nothing used more recently than this is evicted.
    """
    plans = [
        _place(
            devices=devices,
            placed=placed,
            wanted=wanted,
            quotas=quotas,
            now=now,
            churn_guard_s=churn_guard_s,
            fit=fit,
        )
        for fit in FITS
    ]
    return min(
        plans,
        key=lambda plan: (len(plan.pending), len(plan.evictions), len(set(plan.assignments.values()))),
    )


def _place(
    *,
    devices: list[Device],
    placed: list[Placed],
    wanted: list[Wanted],
    quotas: dict[str, Quota],
    now: float,
    churn_guard_s: float,
    fit: str,
) -> Plan:
    by_id = {device.device_id: device for device in sorted(devices, key=lambda d: d.device_id)}
    wanted_by_id = {w.replica: w for w in wanted}
    reserved: dict[str, int] = dict.fromkeys(by_id, 0)
    on_device: dict[str, list[Placed]] = {device_id: [] for device_id in by_id}
    assignments: dict[ReplicaId, str] = {}
    unloads: list[tuple[ReplicaId, str]] = []
    tenant_memory: dict[tuple[str, str], int] = {}
    tenant_replicas: dict[str, int] = {}

    occupied: dict[str, set[tuple[str, str, int]]] = {device_id: set() for device_id in by_id}
    for item in sorted(placed, key=lambda p: (p.device_id, p.replica)):
        if item.device_id not in by_id:
            continue  # its device is gone: the replica is lost and will be placed anew
        if item.pinned:
            reserved[item.device_id] += item.reserved_bytes
            occupied[item.device_id].add(item.replica[:3])
            continue
        kind = by_id[item.device_id].kind
        if item.replica not in wanted_by_id or wanted_by_id[item.replica].kind != kind:
            unloads.append((item.replica, item.device_id))  # not wanted, or wanted on another kind
            continue
        reserved[item.device_id] += item.reserved_bytes
        on_device[item.device_id].append(item)
        assignments[item.replica] = item.device_id
        tenant = item.replica[0]
        tenant_memory[(tenant, kind)] = tenant_memory.get((tenant, kind), 0) + item.reserved_bytes
        tenant_replicas[tenant] = tenant_replicas.get(tenant, 0) + 1

    loads: list[tuple[ReplicaId, str]] = []
    evictions: list[tuple[ReplicaId, str]] = []
    pending: list[tuple[ReplicaId, str]] = []
    copies: dict[tuple[str, str, int], int] = {}
    for w in wanted:
        copies[w.replica[:3]] = copies.get(w.replica[:3], 0) + 1
    capacities = sorted(d.capacity_bytes - d.headroom_bytes for d in by_id.values())
    typical = capacities[len(capacities) // 2] if capacities else 0

    def order(w: Wanted) -> tuple[bool, bool, int, int, ReplicaId]:
        # Replicas over half a typical device first (the hard ones, largest first); then
        # versions with more copies (each copy needs a device of its own: placed while the most
        # devices have room, they do not force devices open at the end); then largest first.
        large = w.footprint_bytes * 2 > typical
        return (w.surplus, not large, -copies[w.replica[:3]] if not large else 0, -w.footprint_bytes, w.replica)

    todo = sorted((w for w in wanted if w.replica not in assignments), key=order)

    def free(device_id: str) -> int:
        device = by_id[device_id]
        return device.capacity_bytes - device.headroom_bytes - reserved[device_id]

    # "spread" opens up front, per kind, the fewest largest devices whose room covers every
    # wanted replica, and spreads copies of a version over them (most free first), so the
    # last copies still find distinct devices with room among those already open.
    opened: set[str] = set()
    if fit.startswith("spread"):
        for kind in sorted({w.kind for w in todo}):
            wanted_by_tenant: dict[str, int] = {}
            for w in todo:
                if w.kind == kind:
                    wanted_by_tenant[w.replica[0]] = wanted_by_tenant.get(w.replica[0], 0) + w.footprint_bytes
            need = 0
            for tenant, wanted_bytes in wanted_by_tenant.items():
                quota = quotas.get(tenant)
                left = quota.memory_bytes.get(kind, 0) - tenant_memory.get((tenant, kind), 0) if quota else 0
                need += min(wanted_bytes, max(left, 0)) if fit == "spread_quota" else wanted_bytes
            pool = [d for d in by_id.values() if d.kind == kind and d.schedulable]
            for device in sorted(pool, key=lambda d: (-free(d.device_id), d.device_id)):
                if need <= 0:
                    break
                opened.add(device.device_id)
                need -= free(device.device_id)

    # "complete" decides each replica's device up front (where quotas would let it in), and
    # the loop below takes that device when it still fits; anything else goes best fit.
    preferred: dict[ReplicaId, str] = {}
    if fit == "complete" and todo:  # nothing new (the steady state): nothing to decide
        preferred = _completion(
            todo=todo,
            pool=[d for d in by_id.values() if d.schedulable],
            free=free,
            in_use={device_id for device_id, items in on_device.items() if items}
            | {device_id for device_id, versions in occupied.items() if versions},
            versions_on={
                device_id: occupied[device_id] | {p.replica[:3] for p in on_device[device_id]} for device_id in by_id
            },
            quotas=quotas,
            tenant_memory=tenant_memory,
            tenant_replicas=tenant_replicas,
        )

    def siblings(device_id: str, replica: ReplicaId) -> bool:
        if replica[:3] in occupied[device_id]:
            return True  # a leaving copy of the version is still there
        return any(
            other_id[:3] == replica[:3] and assigned == device_id
            for other_id, assigned in assignments.items()
            if other_id != replica
        )

    def evict(victim: Placed, kind: str) -> None:
        """Takes an idle replica off its device (unloaded where it is), freeing its memory and
        its tenant's quota."""
        evictions.append((victim.replica, victim.device_id))
        on_device[victim.device_id].remove(victim)
        reserved[victim.device_id] -= victim.reserved_bytes
        assignments.pop(victim.replica, None)
        tenant_memory[(victim.replica[0], kind)] -= victim.reserved_bytes
        tenant_replicas[victim.replica[0]] -= 1

    def snapshot() -> Callable[[], None]:
        """Returns what puts every count and list evictions change back as they are now."""
        kept_reserved, kept_assignments = dict(reserved), dict(assignments)
        kept_memory, kept_replicas = dict(tenant_memory), dict(tenant_replicas)
        kept_on_device = {device_id: list(items) for device_id, items in on_device.items()}
        kept_evictions = len(evictions)

        def restore() -> None:
            reserved.update(kept_reserved)
            on_device.update(kept_on_device)
            assignments.clear()
            assignments.update(kept_assignments)
            tenant_memory.update(kept_memory)
            tenant_replicas.update(kept_replicas)
            del evictions[kept_evictions:]

        return restore

    for want in todo:
        undo_quota_evictions: Callable[[], None] | None = None
        tenant = want.replica[0]
        quota = quotas.get(tenant)
        if quota is None:
            pending.append((want.replica, f"tenant '{tenant}' has no quota"))
            continue
        limit = quota.memory_bytes.get(want.kind, 0)
        used = tenant_memory.get((tenant, want.kind), 0)
        short_bytes = used + want.footprint_bytes - limit
        short_count = tenant_replicas.get(tenant, 0) + 1 - quota.max_replicas
        if (short_bytes > 0 or short_count > 0) and limit >= want.footprint_bytes:
            # At its quota: the tenant's own idle scale-to-zero replicas (LRU, past the churn
            # guard) make way for the one it asks for now, as they would for device memory.
            own = [
                p
                for d in by_id.values()
                if d.kind == want.kind
                for p in on_device[d.device_id]
                if p.replica[0] == tenant and p.replica[:3] != want.replica[:3]
            ]
            victims: list[Placed] = []
            freed = 0
            for candidate in _evictable(own, now, churn_guard_s):
                if freed >= short_bytes and len(victims) >= short_count:
                    break
                victims.append(candidate)
                freed += candidate.reserved_bytes
            if victims and freed >= short_bytes and len(victims) >= short_count:
                # Undone if the replica then finds no device: nothing is evicted for nothing.
                undo_quota_evictions = snapshot()
                for victim in victims:
                    evict(victim, want.kind)
                used = tenant_memory.get((tenant, want.kind), 0)
        if used + want.footprint_bytes > limit:
            pending.append(
                (
                    want.replica,
                    f"quota: needs {_mib(want.footprint_bytes)} of {want.kind} memory, "
                    f"{_mib(max(limit - used, 0))} left of {_mib(limit)}",
                )
            )
            continue
        if tenant_replicas.get(tenant, 0) + 1 > quota.max_replicas:
            pending.append((want.replica, f"quota: max_replicas {quota.max_replicas} reached"))
            continue
        of_kind = [d for d in by_id.values() if d.kind == want.kind and d.schedulable]
        # A worker hosts a version once (it scales within itself by instances), so two
        # replicas of one version never share a device.
        candidates = [d for d in of_kind if not siblings(d.device_id, want.replica)]
        # Devices where its load failed are left out when any other it may go to is left (room
        # or not); only after those holding a sibling are, or a replica whose only other
        # device holds its sibling would wait forever.
        if want.avoid and any(d.device_id not in want.avoid for d in candidates):
            candidates = [d for d in candidates if d.device_id not in want.avoid]
        choice_pool = [d for d in candidates if free(d.device_id) >= want.footprint_bytes]
        chosen: str | None = None
        if choice_pool:
            # Among devices already in use (or opened up front by "spread") by the fit rule;
            # open an empty device (the largest) only when none of them has room, so the
            # fleet's other devices stay free.
            in_use = [d for d in choice_pool if on_device[d.device_id] or d.device_id in opened]
            target = preferred.get(want.replica)
            if target is not None and any(d.device_id == target for d in choice_pool):
                chosen = target
            elif in_use and fit.startswith("spread") and copies[want.replica[:3]] > 1:
                chosen = min(in_use, key=lambda d: (-(free(d.device_id) - want.footprint_bytes), d.device_id)).device_id
            elif in_use and fit == "largest":
                chosen = min(
                    in_use, key=lambda d: (-d.capacity_bytes, free(d.device_id) - want.footprint_bytes, d.device_id)
                ).device_id
            elif in_use:
                chosen = min(in_use, key=lambda d: (free(d.device_id) - want.footprint_bytes, d.device_id)).device_id
            else:
                chosen = max(choice_pool, key=lambda d: (d.capacity_bytes, d.device_id)).device_id
        else:
            room = _make_room(want, candidates, on_device, free, now, churn_guard_s)
            if room is not None:
                chosen, victims = room
                for victim in victims:
                    evict(victim, want.kind)
        if chosen is None and undo_quota_evictions is not None:
            undo_quota_evictions()
        if chosen is None and of_kind and not candidates:
            pending.append(
                (want.replica, f"every {want.kind} device already hosts a replica of this version; add a device")
            )
            continue
        if chosen is None:
            largest = max((free(d.device_id) for d in candidates), default=0)
            pending.append(
                (
                    want.replica,
                    f"no {want.kind} device has {_mib(want.footprint_bytes)} free "
                    f"(the most free is {_mib(max(largest, 0))})",
                )
            )
            continue
        reserved[chosen] += want.footprint_bytes
        item = Placed(replica=want.replica, device_id=chosen, reserved_bytes=want.footprint_bytes, last_used_at=now)
        on_device[chosen].append(item)
        assignments[want.replica] = chosen
        loads.append((want.replica, chosen))
        tenant_memory[(tenant, want.kind)] = used + want.footprint_bytes
        tenant_replicas[tenant] = tenant_replicas.get(tenant, 0) + 1

    return Plan(
        loads=tuple(loads),
        unloads=tuple(unloads),
        evictions=tuple(evictions),
        pending=tuple(pending),
        assignments=assignments,
    )


def _evictable(items: list[Placed], now: float, churn_guard_s: float) -> list[Placed]:
    return sorted(
        (p for p in items if p.idle_evictable and now - p.last_used_at >= churn_guard_s),
        key=lambda p: (p.last_used_at, p.replica),
    )


def _victims_for(want: Wanted, items: list[Placed], free_now: int, now: float, churn_guard_s: float) -> list[Placed]:
    victims: list[Placed] = []
    freed = 0
    for candidate in _evictable(items, now, churn_guard_s):
        if free_now + freed >= want.footprint_bytes:
            break
        victims.append(candidate)
        freed += candidate.reserved_bytes
    return victims if free_now + freed >= want.footprint_bytes else []


def _make_room(
    want: Wanted,
    candidates: list[Device],
    on_device: dict[str, list[Placed]],
    free: Callable[[str], int],
    now: float,
    churn_guard_s: float,
) -> tuple[str, list[Placed]] | None:
    """The device where evicting idle replicas (LRU within it) frees enough, with those
    victims: least recently used first across the fleet (the device whose most recently used
    victim was used longest ago), then the fewest bytes evicted."""
    best: tuple[float, int, str, list[Placed]] | None = None
    for device in candidates:
        victims = _victims_for(want, on_device[device.device_id], free(device.device_id), now, churn_guard_s)
        if not victims:
            continue
        rank = (max(v.last_used_at for v in victims), sum(v.reserved_bytes for v in victims), device.device_id)
        if best is None or rank < best[:3]:
            best = (*rank, victims)
    return (best[2], best[3]) if best else None


def _completion(
    *,
    todo: list[Wanted],
    pool: list[Device],
    free: Callable[[str], int],
    in_use: set[str],
    versions_on: dict[str, set[tuple[str, str, int]]],
    quotas: dict[str, Quota],
    tenant_memory: dict[tuple[str, str], int],
    tenant_replicas: dict[str, int],
) -> dict[ReplicaId, str]:
    """A device for each replica of ``todo`` that its tenant's quota lets in, by bin
    completion: per kind, the devices in use and then the empty ones, most room first, each
    filled in turn with the replicas whose footprints sum closest to its room (one copy of a
    version per device, none where its load failed; a version with as many copies left as
    devices left goes in now). It tries the fewest devices whose room covers the replicas,
    then a few more, and returns the first assignment that places them all ({} when none
    does)."""
    memory = dict(tenant_memory)
    counts = dict(tenant_replicas)
    admitted: list[Wanted] = []
    for want in todo:  # the loop's order, its quota checks (without evictions)
        quota = quotas.get(want.replica[0])
        if quota is None:
            continue
        key = (want.replica[0], want.kind)
        if memory.get(key, 0) + want.footprint_bytes > quota.memory_bytes.get(want.kind, 0):
            continue
        if counts.get(want.replica[0], 0) + 1 > quota.max_replicas:
            continue
        memory[key] = memory.get(key, 0) + want.footprint_bytes
        counts[want.replica[0]] = counts.get(want.replica[0], 0) + 1
        admitted.append(want)
    chosen: dict[ReplicaId, str] = {}
    for kind in sorted({w.kind for w in admitted}):
        items = sorted((w for w in admitted if w.kind == kind), key=lambda w: (-w.footprint_bytes, w.replica))
        devices = sorted(
            (d for d in pool if d.kind == kind and free(d.device_id) > 0),
            key=lambda d: (d.device_id not in in_use, -free(d.device_id), d.device_id),
        )
        total = sum(w.footprint_bytes for w in items)
        most_copies = max(Counter(w.replica[:3] for w in items).values())
        room = 0
        fewest = len(devices) + 1
        for count, device in enumerate(devices, start=1):
            room += free(device.device_id)
            if room >= total and count >= most_copies:
                fewest = count
                break
        for count in range(fewest, min(fewest + COMPLETE_TRIES, len(devices) + 1)):
            found = _complete_on(items, devices[:count], free, versions_on)
            if found is not None:
                chosen.update(found)
                break
    return chosen


def _complete_on(
    items: list[Wanted],
    devices: list[Device],
    free: Callable[[str], int],
    versions_on: dict[str, set[tuple[str, str, int]]],
) -> dict[ReplicaId, str] | None:
    """Fills ``devices`` in turn with ``items`` (see ``_completion``); None if some are left."""
    left = list(items)
    chosen: dict[ReplicaId, str] = {}
    for index, device in enumerate(devices):
        remaining_devices = len(devices) - index
        room = free(device.device_id)
        by_version: dict[tuple[str, str, int], list[Wanted]] = {}
        for want in left:
            by_version.setdefault(want.replica[:3], []).append(want)
        here = versions_on[device.device_id]
        # Per version, its first copy that may go here (not one whose load failed here).
        fits_here = {
            version: next((w for w in wants if device.device_id not in w.avoid), None)
            for version, wants in by_version.items()
            if version not in here
        }
        forced: list[Wanted] = []
        for version, wants in by_version.items():
            if len(wants) >= remaining_devices:
                copy = fits_here.get(version)
                if copy is None:
                    return None  # a copy that must go here cannot (a sibling is here, or it failed here)
                forced.append(copy)
        room -= sum(want.footprint_bytes for want in forced)
        if room < 0:
            return None
        optional = [
            copy
            for version, copy in fits_here.items()
            if copy is not None and len(by_version[version]) < remaining_devices
        ]
        picked = forced + _closest_subset(optional, room, free(device.device_id))
        for want in picked:
            chosen[want.replica] = device.device_id
        taken = {want.replica for want in picked}
        left = [want for want in left if want.replica not in taken]
        if not left:
            return chosen
    return None


def _closest_subset(items: list[Wanted], room: int, capacity: int) -> list[Wanted]:
    """The items whose footprints (rounded up to steps of about capacity / 2**COMPLETE_STEPS_LOG2)
    sum closest to ``room`` without passing it: a subset sum over a bit set of the reachable
    totals, then walked back."""
    if room <= 0 or not items:
        return []
    # A power of two: sizes in whole MiB stay exact on devices under 512 GiB.
    step = 1 << max(0, capacity.bit_length() - 1 - COMPLETE_STEPS_LOG2)
    limit = room // step
    mask = (1 << (limit + 1)) - 1
    sizes = [-(-want.footprint_bytes // step) for want in items]
    reach = 1  # bit t: some subset of the items so far sums to t steps
    before: list[int] = []
    for size in sizes:
        before.append(reach)
        if size <= limit:
            reach = (reach | (reach << size)) & mask
    total = reach.bit_length() - 1
    picked = []
    for index in range(len(items) - 1, -1, -1):
        if (before[index] >> total) & 1:
            continue  # reachable without this item
        picked.append(items[index])
        total -= sizes[index]
    return picked
