"""Messages that cross between the planes, as frozen dataclasses.

Celery carries them as JSON; ``to_message`` / ``from_message`` are the only encoders, so
a malformed message fails in one place with a clear error instead of deep in a task.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

DeviceKind = Literal["cpu", "cuda"]
WorkerState = Literal["ready", "draining"]

HEARTBEAT_TASK = "berth.worker_heartbeat"


class MessageError(ValueError):
    """A message from the other plane does not have the expected shape."""


def _require(message: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in message:
        raise MessageError(f"message lacks the field {key!r}")
    value = message[key]
    if not isinstance(value, kind):
        raise MessageError(f"field {key!r} has type {type(value).__name__}")
    return value


@dataclass(frozen=True)
class DeviceState:
    """What a device reports about itself: identity and memory, measured now."""

    kind: DeviceKind
    index: int
    name: str
    uuid: str
    total_bytes: int
    used_bytes: int
    free_bytes: int
    utilisation_pct: float | None = None

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> DeviceState:
        """Decodes a device state sent as JSON; raises ``MessageError`` when malformed."""
        kind = _require(message, "kind", str)
        if kind not in ("cpu", "cuda"):
            raise MessageError(f"unknown device kind {kind!r}")
        utilisation = message.get("utilisation_pct")
        if utilisation is not None and not isinstance(utilisation, int | float):
            raise MessageError("field 'utilisation_pct' is not a number")
        return cls(
            kind=kind,
            index=_require(message, "index", int),
            name=_require(message, "name", str),
            uuid=_require(message, "uuid", str),
            total_bytes=_require(message, "total_bytes", int),
            used_bytes=_require(message, "used_bytes", int),
            free_bytes=_require(message, "free_bytes", int),
            utilisation_pct=None if utilisation is None else float(utilisation),
        )


@dataclass(frozen=True)
class WorkerHeartbeat:
    """A worker's periodic report: who it is, where to reach it, and its device."""

    worker_id: str
    host: str
    dataplane_url: str
    queue: str
    state: WorkerState
    device: DeviceState
    sent_at: float

    def to_message(self) -> dict[str, Any]:
        """Encodes the heartbeat as a JSON-safe dict for Celery."""
        return asdict(self)

    @classmethod
    def from_message(cls, message: Any) -> WorkerHeartbeat:
        """Decodes a heartbeat sent as JSON; raises ``MessageError`` when malformed."""
        if not isinstance(message, dict):
            raise MessageError("a heartbeat must be a JSON object")
        state = _require(message, "state", str)
        if state not in ("ready", "draining"):
            raise MessageError(f"unknown worker state {state!r}")
        return cls(
            worker_id=_require(message, "worker_id", str),
            host=_require(message, "host", str),
            dataplane_url=_require(message, "dataplane_url", str),
            queue=_require(message, "queue", str),
            state=state,
            device=DeviceState.from_message(_require(message, "device", dict)),
            sent_at=float(_require(message, "sent_at", (int, float))),
        )
