"""Writes on tenants, memberships, API keys and quotas. Every change is audited."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.tenants.access import Actor, require_staff
from apps.tenants.keys import key_cache_forget, key_mint
from apps.tenants.models import DNS_LABEL, ApiKey, AuditEvent, Membership, Quota, Role, Scope, Tenant
from control_plane.celery import RECONCILE_TASK
from control_plane.errors import ApplicationError, ConflictError

QUOTA_FIELDS = (
    "gpu_memory_mb",
    "cpu_memory_mb",
    "max_replicas",
    "max_models",
    "max_artifact_mb",
    "requests_per_second",
    "max_concurrent_requests",
)


def audit_event_create(
    *, actor: Actor, tenant: Tenant | None, action: str, target: str, details: dict[str, Any] | None = None
) -> AuditEvent:
    """Records one state change. Every service that changes state calls this."""
    user = actor.user if actor.key is None and actor.user is not None and actor.user.pk else None
    return AuditEvent.objects.create(
        tenant=tenant,
        actor_user=user,
        actor_key_id=actor.key.key_id if actor.key is not None else None,
        actor_label=actor.label,
        action=action,
        target=target,
        details=details or {},
    )


def _validate_slug(slug: str) -> None:
    try:
        DNS_LABEL(slug)
    except ValidationError:
        raise ApplicationError(
            f"'{slug}' is not a valid tenant slug",
            field_errors={"slug": [str(DNS_LABEL.message)]},
        ) from None


def _user_by_username(username: str) -> Any:
    user = get_user_model().objects.filter(username=username, is_active=True).first()
    if user is None:
        raise ApplicationError(
            f"no active user '{username}'; the person must have an account first",
            field_errors={"username": ["no such active user"]},
        )
    return user


@transaction.atomic
def tenant_create(*, actor: Actor, slug: str, name: str, owner_username: str = "") -> Tenant:
    """Creates a tenant with the default quota and, optionally, its first owner (staff only)."""
    require_staff(actor, doing="create tenants")
    _validate_slug(slug)
    owner = _user_by_username(owner_username) if owner_username else None
    try:
        with transaction.atomic():
            tenant = Tenant.objects.create(slug=slug, name=name or slug)
    except IntegrityError:
        raise ConflictError(f"a tenant with slug '{slug}' already exists; pick another slug") from None
    Quota.objects.create(tenant=tenant)
    if owner is not None:
        Membership.objects.create(tenant=tenant, user=owner, role=Role.OWNER)
    audit_event_create(
        actor=actor,
        tenant=tenant,
        action="tenant.create",
        target=slug,
        details={"name": tenant.name, "owner": owner_username},
    )
    return tenant


@transaction.atomic
def tenant_update(*, actor: Actor, tenant: Tenant, name: str | None = None, active: bool | None = None) -> Tenant:
    """Renames, deactivates or reactivates a tenant (staff only). The slug never changes."""
    require_staff(actor, doing="rename, deactivate or reactivate tenants")
    changes: dict[str, Any] = {}
    if name is not None and name != tenant.name:
        changes["name"] = name
    if active is not None and active != tenant.active:
        changes["active"] = active
    if not changes:
        return tenant
    for field, value in changes.items():
        setattr(tenant, field, value)
    tenant.save(update_fields=list(changes))
    action = "tenant.update"
    if "active" in changes:
        action = "tenant.activate" if tenant.active else "tenant.deactivate"
    audit_event_create(actor=actor, tenant=tenant, action=action, target=tenant.slug, details=changes)
    return tenant


def _owners_left(tenant: Tenant, *, without: Membership) -> int:
    # Lock the owners' rows: two owners demoting each other at once must not leave none.
    owners = Membership.objects.select_for_update().filter(tenant=tenant, role=Role.OWNER)
    return sum(1 for membership in owners if membership.pk != without.pk)


@transaction.atomic
def membership_add(*, actor: Actor, tenant: Tenant, username: str, role: str) -> Membership:
    """Adds a user to a tenant with a role."""
    if role not in Role.values:
        raise ApplicationError(f"unknown role '{role}'", field_errors={"role": [f"choose one of {Role.values}"]})
    user = _user_by_username(username)
    if Membership.objects.filter(tenant=tenant, user=user).exists():
        raise ConflictError(f"'{username}' is already a member of '{tenant.slug}'; change their role instead")
    membership = Membership.objects.create(tenant=tenant, user=user, role=role)
    audit_event_create(actor=actor, tenant=tenant, action="member.add", target=username, details={"role": role})
    return membership


@transaction.atomic
def membership_update(*, actor: Actor, membership: Membership, role: str) -> Membership:
    """Changes a member's role; the last owner cannot be demoted."""
    if role not in Role.values:
        raise ApplicationError(f"unknown role '{role}'", field_errors={"role": [f"choose one of {Role.values}"]})
    if role == membership.role:
        return membership
    if membership.role == Role.OWNER and _owners_left(membership.tenant, without=membership) == 0:
        raise ConflictError("this is the tenant's last owner; make someone else owner first")
    previous = membership.role
    membership.role = role
    membership.save(update_fields=["role"])
    audit_event_create(
        actor=actor,
        tenant=membership.tenant,
        action="member.update",
        target=membership.user.get_username(),
        details={"from": previous, "to": role},
    )
    return membership


@transaction.atomic
def membership_remove(*, actor: Actor, membership: Membership) -> None:
    """Removes a member; the last owner cannot be removed."""
    if membership.role == Role.OWNER and _owners_left(membership.tenant, without=membership) == 0:
        raise ConflictError("this is the tenant's last owner; make someone else owner first")
    username = membership.user.get_username()
    tenant = membership.tenant
    membership.delete()
    audit_event_create(actor=actor, tenant=tenant, action="member.remove", target=username)


@transaction.atomic
def api_key_create(
    *, actor: Actor, tenant: Tenant, name: str, scopes: list[str], expires_at: datetime | None = None
) -> tuple[ApiKey, str]:
    """Creates an API key; returns the row and the full key, which is never shown again."""
    unknown = sorted(set(scopes) - set(Scope.values))
    if not scopes or unknown:
        raise ApplicationError(
            "an API key needs one or more scopes from infer, read, manage",
            field_errors={"scopes": [f"unknown: {', '.join(unknown)}" if unknown else "at least one scope"]},
        )
    if expires_at is not None and expires_at <= timezone.now():
        raise ApplicationError(
            "expires_at is in the past", field_errors={"expires_at": ["give a future time, or leave it out"]}
        )
    minted = key_mint()
    api_key = ApiKey.objects.create(
        tenant=tenant,
        name=name,
        prefix=minted.prefix,
        key_hash=minted.key_hash,
        scopes=sorted(set(scopes)),
        created_by=actor.user if actor.key is None and actor.user is not None and actor.user.pk else None,
        expires_at=expires_at,
    )
    audit_event_create(
        actor=actor,
        tenant=tenant,
        action="api_key.create",
        target=f"brt_{api_key.prefix}",
        details={"name": name, "scopes": api_key.scopes},
    )
    return api_key, minted.raw


@transaction.atomic
def api_key_revoke(*, actor: Actor, api_key: ApiKey) -> ApiKey:
    """Revokes a key; every process refuses it within the key cache's lifetime (≤ 2 s)."""
    if api_key.revoked_at is not None:
        return api_key
    api_key.revoked_at = timezone.now()
    api_key.save(update_fields=["revoked_at"])
    audit_event_create(actor=actor, tenant=api_key.tenant, action="api_key.revoke", target=f"brt_{api_key.prefix}")
    key_hash = api_key.key_hash
    transaction.on_commit(lambda: key_cache_forget(key_hash=key_hash))
    return api_key


@transaction.atomic
def quota_update(*, actor: Actor, tenant: Tenant, changes: dict[str, int]) -> Quota:
    """Sets some of a tenant's quota limits (staff only)."""
    require_staff(actor, doing="change quotas")
    unknown = sorted(set(changes) - set(QUOTA_FIELDS))
    if unknown:
        raise ApplicationError(f"unknown quota fields: {', '.join(unknown)}")
    quota, _ = Quota.objects.select_for_update().get_or_create(tenant=tenant)
    before = {field: getattr(quota, field) for field in changes}
    for field, value in changes.items():
        setattr(quota, field, value)
    quota.save()
    audit_event_create(
        actor=actor, tenant=tenant, action="quota.update", target=tenant.slug, details={"from": before, "to": changes}
    )
    transaction.on_commit(_reconcile, robust=True)  # replicas the quota held pending may fit now
    return quota


def _reconcile() -> None:
    """Asks the control worker for a reconcile pass (the deployments app's task, by name: the
    tenants app does not import the apps built on it)."""
    from celery import current_app

    current_app.send_task(RECONCILE_TASK, queue=settings.CELERY_TASK_DEFAULT_QUEUE)
