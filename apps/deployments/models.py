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
    first_seen_at = models.DateTimeField(auto_now_add=True)
    last_heartbeat_at = models.DateTimeField()

    class Meta:
        ordering = ["worker_id"]

    def __str__(self) -> str:
        return f"{self.worker_id} ({self.device_kind}, {self.state})"
