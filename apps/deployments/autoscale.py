"""How many replicas each serving version of a deployment wants now (a pure function).

Two signals, one decision per version per reconcile pass:

- **Load**: the version's requests in flight and queued, summed over its replicas as their
  workers last reported, over ``target_inflight_per_replica`` and rounded up, kept within
  ``[max(min_replicas, 1), max_replicas]``. A higher count applies at once (within one
  pass); a lower one only once the higher count has not been needed for the stabilisation
  window, so a burst's replicas are not unloaded between two bursts.
- **Idleness**: with ``scale_to_zero_after_s`` set, no request for that long means zero
  replicas; a gateway's cold start (a request waiting) brings the deployment back.
  ``scale_to_zero_after_s == 0`` keeps at least one replica at all times.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ScaleInput:
    """What the decision reads of one serving version of a deployment."""

    min_replicas: int
    scale_to_zero_after_s: int
    last_request_at: float | None  # epoch seconds; None when never requested
    max_replicas: int = 1
    target_inflight_per_replica: int = 8
    inflight: float = 0.0  # in flight + queued over the version's replicas, as last reported
    current: int = 0  # replicas wanted after the last pass
    needed_at: float | None = None  # when ``current`` replicas were last needed


@dataclass(frozen=True)
class ScaleDecision:
    """Replicas wanted now, and when that many were last needed (kept for the next pass)."""

    replicas: int
    needed_at: float | None


def replicas_wanted(version: ScaleInput, *, now: float, stabilisation_s: float = 60.0) -> ScaleDecision:
    """The number of replicas the version wants now (see the module's docstring)."""
    if version.scale_to_zero_after_s > 0 and (
        version.last_request_at is None or now - version.last_request_at >= version.scale_to_zero_after_s
    ):
        return ScaleDecision(replicas=0, needed_at=None)
    floor = max(version.min_replicas, 1)
    cap = max(version.max_replicas, floor)
    by_load = math.ceil(version.inflight / max(version.target_inflight_per_replica, 1))
    recommended = min(max(by_load, floor), cap)
    if recommended >= version.current:
        return ScaleDecision(replicas=recommended, needed_at=now)
    if version.needed_at is not None and now - version.needed_at < stabilisation_s:
        # Still within the window after the higher count was needed: hold it (never above cap).
        return ScaleDecision(replicas=min(version.current, cap), needed_at=version.needed_at)
    return ScaleDecision(replicas=recommended, needed_at=now)
