"""Whether a packing-bench mix whose bound is three devices really fits on three: exactly.

``bench.packing`` prints, for a mix over its lower bound, the fewest devices an exhaustive
search finds, and "?" when its node budget runs out: near-full mixes of a hundred and more
replicas were left undecided that way. For a bound of three devices this decides them with
a dynamic programme over the fill of the first two devices (the third's is what is left), in
steps of ``--unit`` bytes, one version at a time (a version with three copies puts one on
each device; with two, on two of them; with one, on any). Rounding every size down makes a
relaxation: if even that does not fit, the replicas do not fit on any three devices of the
fleet (the three largest are the most room three can give). Rounding up makes a
restriction: if that fits, a real packing exists.

    .venv/bin/python -m bench.packing_three --seed 66 --mix 0
"""

from __future__ import annotations

import argparse
import os
import random

import numpy as np

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "control_plane.settings.test")

from apps.deployments.placement import place
from bench.packing import lower_bound, make_mix

MB = 10**6


def fits_three(groups: list[tuple[int, int]], capacities: list[int], *, unit: int, round_up: bool) -> bool:
    """Whether versions given as (footprint, copies) fit on three devices of ``capacities``
    with copies of a version on distinct devices, sizes rounded to ``unit`` bytes."""
    first, second, third = (capacity // unit for capacity in capacities)
    reachable = np.zeros((first + 1, second + 1), dtype=bool)
    reachable[0, 0] = True
    rows = np.arange(first + 1)[:, None]
    columns = np.arange(second + 1)[None, :]
    total = 0

    def shifted(fill: np.ndarray, down: int, right: int) -> np.ndarray:
        out = np.zeros_like(fill)
        if down <= first and right <= second:
            out[down:, right:] = fill[: fill.shape[0] - down, : fill.shape[1] - right]
        return out

    for footprint, copies in groups:
        size = -(-footprint // unit) if round_up else footprint // unit
        if copies >= 3:
            moves = [(size, size)]
        elif copies == 2:
            moves = [(size, size), (size, 0), (0, size)]
        else:
            moves = [(size, 0), (0, size), (0, 0)]
        total += size * min(copies, 3)
        following = np.zeros_like(reachable)
        for down, right in moves:
            following |= shifted(reachable, down, right)
        following &= total - rows - columns <= third  # the third device holds the rest
        reachable = following
        if not reachable.any():
            return False
    return bool(reachable.any())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--mix", type=int, required=True, help="the mix's number within its seed (from 0)")
    parser.add_argument("--unit", type=int, default=10, help="the size step in MB (default 10)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    for _ in range(args.mix + 1):
        mix = make_mix(rng)
    plan = place(devices=mix.devices, placed=[], wanted=mix.wanted, quotas=mix.quotas, now=0.0)
    sizes = {w.replica: w.footprint_bytes for w in mix.wanted}
    versions: dict[tuple[str, str, int], list[int]] = {}
    for replica in plan.assignments:
        versions.setdefault(replica[:3], []).append(sizes[replica])
    groups = [(copies[0], len(copies)) for copies in versions.values()]
    used = len(set(plan.assignments.values()))
    bound = lower_bound([sizes[r] for r in plan.assignments], mix.devices, max(n for _, n in groups))
    resident = len(plan.assignments)
    print(f"seed {args.seed} mix {args.mix}: {resident} replicas resident, Berth uses {used} devices, bound {bound}")
    if bound != 3:
        print("this decides mixes whose bound is three devices only")
        return
    capacities = sorted((d.capacity_bytes - d.headroom_bytes for d in mix.devices), reverse=True)[:3]
    unit = args.unit * MB
    relaxed = fits_three(groups, capacities, unit=unit, round_up=False)
    restricted = fits_three(groups, capacities, unit=unit, round_up=True)
    print(
        f"on {', '.join(f'{c / 1e9:g} GB' for c in capacities)}: sizes rounded down fit: {relaxed}; rounded up "
        f"fit: {restricted} -> "
        + (
            "three devices cannot hold them"
            if not relaxed
            else "three devices can hold them"
            if restricted
            else f"undecided at {args.unit} MB steps"
        )
    )


if __name__ == "__main__":
    main()
