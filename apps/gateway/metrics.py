"""The gateway's Prometheus figures, per tenant / model / version.

They live in the process's default registry, which the control plane's ``/metrics``
serves (to staff or the metrics token, never to a tenant key).
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

# Log-spaced from 250 µs to 30 s: the same edges the monitoring rollups merge.
LATENCY_BUCKETS = (
    0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192, 16.384, 32.768,
)  # fmt: skip

REQUESTS = Counter(
    "berth_gateway_requests",
    "Inference requests through the gateway, by tenant, model, version and HTTP status.",
    ["tenant", "model", "version", "code"],
)
LATENCY = Histogram(
    "berth_gateway_request_duration_seconds",
    "Time from a request's arrival at the gateway to its answer.",
    ["tenant", "model", "version"],
    buckets=LATENCY_BUCKETS,
)
COLD_STARTS = Counter(
    "berth_gateway_cold_starts",
    "Cold starts the gateway asked for (shared by concurrent requests).",
    ["tenant", "model"],
)
RETRIES = Counter(
    "berth_gateway_retries",
    "Requests sent to a second replica after the first could not be reached.",
    ["tenant", "model"],
)


def observe(labels: tuple[str, str, str], status: int, seconds: float) -> None:
    """Counts one answered inference request."""
    REQUESTS.labels(*labels, str(status)).inc()
    LATENCY.labels(*labels).observe(seconds)
