"""Models and their versions: artifacts, validation status, signature, measured footprint."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from apps.tenants.models import DNS_LABEL, Tenant


class Model(models.Model):
    """A tenant's named model; its versions carry the artifacts."""

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="models")
    name = models.CharField(max_length=63, validators=[DNS_LABEL])
    description = models.TextField(blank=True, default="")
    labels = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="model_name_unique_per_tenant")]
        ordering = ["tenant_id", "name"]

    def __str__(self) -> str:
        return f"{self.tenant_id}/{self.name}"


class ModelVersion(models.Model):
    """One uploaded artifact of a model, numbered 1, 2, 3… per model."""

    class Format(models.TextChoices):
        ONNX = "onnx", "ONNX"
        TORCHSCRIPT = "torchscript", "TorchScript"
        TORCH_EXPORT = "torch_export", "torch.export"

    class Status(models.TextChoices):
        UPLOADED = "uploaded", "uploaded"
        VALIDATING = "validating", "validating"
        READY = "ready", "ready"
        FAILED = "failed", "failed"

    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    format = models.CharField(max_length=16, choices=Format.choices, blank=True, default="")
    artifact = models.CharField(max_length=500, help_text="storage name of the artifact file")
    sha256 = models.CharField(max_length=64)
    size_bytes = models.BigIntegerField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.UPLOADED)
    failure_reason = models.TextField(blank=True, default="")
    platform = models.CharField(max_length=32, blank=True, default="")
    inputs = models.JSONField(default=list, blank=True)
    outputs = models.JSONField(default=list, blank=True)
    declared_inputs = models.JSONField(default=list, blank=True)
    declared_outputs = models.JSONField(default=list, blank=True)
    batched = models.BooleanField(default=False)
    max_batch_size = models.PositiveIntegerField(default=0)
    footprint_bytes = models.BigIntegerField(null=True, blank=True)
    footprint_device = models.CharField(max_length=8, blank=True, default="")
    load_seconds = models.FloatField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    validated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["model", "number"], name="version_number_unique_per_model")]
        ordering = ["model_id", "number"]

    def __str__(self) -> str:
        return f"{self.model}/{self.number}"
