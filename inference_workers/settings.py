"""Typed worker settings, read once from ``BERTH_WORKER_*`` environment variables.

Command-line flags of ``python -m inference_workers`` override the matching variables.
Every error names the variable at fault and what a valid value looks like.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from inference_workers.broker import BrokerConfig, broker_config
from inference_workers.errors import SettingsError
from inference_workers.tokens import worker_token
from inference_workers.types import WORKER_ID

REPO_ROOT = Path(__file__).resolve().parent.parent

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "B": 1,
    "K": 1000,
    "KB": 1000,
    "M": 1000**2,
    "MB": 1000**2,
    "G": 1000**3,
    "GB": 1000**3,
    "T": 1000**4,
    "TB": 1000**4,
    "KI": 1024,
    "KIB": 1024,
    "MI": 1024**2,
    "MIB": 1024**2,
    "GI": 1024**3,
    "GIB": 1024**3,
    "TI": 1024**4,
    "TIB": 1024**4,
}
_DEVICE = re.compile(r"^(cpu|cuda:\d+)$")


def parse_size(text: str, *, variable: str) -> int:
    """Parses a byte size such as ``4GiB``, ``512MiB``, ``2G`` or ``1048576``.

    Args:
        text: The value to parse.
        variable: The variable or flag it came from, named in the error.

    Returns:
        The size in bytes.

    Raises:
        SettingsError: When the text is not a positive size.
    """
    match = _SIZE.match(text)
    if not match:
        raise SettingsError(f"{variable}: {text!r} is not a size; write it like 4GiB, 512MiB or 1073741824")
    number, unit = match.groups()
    size = int(float(number) * _UNITS[(unit or "").upper()])
    if size <= 0:
        raise SettingsError(f"{variable}: the size must be greater than zero, got {text!r}")
    return size


def _int(
    environ: Mapping[str, str], variable: str, default: int, *, minimum: int = 0, maximum: int | None = None
) -> int:
    raw = environ.get(variable, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{variable}: {raw!r} is not a whole number") from None
    if value < minimum:
        raise SettingsError(f"{variable}: must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise SettingsError(f"{variable}: must be at most {maximum}, got {value}")
    return value


def _bool(environ: Mapping[str, str], variable: str, default: bool) -> bool:
    text = environ.get(variable, "").strip().lower()
    if not text:
        return default
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{variable}: {text!r} is not a yes/no value; use 1 or 0")


def _float(environ: Mapping[str, str], variable: str, default: float, *, minimum: float) -> float:
    raw = environ.get(variable, "")
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{variable}: {raw!r} is not a number") from None
    if value < minimum:
        raise SettingsError(f"{variable}: must be at least {minimum}, got {value}")
    return value


def _size(environ: Mapping[str, str], variable: str, default: int) -> int:
    raw = environ.get(variable, "")
    if raw == "":
        return default
    if raw.strip() == "0":
        return 0
    return parse_size(raw, variable=variable)


@dataclass(frozen=True)
class WorkerSettings:
    """The inference worker's whole configuration."""

    worker_id: str
    device: str
    memory_budget_bytes: int
    bind_host: str
    port: int
    advertise_host: str
    heartbeat_interval_s: float
    control_queue: str
    data_dir: Path
    broker: BrokerConfig
    log_level: str = "INFO"
    token: str = ""
    headroom_bytes: int = 0
    max_body_bytes: int = 64 * 1024**2
    drain_seconds: float = 30.0
    handover_seconds: float = 20.0
    intra_op_threads: int = 1
    inter_op_threads: int = 0
    spin_wait: bool = False
    gpu_memory_budget_bytes: int = 0
    max_artifact_bytes: int = 16 * 1024**3
    access_log: bool = False

    @property
    def queue(self) -> str:
        """The Celery queue this worker consumes its commands from."""
        return f"worker.{self.worker_id}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> WorkerSettings:
        """Reads the settings from an environment mapping (``os.environ`` in production).

        Variables: ``BERTH_WORKER_ID`` (default ``<hostname>-<device>``),
        ``BERTH_WORKER_DEVICE`` (``cpu`` or ``cuda:N``, default ``cpu``),
        ``BERTH_WORKER_MEMORY_BUDGET`` (CPU budget, default ``4GiB``),
        ``BERTH_WORKER_GPU_MEMORY_BUDGET`` (this worker's share of its GPU, default all of it),
        ``BERTH_WORKER_HOST`` (bind address, default ``127.0.0.1``),
        ``BERTH_WORKER_PORT`` (data-plane port, ``0`` picks a free one),
        ``BERTH_WORKER_ADVERTISE_HOST`` (host put in the data-plane URL),
        ``BERTH_WORKER_HEARTBEAT_S`` (default 2), ``BERTH_WORKER_CONTROL_QUEUE``
        (default ``BERTH_CONTROL_QUEUE``, else ``control``), ``BERTH_WORKER_LOG_LEVEL`` (default
        ``BERTH_LOG_LEVEL``, else ``INFO``), ``BERTH_WORKER_DATA_DIR`` (default ``BERTH_DATA_DIR``),
        ``BERTH_WORKER_BROKER_URL`` (default ``CELERY_BROKER_URL``, else embedded),
        ``BERTH_WORKER_TOKEN`` (the gateway's shared secret; default generated into the
        data dir), ``BERTH_WORKER_HEADROOM`` (memory never reserved, default 0),
        ``BERTH_WORKER_MAX_BODY`` (default 64MiB), ``BERTH_WORKER_DRAIN_S`` (default 30),
        ``BERTH_WORKER_HANDOVER_S`` (after SIGTERM, how long the worker keeps serving while the
        control plane moves its replicas, default 20; 0 drains at once),
        ``BERTH_WORKER_THREADS`` (intra-op threads per model execution, default 1: a batch runs
        on one core and parallelism comes from ``instance_count`` and co-hosted models, which
        costs the least CPU per request; 0 = the runtime's choice, every core),
        ``BERTH_WORKER_INTER_OP_THREADS`` (threads running independent graph branches at once,
        0 = the runtime's choice), ``BERTH_WORKER_SPIN_WAIT`` (``1``: idle runtime threads
        spin-wait for the next run, burning cores other work on the host needs; default ``0``),
        ``BERTH_WORKER_MAX_ARTIFACT`` (default 16GiB), ``BERTH_WORKER_ACCESS_LOG`` (``1``: one
        log line per answered request with its status and the gateway's X-Request-ID, written
        before the answer goes out; default ``0``).

        Raises:
            SettingsError: Naming the variable whose value is wrong.
        """
        device = environ.get("BERTH_WORKER_DEVICE", "") or "cpu"
        if not _DEVICE.match(device):
            raise SettingsError(
                f"BERTH_WORKER_DEVICE: {device!r} is not a device; use cpu or cuda:N (cuda:0, cuda:1, …)"
            )
        worker_id = environ.get("BERTH_WORKER_ID", "") or f"{socket.gethostname()}-{device.replace(':', '')}"
        if not WORKER_ID.fullmatch(worker_id):
            raise SettingsError(
                f"BERTH_WORKER_ID: {worker_id!r} may use letters, digits, '.', '_' and '-' (at most 128)"
            )
        budget_text = environ.get("BERTH_WORKER_MEMORY_BUDGET", "") or "4GiB"
        bind_host = environ.get("BERTH_WORKER_HOST", "") or "127.0.0.1"
        advertise_host = environ.get("BERTH_WORKER_ADVERTISE_HOST", "") or (
            bind_host if bind_host not in ("0.0.0.0", "::") else socket.gethostname()
        )
        data_dir_text = environ.get("BERTH_WORKER_DATA_DIR", "") or environ.get("BERTH_DATA_DIR", "")
        data_dir = Path(data_dir_text).resolve() if data_dir_text else REPO_ROOT / "var"
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SettingsError(f"BERTH_WORKER_DATA_DIR: cannot create {data_dir}: {exc.strerror}") from None
        broker_url = environ.get("BERTH_WORKER_BROKER_URL", "") or environ.get("CELERY_BROKER_URL", "")
        return cls(
            worker_id=worker_id,
            device=device,
            memory_budget_bytes=parse_size(budget_text, variable="BERTH_WORKER_MEMORY_BUDGET"),
            gpu_memory_budget_bytes=_size(environ, "BERTH_WORKER_GPU_MEMORY_BUDGET", 0),
            bind_host=bind_host,
            port=_int(environ, "BERTH_WORKER_PORT", 0, maximum=65535),
            advertise_host=advertise_host,
            heartbeat_interval_s=_float(environ, "BERTH_WORKER_HEARTBEAT_S", 2.0, minimum=0.1),
            control_queue=environ.get("BERTH_WORKER_CONTROL_QUEUE", "")
            or environ.get("BERTH_CONTROL_QUEUE", "")
            or "control",
            log_level=(
                environ.get("BERTH_WORKER_LOG_LEVEL", "") or environ.get("BERTH_LOG_LEVEL", "") or "INFO"
            ).upper(),
            token=worker_token(configured=environ.get("BERTH_WORKER_TOKEN", ""), data_dir=data_dir),
            headroom_bytes=_size(environ, "BERTH_WORKER_HEADROOM", 0),
            max_body_bytes=_size(environ, "BERTH_WORKER_MAX_BODY", 64 * 1024**2),
            drain_seconds=_float(environ, "BERTH_WORKER_DRAIN_S", 30.0, minimum=0.0),
            handover_seconds=_float(environ, "BERTH_WORKER_HANDOVER_S", 20.0, minimum=0.0),
            intra_op_threads=_int(environ, "BERTH_WORKER_THREADS", 1),
            inter_op_threads=_int(environ, "BERTH_WORKER_INTER_OP_THREADS", 0),
            spin_wait=_bool(environ, "BERTH_WORKER_SPIN_WAIT", False),
            max_artifact_bytes=_size(environ, "BERTH_WORKER_MAX_ARTIFACT", 16 * 1024**3),
            access_log=_bool(environ, "BERTH_WORKER_ACCESS_LOG", False),
            data_dir=data_dir,
            broker=broker_config(
                url=broker_url,
                data_dir=data_dir,
                result_backend=environ.get("CELERY_RESULT_BACKEND", ""),
            ),
        )
