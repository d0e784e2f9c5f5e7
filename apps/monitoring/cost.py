"""Cost attribution: who pays for each microsecond of a device (pure; no database).

Two charges, both in whole device-microseconds so that they add up exactly:

- **Compute**: each batch's compute time is charged to the requests in it in equal shares
  (``share_equally``); every request of a batch belongs to one model version, so a model
  version's compute charge is the sum of its batches' compute times.
- **Reserved but idle**: over one heartbeat window, the device time no batch used is charged
  to the replicas hosted on it by footprint share, each replica's reserved bytes over the
  device's capacity (``attribute_window``). Capacity nobody reserves is not charged to
  anyone: it is the platform's unsold space, reported as ``unattributed_us``.

Money is the device time charged times the device kind's price per device-hour.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal

US_PER_HOUR = 3_600_000_000
NANOS = Decimal(1_000_000_000)  # money is stored in billionths of the currency unit


def apportion(total: int, weights: Sequence[int]) -> list[int]:
    """Splits ``total`` into whole parts proportional to ``weights`` that sum to exactly
    ``total`` (largest remainder; ties go to the earlier weight). All-zero weights split
    equally."""
    if total < 0 or any(w < 0 for w in weights):
        raise ValueError("total and weights must not be negative")
    if not weights:
        return []
    if not any(weights):
        weights = [1] * len(weights)
    whole = sum(weights)
    parts = [total * w // whole for w in weights]
    left = total - sum(parts)
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % whole), i))
    for i in by_remainder[:left]:
        parts[i] += 1
    return parts


def share_equally(total: int, parts: int) -> list[int]:
    """One batch's compute time charged to its ``parts`` requests in equal shares (the first
    ``total % parts`` requests carry one microsecond more), summing to exactly ``total``."""
    if parts <= 0:
        raise ValueError("a batch has at least one request")
    return apportion(total, [1] * parts)


@dataclass(frozen=True)
class ReplicaUse:
    """What one hosted replica did and held during a window."""

    key: Hashable
    reserved_bytes: int
    compute_us: int = 0


@dataclass(frozen=True)
class Charge:
    """A replica's share of a window's device time."""

    compute_us: int
    idle_us: int

    @property
    def total_us(self) -> int:
        return self.compute_us + self.idle_us


@dataclass(frozen=True)
class WindowCharges:
    """How one device's window was charged: per replica, plus what nobody was charged."""

    charges: dict[Hashable, Charge]
    idle_us: int
    unattributed_us: int

    @property
    def charged_us(self) -> int:
        """All device time charged to replicas (compute plus their idle shares)."""
        return sum(charge.total_us for charge in self.charges.values())


def attribute_window(*, window_us: int, capacity_bytes: int, uses: Sequence[ReplicaUse]) -> WindowCharges:
    """Charges one device's window of ``window_us`` to the replicas hosted on it.

    Compute is charged as measured. The idle rest of the window (never negative: batches
    that ran in parallel may add up to more than the window) is charged by footprint: the
    replicas together pay ``idle * reserved / capacity`` (all of it when they reserve the
    whole device or the capacity is unknown), split among them by reserved bytes.
    """
    if window_us < 0 or capacity_bytes < 0:
        raise ValueError("window and capacity must not be negative")
    compute = sum(use.compute_us for use in uses)
    idle = max(0, window_us - compute)
    reserved = sum(use.reserved_bytes for use in uses)
    if not uses or reserved == 0:
        idle_charged = 0
    elif capacity_bytes == 0 or reserved >= capacity_bytes:
        idle_charged = idle
    else:
        idle_charged = idle * reserved // capacity_bytes
    idle_shares = apportion(idle_charged, [use.reserved_bytes for use in uses]) if uses else []
    charges: dict[Hashable, Charge] = {}
    for use, idle_share in zip(uses, idle_shares, strict=True):
        before = charges.get(use.key, Charge(0, 0))
        charges[use.key] = Charge(before.compute_us + use.compute_us, before.idle_us + idle_share)
    return WindowCharges(charges=charges, idle_us=idle, unattributed_us=idle - idle_charged)


def cost_nanos(*, device_us: int, price_per_hour: Decimal) -> int:
    """The cost of ``device_us`` of device time at ``price_per_hour``, in billionths."""
    exact = Decimal(device_us) * price_per_hour * NANOS / US_PER_HOUR
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def money(nanos: int) -> str:
    """Billionths of the currency unit as a decimal amount with 9 places (a CPU-millisecond
    at 0.10 an hour is 0.000000028)."""
    return f"{(Decimal(nanos) / NANOS).quantize(Decimal('0.000000001')):f}"


def price_text(price: Decimal) -> str:
    """A price as people write it: at least two decimals, no trailing zeros beyond (4.25, 0.125)."""
    text = f"{price.normalize():f}"
    whole, _, fraction = text.partition(".")
    return f"{whole}.{fraction.ljust(2, '0')}"
