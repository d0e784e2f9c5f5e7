"""The only way any code reaches tenant-scoped rows.

Every function here takes the ``Actor`` making the request and answers "missing" and
"not yours" with the same ``NotFoundError``, so nobody learns that another tenant's
thing exists. Permission (role or key scope) is checked before any object lookup, so a
viewer learns nothing about objects either. Later apps add their
``access_<thing>_by_<key>`` functions on top of ``access_tenant_by_slug``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from apps.tenants.models import ApiKey, Membership, Role, Scope, Tenant
from control_plane.errors import NotFoundError, PermissionDeniedError


class Action(StrEnum):
    """What a caller wants to do inside a tenant."""

    READ = "read"  # see models, versions, deployments, quota, members
    WRITE = "write"  # change models, versions and deployments
    INFER = "infer"  # call the tenant's inference endpoints
    AUDIT = "audit"  # read the audit log
    MANAGE_ACCESS = "manage_access"  # manage members and API keys


ROLE_ACTIONS: dict[str, frozenset[Action]] = {
    Role.VIEWER: frozenset({Action.READ}),
    Role.MEMBER: frozenset({Action.READ, Action.WRITE, Action.INFER}),
    Role.ADMIN: frozenset({Action.READ, Action.WRITE, Action.INFER, Action.AUDIT}),
    Role.OWNER: frozenset(Action),
}

# Keys never manage access: a leaked key cannot mint more keys or add members.
SCOPE_ACTIONS: dict[str, frozenset[Action]] = {
    Scope.INFER: frozenset({Action.INFER}),
    Scope.READ: frozenset({Action.READ}),
    Scope.MANAGE: frozenset({Action.READ, Action.WRITE}),
}


@dataclass(frozen=True)
class ApiKeyPrincipal:
    """An authenticated API key, as cached between requests (no ORM object inside)."""

    key_id: int
    prefix: str
    tenant_id: int
    tenant_slug: str
    tenant_active: bool
    scopes: frozenset[str]
    expires_at: datetime | None
    revoked_at: datetime | None

    def actions(self) -> frozenset[Action]:
        """Everything this key's scopes allow."""
        granted: set[Action] = set()
        for scope in self.scopes:
            granted |= SCOPE_ACTIONS.get(scope, frozenset())
        return frozenset(granted)


@dataclass(frozen=True)
class Actor:
    """Who is asking: a signed-in user, or an API key (never both)."""

    user: Any = None
    key: ApiKeyPrincipal | None = None

    @property
    def is_staff(self) -> bool:
        """Platform staff (a signed-in user, never a key)."""
        return self.key is None and self.user is not None and bool(self.user.is_staff and self.user.is_active)

    @property
    def label(self) -> str:
        """How the audit log names this actor."""
        if self.key is not None:
            return f"api-key:{self.key.prefix}"
        if self.user is not None:
            return str(self.user.get_username())
        return "system"


def _not_found(slug: str) -> NotFoundError:
    return NotFoundError(f"no tenant '{slug}' is visible to you; check the tenant slug in the URL")


def _deactivated(slug: str) -> PermissionDeniedError:
    return PermissionDeniedError(
        f"tenant '{slug}' is deactivated; ask platform staff to reactivate it before using it again"
    )


def require_staff(actor: Actor, *, doing: str) -> None:
    """Refuses anyone but platform staff.

    Raises:
        PermissionDeniedError: Naming what only staff may do.
    """
    if not actor.is_staff:
        raise PermissionDeniedError(f"only platform staff may {doing}")


def access_tenant_by_slug(actor: Actor, slug: str, *, action: Action) -> Tenant:
    """The tenant ``slug`` if ``actor`` may do ``action`` in it.

    Raises:
        NotFoundError: The tenant does not exist or the actor does not belong to it.
        PermissionDeniedError: The actor belongs to it but its role or scopes do not allow
            ``action``, or the tenant is deactivated.
    """
    if actor.key is not None:
        if actor.key.tenant_slug != slug:
            raise _not_found(slug)
        tenant = Tenant.objects.filter(pk=actor.key.tenant_id).first()
        if tenant is None:
            raise _not_found(slug)
        granted = actor.key.actions()
        who = f"API key brt_{actor.key.prefix} (scopes: {', '.join(sorted(actor.key.scopes)) or 'none'})"
    elif actor.is_staff:
        tenant = Tenant.objects.filter(slug=slug).first()
        if tenant is None:
            raise _not_found(slug)
        return tenant
    elif actor.user is not None and actor.user.is_authenticated:
        membership = Membership.objects.select_related("tenant").filter(user=actor.user, tenant__slug=slug).first()
        if membership is None:
            raise _not_found(slug)
        tenant = membership.tenant
        granted = ROLE_ACTIONS[membership.role]
        who = f"your role ({membership.role})"
    else:
        raise _not_found(slug)
    if not tenant.active:
        raise _deactivated(slug)
    if action not in granted:
        raise PermissionDeniedError(f"{who} does not allow '{action.value}' in tenant '{slug}'")
    return tenant


def access_membership_by_username(actor: Actor, slug: str, username: str, *, action: Action) -> Membership:
    """A member of tenant ``slug`` by user name, if ``actor`` may do ``action`` there."""
    tenant = access_tenant_by_slug(actor, slug, action=action)
    membership = (
        Membership.objects.select_related("user", "tenant").filter(tenant=tenant, user__username=username).first()
    )
    if membership is None:
        raise NotFoundError(f"'{username}' is not a member of tenant '{slug}'")
    return membership


def access_api_key_by_prefix(actor: Actor, slug: str, prefix: str, *, action: Action) -> ApiKey:
    """An API key of tenant ``slug`` by its public prefix, if ``actor`` may do ``action``."""
    tenant = access_tenant_by_slug(actor, slug, action=action)
    api_key = ApiKey.objects.select_related("tenant").filter(tenant=tenant, prefix=prefix).first()
    if api_key is None:
        raise NotFoundError(f"no API key with prefix '{prefix}' in tenant '{slug}'")
    return api_key


def access_model_by_name(actor: Actor, slug: str, name: str, *, action: Action) -> Any:
    """A model of tenant ``slug`` by name, if ``actor`` may do ``action`` there."""
    from apps.registry.models import Model

    tenant = access_tenant_by_slug(actor, slug, action=action)
    model = Model.objects.select_related("tenant").filter(tenant=tenant, name=name).first()
    if model is None:
        raise NotFoundError(f"no model '{name}' in tenant '{slug}'")
    return model


def access_model_version_by_number(actor: Actor, slug: str, name: str, number: int, *, action: Action) -> Any:
    """A version of a tenant's model by number, if ``actor`` may do ``action`` there."""
    from apps.registry.models import ModelVersion

    tenant = access_tenant_by_slug(actor, slug, action=action)
    version = (
        ModelVersion.objects.select_related("model", "model__tenant")
        .filter(model__tenant=tenant, model__name=name, number=number)
        .first()
    )
    if version is None:
        raise NotFoundError(f"no version {number} of model '{name}' in tenant '{slug}'")
    return version


def access_deployment_by_model_name(actor: Actor, slug: str, name: str, *, action: Action) -> Any:
    """The deployment of a tenant's model, if ``actor`` may do ``action`` there."""
    from apps.deployments.models import Deployment

    tenant = access_tenant_by_slug(actor, slug, action=action)
    deployment = (
        Deployment.objects.select_related("model", "model__tenant")
        .filter(model__tenant=tenant, model__name=name)
        .first()
    )
    if deployment is None:
        raise NotFoundError(f"model '{name}' in tenant '{slug}' is not deployed (or does not exist)")
    return deployment
