"""Messages that cross between the planes, as frozen dataclasses.

Celery carries them as JSON; ``to_message`` / ``from_message`` are the only encoders, so
a malformed message fails in one place with a clear error instead of deep in a task.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Literal

DeviceKind = Literal["cpu", "cuda"]
WorkerState = Literal["ready", "draining"]

HEARTBEAT_TASK = "berth.worker_heartbeat"
# Asked by a worker handing over after SIGTERM: how many of its replicas gateways still route to.
SERVING_TASK = "berth.worker_serving"
# What a worker id may be (BERTH_WORKER_ID): it names queues, URLs and pages.
WORKER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
LOAD_TASK = "berth.worker.load"
UNLOAD_TASK = "berth.worker.unload"
DRAIN_TASK = "berth.worker.drain"
STATUS_TASK = "berth.worker.status"

ModelFormat = Literal["onnx", "torchscript", "torch_export"]
HostedState = Literal["loading", "ready", "failed", "unloading"]


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
class ModelKey:
    """One hosted model version: tenant slug, model name, version number."""

    tenant: str
    model: str
    version: int

    @property
    def dataplane_name(self) -> str:
        """The model's name on the worker's v2 surface: ``<tenant>.<model>``.

        Tenant slugs and model names are DNS labels (no dots), so this is unambiguous.
        """
        return f"{self.tenant}.{self.model}"

    def __str__(self) -> str:
        return f"{self.tenant}/{self.model}/{self.version}"

    @classmethod
    def from_message(cls, message: Any) -> ModelKey:
        """Decodes a model key sent as JSON; raises ``MessageError`` when malformed."""
        if not isinstance(message, dict):
            raise MessageError("a model key must be a JSON object")
        return cls(
            tenant=_require(message, "tenant", str),
            model=_require(message, "model", str),
            version=_require(message, "version", int),
        )


@dataclass(frozen=True)
class BatchingConfig:
    """Triton's dynamic batcher knobs, one set per hosted model version.

    ``max_batch_size`` 0 means the model takes no batch dimension (no batching).
    ``max_queue_delay_us`` 0 sends whatever has queued as soon as an instance is free.
    ``max_queue_size`` 0 means unbounded. ``default_timeout_us`` 0 means no timeout;
    a request's own ``timeout`` parameter may only lower it.
    """

    max_batch_size: int = 8
    max_queue_delay_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 0
    default_timeout_us: int = 0
    instance_count: int = 1

    def __post_init__(self) -> None:
        if self.max_batch_size < 0 or self.max_queue_delay_us < 0 or self.max_queue_size < 0:
            raise MessageError("batching sizes and delays must not be negative")
        if self.default_timeout_us < 0:
            raise MessageError("default_timeout_us must not be negative")
        if self.instance_count < 1:
            raise MessageError("instance_count must be at least 1")
        for size in self.preferred_batch_sizes:
            if size < 1 or (self.max_batch_size and size > self.max_batch_size):
                raise MessageError(f"preferred batch size {size} is outside 1..max_batch_size")

    @classmethod
    def from_message(cls, message: Any) -> BatchingConfig:
        """Decodes a batching config sent as JSON; missing fields take defaults."""
        if not isinstance(message, dict):
            raise MessageError("a batching config must be a JSON object")
        fields: dict[str, Any] = {}
        for name in ("max_batch_size", "max_queue_delay_us", "max_queue_size", "default_timeout_us", "instance_count"):
            if name in message:
                fields[name] = _require(message, name, int)
        if "preferred_batch_sizes" in message:
            sizes = _require(message, "preferred_batch_sizes", list)
            if not all(isinstance(size, int) for size in sizes):
                raise MessageError("preferred_batch_sizes must be whole numbers")
            fields["preferred_batch_sizes"] = tuple(sorted(set(sizes)))
        return cls(**fields)


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: its name, Open Inference Protocol datatype and shape (-1 = any)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @classmethod
    def from_message(cls, message: Any) -> TensorSpec:
        """Decodes a tensor spec sent as JSON."""
        if not isinstance(message, dict):
            raise MessageError("a tensor spec must be a JSON object")
        shape = _require(message, "shape", list)
        if not all(isinstance(dim, int) and dim >= -1 for dim in shape):
            raise MessageError("a tensor shape holds whole numbers, -1 for a variable dimension")
        return cls(name=_require(message, "name", str), datatype=_require(message, "datatype", str), shape=tuple(shape))


@dataclass(frozen=True)
class LoadCommand:
    """Load one model version: where its artifact is, how to check it, how to serve it.

    ``inputs`` (and ``outputs``) are required for TorchScript, whose files carry no
    signature; for ONNX and torch.export the artifact's own signature is used.
    """

    key: ModelKey
    artifact_uri: str
    sha256: str
    format: ModelFormat
    batching: BatchingConfig
    reservation_bytes: int
    allow_evict: bool = False
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()

    def to_message(self) -> dict[str, Any]:
        """Encodes the command as a JSON-safe dict for Celery."""
        return asdict(self)

    @classmethod
    def from_message(cls, message: Any) -> LoadCommand:
        """Decodes a load command; raises ``MessageError`` when malformed."""
        if not isinstance(message, dict):
            raise MessageError("a load command must be a JSON object")
        model_format = _require(message, "format", str)
        if model_format not in ("onnx", "torchscript", "torch_export"):
            raise MessageError(f"unknown model format {model_format!r}")
        sha256 = _require(message, "sha256", str)
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise MessageError("sha256 must be 64 lowercase hex digits")
        reservation = _require(message, "reservation_bytes", int)
        if reservation < 0:
            raise MessageError("reservation_bytes must not be negative")
        return cls(
            key=ModelKey.from_message(_require(message, "key", dict)),
            artifact_uri=_require(message, "artifact_uri", str),
            sha256=sha256,
            format=model_format,
            batching=BatchingConfig.from_message(message.get("batching") or {}),
            reservation_bytes=reservation,
            allow_evict=bool(message.get("allow_evict", False)),
            inputs=tuple(TensorSpec.from_message(spec) for spec in message.get("inputs") or ()),
            outputs=tuple(TensorSpec.from_message(spec) for spec in message.get("outputs") or ()),
        )


@dataclass(frozen=True)
class HostedModel:
    """What a worker reports about one model it hosts, in its heartbeat."""

    key: ModelKey
    state: HostedState
    reserved_bytes: int
    measured_bytes: int
    reason: str = ""
    inflight: int = 0
    queue_depth: int = 0
    requests: int = 0
    errors: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    last_used_at: float = 0.0
    # What its batches did since the previous heartbeat: {"batches", "batch_sizes": {size: n},
    # "queue": histogram, "compute": histogram, "compute_s", "compute_us", "requests"} (histograms
    # in inference_workers.histogram buckets; requests: those answered by successful batches).
    window: dict[str, Any] | None = None

    @classmethod
    def from_message(cls, message: Any) -> HostedModel:
        """Decodes a hosted-model report."""
        if not isinstance(message, dict):
            raise MessageError("a hosted model must be a JSON object")
        state = _require(message, "state", str)
        if state not in ("loading", "ready", "failed", "unloading"):
            raise MessageError(f"unknown hosted state {state!r}")
        return cls(
            key=ModelKey.from_message(_require(message, "key", dict)),
            state=state,
            reserved_bytes=_require(message, "reserved_bytes", int),
            measured_bytes=_require(message, "measured_bytes", int),
            reason=str(message.get("reason", "")),
            inflight=int(message.get("inflight", 0)),
            queue_depth=int(message.get("queue_depth", 0)),
            requests=int(message.get("requests", 0)),
            errors=int(message.get("errors", 0)),
            p50_ms=float(message.get("p50_ms", 0.0)),
            p99_ms=float(message.get("p99_ms", 0.0)),
            last_used_at=float(message.get("last_used_at", 0.0)),
            window=_window(message.get("window")),
        )


def _window(raw: Any) -> dict[str, Any] | None:
    """A hosted model's batch window, checked: counts are whole numbers, keys are numbers;
    with its per-second parts under ``seconds`` when the worker sends them."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise MessageError("a hosted model's window must be a JSON object")
    window = _window_figures(raw)
    parts = raw.get("seconds")
    if parts is not None:
        if not isinstance(parts, list) or len(parts) > 600 or not all(isinstance(p, dict) for p in parts):
            raise MessageError("a window's seconds must be a list of at most 600 JSON objects")
        try:
            window["seconds"] = [{"second": int(part["second"]), **_window_figures(part)} for part in parts]
        except (KeyError, TypeError, ValueError) as exc:
            raise MessageError(f"a window's seconds are malformed: {exc}") from None
    return window


def _window_figures(raw: dict[str, Any]) -> dict[str, Any]:
    try:
        return {
            "batches": int(raw.get("batches", 0)),
            "batch_sizes": {str(int(k)): int(v) for k, v in dict(raw.get("batch_sizes", {})).items()},
            "queue": {str(int(k)): int(v) for k, v in dict(raw.get("queue", {})).items()},
            "compute": {str(int(k)): int(v) for k, v in dict(raw.get("compute", {})).items()},
            "compute_s": float(raw.get("compute_s", 0.0)),
            "compute_us": max(0, int(raw.get("compute_us", round(float(raw.get("compute_s", 0.0)) * 1_000_000)))),
            "requests": max(0, int(raw.get("requests", 0))),
        }
    except (TypeError, ValueError) as exc:
        raise MessageError(f"a hosted model's window is malformed: {exc}") from None


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
    models: tuple[HostedModel, ...] = ()

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
        worker_id = _require(message, "worker_id", str)
        if not WORKER_ID.fullmatch(worker_id):
            raise MessageError(f"worker_id {worker_id[:40]!r} may use letters, digits, '.', '_' and '-' (at most 128)")
        return cls(
            worker_id=worker_id,
            host=_require(message, "host", str),
            dataplane_url=_require(message, "dataplane_url", str),
            queue=_require(message, "queue", str),
            state=state,
            device=DeviceState.from_message(_require(message, "device", dict)),
            sent_at=float(_require(message, "sent_at", (int, float))),
            models=tuple(HostedModel.from_message(model) for model in message.get("models") or ()),
        )
