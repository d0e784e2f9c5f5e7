"""How many replicas of each serving version a deployment wants now (a pure function).

So far the decision is about idleness: a deployment with ``scale_to_zero_after_s`` set
drops to zero replicas once no request has reached it for that long, and comes back when
a gateway asks for a cold start (which records a request). Scaling on in-flight load
between ``min_replicas`` and ``max_replicas`` joins it here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScaleInput:
    """What the decision reads of one deployment."""

    min_replicas: int
    scale_to_zero_after_s: int
    last_request_at: float | None  # epoch seconds; None when never requested


def replicas_wanted(deployment: ScaleInput, *, now: float) -> int:
    """Replicas wanted per serving version.

    ``scale_to_zero_after_s == 0`` keeps at least one replica loaded at all times. Otherwise
    the deployment holds ``max(min_replicas, 1)`` while a request came within the window,
    and none after it.
    """
    floor = max(deployment.min_replicas, 1)
    if deployment.scale_to_zero_after_s <= 0:
        return floor
    last = deployment.last_request_at
    if last is None or now - last >= deployment.scale_to_zero_after_s:
        return 0
    return floor
