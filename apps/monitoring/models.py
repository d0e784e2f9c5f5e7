"""Metric rollups: per (tenant, model, version) figures per second, then per minute."""

from __future__ import annotations

from django.db import models


class MetricRollup(models.Model):
    """What one process saw of one model version in one interval.

    Gateways write requests, statuses and latency; workers write their batches (sizes, queue
    and compute time, device seconds), with zero requests so nothing is counted twice. Several
    processes may write rows for the same interval and key; readers sum them (counts add,
    histograms merge), so no write ever needs a lock.
    """

    class Resolution(models.TextChoices):
        SECOND = "1s", "1 second"
        MINUTE = "1m", "1 minute"

    resolution = models.CharField(max_length=4, choices=Resolution.choices)
    start = models.DateTimeField(help_text="start of the interval")
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    model_name = models.CharField(max_length=63)
    version = models.PositiveIntegerField()
    source = models.CharField(max_length=32, default="gateway")
    requests = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0, help_text="answers with status >= 400")
    statuses = models.JSONField(default=dict, help_text="status code → count")
    latency = models.JSONField(default=dict, help_text="log-bucket histogram (inference_workers.histogram)")
    inflight_max = models.PositiveIntegerField(default=0)
    # From workers' heartbeats (source "worker:<id>"): what the batches did.
    batches = models.PositiveIntegerField(default=0)
    batch_sizes = models.JSONField(default=dict, help_text="batch size → batches")
    queue = models.JSONField(default=dict, help_text="queue-time histogram per request")
    compute = models.JSONField(default=dict, help_text="compute-time histogram per batch")
    compute_s = models.FloatField(default=0.0, help_text="device time the batches took")

    class Meta:
        indexes = [
            models.Index(fields=["resolution", "tenant", "start"], name="rollup_tenant_time"),
            models.Index(fields=["resolution", "start"], name="rollup_time"),
        ]
        ordering = ["start", "id"]

    def __str__(self) -> str:
        return f"{self.resolution} {self.start:%H:%M:%S} {self.model_name}@{self.version}"
