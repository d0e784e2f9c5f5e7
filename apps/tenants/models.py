"""Tenants and who may act in them: memberships, API keys, quotas, and the audit trail."""

from __future__ import annotations

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

DNS_LABEL = RegexValidator(
    r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
    "use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit",
)


class Tenant(models.Model):
    """A customer of the platform; every model, key and deployment belongs to one."""

    slug = models.CharField(max_length=63, unique=True, validators=[DNS_LABEL])
    name = models.CharField(max_length=200)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class Role(models.TextChoices):
    """A member's role in a tenant, from most to least powerful."""

    OWNER = "owner", "owner"
    ADMIN = "admin", "admin"
    MEMBER = "member", "member"
    VIEWER = "viewer", "viewer"


class Membership(models.Model):
    """A user's role in one tenant."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "tenant"], name="one_membership_per_user_and_tenant")]
        ordering = ["tenant_id", "user_id"]

    def __str__(self) -> str:
        return f"{self.user_id}@{self.tenant_id}:{self.role}"


class Scope(models.TextChoices):
    """What an API key may do within its tenant."""

    INFER = "infer", "infer"
    READ = "read", "read"
    MANAGE = "manage", "manage"


class ApiKey(models.Model):
    """A tenant's API key. Only a SHA-256 of the full key is stored; the key is shown once."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True)
    key_hash = models.CharField(max_length=64, unique=True)
    scopes = models.JSONField(default=list)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"brt_{self.prefix}_… ({self.name})"


class Quota(models.Model):
    """What one tenant may use. Memory figures are MiB; 0 for a limit means none allowed."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="quota")
    gpu_memory_mb = models.PositiveIntegerField(default=0)
    cpu_memory_mb = models.PositiveIntegerField(default=4096)
    max_replicas = models.PositiveIntegerField(default=4)
    max_models = models.PositiveIntegerField(default=10)
    max_artifact_mb = models.PositiveIntegerField(default=512)
    requests_per_second = models.PositiveIntegerField(default=100)
    max_concurrent_requests = models.PositiveIntegerField(default=32)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"quota of {self.tenant_id}"


class AuditEvent(models.Model):
    """One state change: who did what to which thing, when, with details."""

    # Tenants are deactivated, never deleted, while they have an audit trail.
    tenant = models.ForeignKey(Tenant, null=True, blank=True, on_delete=models.PROTECT, related_name="audit_events")
    actor_user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    actor_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.SET_NULL)
    actor_label = models.CharField(max_length=200)
    action = models.CharField(max_length=64)
    target = models.CharField(max_length=300)
    details = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.actor_label} {self.action} {self.target}"
