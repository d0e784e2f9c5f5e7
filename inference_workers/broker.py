"""How a Celery broker URL from the environment becomes a connection configuration.

Both planes call this one function, so the control plane and every inference worker on
a machine agree on the embedded broker (kombu's filesystem transport, made atomic in
``fs_broker``, under the data directory) without either side repeating the other's defaults.
It also puts Berth's Redis transport (``redis_broker``: a consumer survives losing the
broker in the middle of a command) behind ``redis://`` in the process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference_workers import fs_broker, redis_broker

# The filesystem transport polls its folder; kombu's default of 1 s makes every control
# command take about a second. 20 ms gives a ~20 ms round trip for a negligible CPU cost.
EMBEDDED_POLLING_INTERVAL_S = 0.02


@dataclass(frozen=True)
class BrokerConfig:
    """Everything Celery needs to reach the broker and store results."""

    url: str
    transport_options: dict[str, Any] = field(default_factory=dict)
    result_backend: str = ""

    @property
    def embedded(self) -> bool:
        """Whether this is the serverless filesystem broker of a single machine."""
        return self.url.startswith(("berthfs://", "filesystem://"))


def broker_config(*, url: str, data_dir: Path, result_backend: str = "") -> BrokerConfig:
    """Builds the broker configuration for ``url``, or the embedded broker when it is empty.

    Args:
        url: The ``CELERY_BROKER_URL`` value; empty selects the embedded broker.
        data_dir: ``BERTH_DATA_DIR``; the embedded broker keeps its messages under it.
        result_backend: An explicit result backend URL; empty derives one from the broker.

    Returns:
        The broker configuration, with the embedded broker's folders created.
    """
    fs_broker.register()
    redis_broker.register()
    if not url or url.startswith(("berthfs://", "filesystem://")):
        folder = data_dir / "broker"
        queue_folder = folder / "queue"
        processed_folder = folder / "processed"
        control_folder = folder / "control"
        results_folder = data_dir / "celery-results"
        for path in (queue_folder, processed_folder, control_folder, results_folder):
            path.mkdir(parents=True, exist_ok=True)
        return BrokerConfig(
            url="berthfs://",
            transport_options={
                "data_folder_in": str(queue_folder),
                "data_folder_out": str(queue_folder),
                "processed_folder": str(processed_folder),
                # Exchange tables; kombu's default is ./control relative to the cwd.
                "control_folder": str(control_folder),
                "store_processed": False,
                "polling_interval": EMBEDDED_POLLING_INTERVAL_S,
            },
            result_backend=result_backend or f"file://{results_folder}",
        )
    if not result_backend:
        result_backend = url if url.startswith(("redis://", "rediss://")) else "rpc://"
    return BrokerConfig(url=url, transport_options={}, result_backend=result_backend)
