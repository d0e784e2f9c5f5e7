"""Reads on tenants, members, keys, quotas and the audit log.

Functions that take a ``Tenant`` expect one obtained through ``apps.tenants.access``.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import QuerySet

from apps.tenants.access import Actor
from apps.tenants.models import ApiKey, AuditEvent, Membership, Quota, Tenant


def tenant_list(*, actor: Actor) -> QuerySet[Tenant]:
    """Staff see every tenant; a user sees those they belong to; a key sees its own."""
    if actor.key is not None:
        return Tenant.objects.filter(pk=actor.key.tenant_id)
    if actor.is_staff:
        return Tenant.objects.all()
    if actor.user is not None and actor.user.is_authenticated:
        return Tenant.objects.filter(memberships__user=actor.user)
    return Tenant.objects.none()


def membership_list(*, tenant: Tenant) -> QuerySet[Membership]:
    """A tenant's members with their users, by user name."""
    return Membership.objects.filter(tenant=tenant).select_related("user").order_by("user__username")


def api_key_list(*, tenant: Tenant) -> QuerySet[ApiKey]:
    """A tenant's API keys, newest first, revoked ones included."""
    return ApiKey.objects.filter(tenant=tenant).select_related("created_by")


def audit_event_list(*, tenant: Tenant) -> QuerySet[AuditEvent]:
    """A tenant's audit trail, newest first."""
    return AuditEvent.objects.filter(tenant=tenant)


@dataclass(frozen=True)
class TenantUsage:
    """What a tenant uses now, in the quota's units."""

    models: int
    replicas: int
    gpu_memory_mb: int
    cpu_memory_mb: int
    active_api_keys: int


def quota_get(*, tenant: Tenant) -> Quota:
    """The tenant's quota (created with the tenant; made with defaults if missing)."""
    quota, _ = Quota.objects.get_or_create(tenant=tenant)
    return quota


def tenant_usage(*, tenant: Tenant) -> TenantUsage:
    """Current usage against the quota.

    Models count the registry's; replicas and reserved memory count what deployments hold
    (zero until that app has tables).
    """
    from apps.registry.models import Model

    return TenantUsage(
        models=Model.objects.filter(tenant=tenant).count(),
        replicas=0,
        gpu_memory_mb=0,
        cpu_memory_mb=0,
        active_api_keys=ApiKey.objects.filter(tenant=tenant, revoked_at__isnull=True).count(),
    )
