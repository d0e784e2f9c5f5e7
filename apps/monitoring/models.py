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
    # Cost (apps.monitoring.cost): device time charged to this model version, and its price.
    predictions = models.PositiveIntegerField(default=0, help_text="requests answered by successful batches")
    compute_us = models.BigIntegerField(default=0, help_text="device time charged for its batches")
    idle_us = models.BigIntegerField(default=0, help_text="idle device time charged by footprint share")
    cost_nanos = models.BigIntegerField(default=0, help_text="cost of compute_us + idle_us, in billionths")

    class Meta:
        indexes = [
            models.Index(fields=["resolution", "tenant", "start"], name="rollup_tenant_time"),
            models.Index(fields=["resolution", "start"], name="rollup_time"),
        ]
        ordering = ["start", "id"]

    def __str__(self) -> str:
        return f"{self.resolution} {self.start:%H:%M:%S} {self.model_name}@{self.version}"


class DevicePrice(models.Model):
    """What one device-hour of a kind costs (staff edit it; settings give the default)."""

    class DeviceKind(models.TextChoices):
        CPU = "cpu", "CPU"
        CUDA = "cuda", "CUDA GPU"

    device_kind = models.CharField(max_length=8, choices=DeviceKind.choices, unique=True)
    price_per_hour = models.DecimalField(max_digits=12, decimal_places=6)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["device_kind"]

    def __str__(self) -> str:
        return f"{self.device_kind}: {self.price_per_hour}/h"


class DeviceSample(models.Model):
    """One device's memory and utilisation at one moment (per heartbeat for an hour, then
    one per minute for 30 days): the per-device series of the fleet dashboards."""

    class Resolution(models.TextChoices):
        HEARTBEAT = "hb", "per heartbeat"
        MINUTE = "1m", "1 minute"

    resolution = models.CharField(max_length=4, choices=Resolution.choices)
    at = models.DateTimeField()
    worker_id = models.CharField(max_length=128)
    device_kind = models.CharField(max_length=8)
    device_index = models.PositiveIntegerField(default=0)
    capacity_bytes = models.BigIntegerField(default=0)
    used_bytes = models.BigIntegerField(default=0, help_text="measured: NVML on a GPU, process RSS on a CPU")
    reserved_bytes = models.BigIntegerField(default=0)
    utilisation_pct = models.FloatField(null=True, blank=True)
    replicas = models.JSONField(default=dict, help_text="tenant/model@version → reserved bytes")
    idle_us = models.BigIntegerField(default=0, help_text="device time no batch used")
    unattributed_us = models.BigIntegerField(default=0, help_text="idle time of unreserved capacity")

    class Meta:
        indexes = [models.Index(fields=["resolution", "at"], name="device_sample_time")]
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.resolution} {self.at:%H:%M:%S} {self.worker_id}"


class PredictionLog(models.Model):
    """One sampled inference: what went in and what came out (opt-in per deployment, with a
    sampling rate and a retention), so ground truth sent later can be joined to it."""

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    model_name = models.CharField(max_length=63)
    version = models.PositiveIntegerField()
    request_id = models.CharField(max_length=128, help_text="the gateway's X-Request-ID")
    inference_id = models.CharField(max_length=128, blank=True, help_text='the v2 body\'s "id", if any')
    created_at = models.DateTimeField()
    inputs = models.JSONField(default=list)
    outputs = models.JSONField(default=list)
    expires_at = models.DateTimeField()

    class Meta:
        indexes = [
            models.Index(fields=["tenant", "model_name", "request_id"], name="prediction_by_request"),
            models.Index(fields=["tenant", "model_name", "inference_id"], name="prediction_by_inference_id"),
            models.Index(fields=["expires_at"], name="prediction_expiry"),
        ]
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.model_name}@{self.version} {self.request_id}"


class Feedback(models.Model):
    """Ground truth for one logged prediction, scored when it arrives. It keeps its own copy
    of what was predicted, so accuracy history outlives the prediction log's retention."""

    class Task(models.TextChoices):
        CLASSIFICATION = "classification", "classification"
        REGRESSION = "regression", "regression"

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    prediction = models.OneToOneField(
        PredictionLog, null=True, blank=True, on_delete=models.SET_NULL, related_name="feedback"
    )
    model_name = models.CharField(max_length=63)
    version = models.PositiveIntegerField()
    request_id = models.CharField(max_length=128)
    task = models.CharField(max_length=16, choices=Task.choices)
    predicted = models.JSONField(help_text="per row: the class or value the model gave")
    ground_truth = models.JSONField(help_text="per row: the true class or value")
    rows = models.PositiveIntegerField()
    correct = models.PositiveIntegerField(null=True, help_text="classification: rows predicted right")
    abs_error_sum = models.FloatField(null=True, help_text="regression: sum of |predicted - ground truth|")
    predicted_at = models.DateTimeField()
    received_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "model_name", "predicted_at"], name="feedback_by_time")]
        ordering = ["predicted_at", "id"]

    def __str__(self) -> str:
        return f"{self.model_name}@{self.version} {self.request_id}: {self.predicted} vs {self.ground_truth}"
