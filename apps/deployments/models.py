"""Workers (one per device) as the control plane knows them from their heartbeats."""

from __future__ import annotations

from django.db import models


class Worker(models.Model):
    """An inference worker process serving one device, registered by its heartbeats."""

    class State(models.TextChoices):
        READY = "ready", "ready"
        DRAINING = "draining", "draining"
        DEAD = "dead", "dead"

    class DeviceKind(models.TextChoices):
        CPU = "cpu", "CPU"
        CUDA = "cuda", "CUDA GPU"

    worker_id = models.CharField(max_length=128, unique=True)
    host = models.CharField(max_length=255)
    dataplane_url = models.CharField(max_length=300)
    queue = models.CharField(max_length=200)
    state = models.CharField(max_length=16, choices=State.choices, default=State.READY)
    device_kind = models.CharField(max_length=8, choices=DeviceKind.choices)
    device_index = models.PositiveIntegerField(default=0)
    device_name = models.CharField(max_length=255, blank=True)
    device_uuid = models.CharField(max_length=255, blank=True)
    capacity_bytes = models.BigIntegerField(default=0)
    used_bytes = models.BigIntegerField(default=0)
    utilisation_pct = models.FloatField(null=True, blank=True)
    reserved_bytes = models.BigIntegerField(default=0, help_text="what hosted models reserve, as last reported")
    hosted = models.JSONField(default=list, blank=True, help_text="hosted models as last reported")
    drain_requested_at = models.DateTimeField(
        null=True, blank=True, help_text="staff asked to drain it: no new replicas, its replicas move away"
    )
    first_seen_at = models.DateTimeField(auto_now_add=True)
    last_heartbeat_at = models.DateTimeField()

    class Meta:
        ordering = ["worker_id"]

    def __str__(self) -> str:
        return f"{self.worker_id} ({self.device_kind}, {self.state})"

    @property
    def allocatable_bytes(self) -> int:
        """What placement may reserve here: the capacity less the headroom kept free on every
        device of its kind (``BERTH_DEVICE_HEADROOM_MB_CPU`` / ``_CUDA``)."""
        from django.conf import settings

        headroom = settings.BERTH_DEVICE_HEADROOM_MB.get(self.device_kind, 0) * 1024 * 1024
        return max(self.capacity_bytes - headroom, 0)


class Deployment(models.Model):
    """How a tenant's model is served: traffic split over its versions, batching, scaling.

    ``traffic`` maps version numbers (as strings) to integer weights summing to 100.
    """

    class DeviceKind(models.TextChoices):
        CPU = "cpu", "CPU"
        CUDA = "cuda", "CUDA GPU"

    model = models.OneToOneField("registry.Model", on_delete=models.CASCADE, related_name="deployment")
    traffic = models.JSONField(default=dict)
    batching = models.JSONField(default=dict)
    min_replicas = models.PositiveIntegerField(default=1)
    max_replicas = models.PositiveIntegerField(default=1)
    target_inflight_per_replica = models.PositiveIntegerField(default=8)
    scale_to_zero_after_s = models.PositiveIntegerField(default=0, help_text="0 keeps replicas loaded")
    device_kind = models.CharField(max_length=8, choices=DeviceKind.choices, default=DeviceKind.CPU)
    last_request_at = models.DateTimeField(
        null=True, blank=True, help_text="when a gateway last served or asked to cold-start it (scale to zero)"
    )
    autoscale = models.JSONField(
        default=dict, blank=True, help_text="per version: replicas wanted after the last pass, and when last needed"
    )
    stable_version = models.PositiveIntegerField(
        null=True, blank=True, help_text="the version a canary is measured against and rolled back to"
    )
    prediction_log = models.JSONField(
        default=dict,
        blank=True,
        help_text="opt-in prediction logging: sample_rate (0-1), retention_days, task, output",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"deployment of {self.model}"


class Replica(models.Model):
    """One loaded (or wanted) copy of a deployed version on a worker."""

    class State(models.TextChoices):
        PENDING = "pending", "pending"
        LOADING = "loading", "loading"
        READY = "ready", "ready"
        FAILED = "failed", "failed"
        UNLOADING = "unloading", "unloading"

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="replicas")
    version = models.ForeignKey("registry.ModelVersion", on_delete=models.PROTECT, related_name="replicas")
    index = models.PositiveIntegerField(default=0)
    worker = models.ForeignKey(Worker, null=True, blank=True, on_delete=models.SET_NULL, related_name="replicas")
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    reason = models.TextField(blank=True, default="")
    reserved_bytes = models.BigIntegerField(default=0)
    last_used_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0, help_text="failed loads so far")
    failed_on = models.JSONField(default=list, blank=True, help_text="workers where a load failed")
    retry_at = models.DateTimeField(
        null=True, blank=True, help_text="pending: no new load before this (backoff); unloading: unloaded at this time"
    )
    loading_since = models.DateTimeField(null=True, blank=True, help_text="when its load command was sent")
    retiring = models.BooleanField(
        default=False, help_text="on a draining worker: serves until its replacement is ready, then unloads"
    )
    suspect_at = models.DateTimeField(null=True, blank=True, help_text="when a gateway last failed to connect to it")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["deployment", "version", "index"],
                condition=models.Q(retiring=False),
                name="one_replica_per_index",
            )
        ]
        ordering = ["deployment_id", "version_id", "index"]

    def __str__(self) -> str:
        return f"{self.version}#{self.index} ({self.state})"
