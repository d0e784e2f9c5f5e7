"""Packing benchmark: Berth's placement against one-model-per-device and ModelMesh's rule.

For reproducible fleets (4-32 devices of 24-80 GB) and model mixes (footprints
log-uniform 50 MB-8 GB, 1-3 replicas, several tenants with quotas) it prints, per mix:
replicas resident, the lower bound on devices needed (fewest devices whose capacities
cover the resident footprints, and at least as many as a version has copies: each copy needs
a device of its own), devices used, and models per device, for

- Berth: best-fit decreasing by measured footprint (``apps.deployments.placement.place``);
- one model per device (Triton / KServe default): each replica takes a whole device;
- ModelMesh's rule: most free space first, with no measurement (size = file size x 1.25,
  while the real footprint is 1.1-3x the file): its plan can over-commit devices, which
  would OOM; we count those.

    .venv/bin/python -m bench.packing [--mixes 8] [--seed 1]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
from dataclasses import dataclass

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "control_plane.settings.test")

from apps.deployments.placement import Device, Quota, Wanted, place

GB = 10**9


@dataclass
class Mix:
    devices: list[Device]
    wanted: list[Wanted]
    file_bytes: dict[tuple[str, str, int, int], int]
    quotas: dict[str, Quota]


def make_mix(rng: random.Random) -> Mix:
    devices = [
        Device(device_id=f"gpu{i:02d}", kind="cuda", capacity_bytes=rng.choice([24, 40, 48, 80]) * GB)
        for i in range(rng.randint(4, 32))
    ]
    fleet = sum(d.capacity_bytes for d in devices)
    tenants = [f"tenant{i}" for i in range(rng.randint(2, 5))]
    quotas = {t: Quota(memory_bytes={"cuda": int(fleet * rng.uniform(0.3, 0.6))}, max_replicas=10_000) for t in tenants}
    wanted: list[Wanted] = []
    file_bytes = {}
    total = 0
    index = 0
    while total < fleet * rng.uniform(0.55, 0.8):
        footprint = int(math.exp(rng.uniform(math.log(50e6), math.log(8e9))))
        tenant = rng.choice(tenants)
        size_on_disk = int(footprint / rng.uniform(1.1, 3.0))
        for replica in range(rng.randint(1, 3)):
            key = (tenant, f"model{index}", 1, replica)
            wanted.append(Wanted(replica=key, footprint_bytes=footprint, kind="cuda"))
            file_bytes[key] = size_on_disk
            total += footprint
        index += 1
    return Mix(devices, wanted, file_bytes, quotas)


def lower_bound(footprints: list[int], devices: list[Device], most_copies: int = 1) -> int:
    """The fewest devices that could hold it all: the largest devices until their capacity
    covers the footprints, and never fewer than a version's copies (each on its own device)."""
    need = sum(footprints)
    covered = 0
    for count, capacity in enumerate(sorted((d.capacity_bytes for d in devices), reverse=True), start=1):
        covered += capacity
        if covered >= need:
            return max(count, most_copies)
    return len(devices)


def modelmesh(mix: Mix) -> tuple[int, int, int]:
    """(replicas placed, devices used, devices over-committed in reality)."""
    estimated = dict.fromkeys((d.device_id for d in mix.devices), 0)
    actual = dict.fromkeys(estimated, 0)
    capacity = {d.device_id: d.capacity_bytes for d in mix.devices}
    placed = 0
    for want in mix.wanted:
        guess = int(mix.file_bytes[want.replica] * 1.25)
        device = max(capacity, key=lambda d: (capacity[d] - estimated[d], d))
        if capacity[device] - estimated[device] < guess:
            continue
        estimated[device] += guess
        actual[device] += want.footprint_bytes
        placed += 1
    used = sum(1 for d in estimated if estimated[d])
    over = sum(1 for d in actual if actual[d] > capacity[d])
    return placed, used, over


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mixes", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    print(
        f"{'mix':>3} {'devs':>4} {'replicas':>8} | {'berth: resident':>15} {'lower bound':>11} {'used':>4} "
        f"{'per dev':>7} | {'1/dev: resident':>15} {'per dev':>7} | {'modelmesh: placed':>17} {'used':>4} "
        f"{'OOM devs':>8}"
    )
    within = []
    ratios = []
    fleet_ratios = []
    for number in range(args.mixes):
        mix = make_mix(rng)
        plan = place(devices=mix.devices, placed=[], wanted=mix.wanted, quotas=mix.quotas, now=0.0)
        sizes = {w.replica: w.footprint_bytes for w in mix.wanted}
        resident = list(plan.assignments)
        used = len(set(plan.assignments.values()))
        copies: dict[tuple[str, str, int], int] = {}
        for replica in resident:
            copies[replica[:3]] = copies.get(replica[:3], 0) + 1
        bound = lower_bound([sizes[r] for r in resident], mix.devices, max(copies.values(), default=1))
        per_device = len(resident) / used if used else 0.0
        one_per_device = min(len(mix.wanted), len(mix.devices))
        mm_placed, mm_used, mm_over = modelmesh(mix)
        within.append(used / bound if bound else 1.0)
        ratios.append(per_device / 1.0)
        fleet_ratios.append(len(resident) / one_per_device if one_per_device else 0.0)
        print(
            f"{number:>3} {len(mix.devices):>4} {len(mix.wanted):>8} | {len(resident):>15} {bound:>11} {used:>4} "
            f"{per_device:>7.1f} | {one_per_device:>15} {1.0:>7.1f} | {mm_placed:>17} {mm_used:>4} {mm_over:>8}"
        )
    print()
    print(
        f"devices used / lower bound: worst {max(within):.3f}, mean {sum(within) / len(within):.3f} "
        f"(target: within 1.10)"
    )
    print(
        f"models per device vs one-per-device: worst {min(ratios):.1f}x, mean {sum(ratios) / len(ratios):.1f}x "
        f"(target: at least 3x)"
    )
    print(
        f"replicas resident on the whole fleet vs one-per-device on the same fleet: worst {min(fleet_ratios):.1f}x, "
        f"mean {sum(fleet_ratios) / len(fleet_ratios):.1f}x (target: at least 3x)"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
