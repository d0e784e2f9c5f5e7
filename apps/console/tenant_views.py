"""Console pages inside one tenant: models, versions, deployments, keys, members, quota,
usage and the audit log. Views check access, read through selectors and change state only
through the same services the REST API calls; a refusal is shown next to the form."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from apps.console.forms import (
    ApiKeyCreateForm,
    CanaryForm,
    DeploymentForm,
    MemberAddForm,
    MemberRoleForm,
    ModelCreateForm,
)
from apps.deployments.selectors import deployment_replicas, deployment_wanted
from apps.deployments.services import (
    DeploymentSpec,
    deployment_canary,
    deployment_delete,
    deployment_promote,
    deployment_put,
    deployment_rollback,
    deployment_spec_of,
    deployment_stable_version,
)
from apps.monitoring.selectors import usage_report
from apps.registry.selectors import model_version_list
from apps.registry.services import model_create
from apps.tenants.access import (
    ROLE_ACTIONS,
    Action,
    Actor,
    access_api_key_by_prefix,
    access_membership_by_username,
    access_model_by_name,
    access_tenant_by_slug,
)
from apps.tenants.models import Membership, Tenant
from apps.tenants.selectors import (
    api_key_list,
    audit_event_list,
    membership_list,
    quota_get,
    tenant_usage,
)
from apps.tenants.services import (
    api_key_create,
    api_key_revoke,
    membership_add,
    membership_remove,
    membership_update,
)
from control_plane.errors import ApplicationError, NotFoundError, PermissionDeniedError


def _actor(request: HttpRequest) -> Actor:
    return Actor(user=request.user)


def _guarded(call: Callable[[], Any]) -> Any:
    """Runs an access check: a hidden or missing object is 404, a forbidden action 403."""
    try:
        return call()
    except NotFoundError as missing:
        raise Http404(missing.message) from None
    except PermissionDeniedError as refused:
        raise PermissionDenied(refused.message) from None


def _tenant(request: HttpRequest, slug: str, action: Action = Action.READ) -> Tenant:
    return _guarded(lambda: access_tenant_by_slug(_actor(request), slug, action=action))


def allowed_actions(request: HttpRequest, tenant: Tenant) -> frozenset[Action]:
    """What the signed-in user may do in ``tenant`` (pages show only those controls)."""
    if request.user.is_staff:
        return frozenset(Action)
    membership = Membership.objects.filter(tenant=tenant, user_id=request.user.pk or 0).first()
    return ROLE_ACTIONS[membership.role] if membership is not None else frozenset()


# Fields the services name that the console's forms call otherwise.
FIELD_ALIASES = {"batching": "max_batch_size", "username": "owner_username"}


def _apply(request: HttpRequest, form: forms.Form, call: Callable[[], Any]) -> Any:
    """Calls a service; its refusal becomes an error on the form (next to the field it names,
    else at the top). Returns the service's result, or None when refused."""
    try:
        return call()
    except PermissionDeniedError as refused:
        raise PermissionDenied(refused.message) from None
    except ApplicationError as refused:
        form.refusal_status = refused.status_code  # type: ignore[attr-defined]
        placed = False
        for named, problems in (refused.field_errors or {}).items():
            field = named if named in form.fields else FIELD_ALIASES.get(named, named)
            if field in form.fields:
                form.add_error(field, problems if isinstance(problems, list) else [str(problems)])
                placed = True
        if not placed:
            form.add_error(None, refused.message)
        return None


def _page(
    request: HttpRequest, tenant: Tenant, template: str, context: dict[str, Any], status: int = 200
) -> HttpResponse:
    can = allowed_actions(request, tenant)
    return render(
        request,
        template,
        {"tenant": tenant, "can": {action.value: action in can for action in Action}, **context},
        status=status,
    )


# ---------------------------------------------------------------- models and versions


@login_required
def models_page(request: HttpRequest, slug: str) -> HttpResponse:
    """The tenant's models; members create one here (then upload its first version)."""
    tenant = _tenant(request, slug)
    form = ModelCreateForm()
    if request.method == "POST":
        tenant = _tenant(request, slug, Action.WRITE)
        form = ModelCreateForm(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            made = _apply(
                request,
                form,
                lambda: model_create(
                    actor=_actor(request), tenant=tenant, name=data["name"], description=data["description"]
                ),
            )
            if made is not None:
                messages.success(request, f"Model {made.name} created; upload its first version.")
                return redirect("console:model", slug=slug, name=made.name)
    from apps.registry.selectors import model_list

    models = list(model_list(tenant=tenant).select_related("deployment"))
    status = getattr(form, "refusal_status", 400) if form.errors else 200
    return _page(request, tenant, "console/models.html", {"models": models, "form": form}, status)


@login_required
def model_page(request: HttpRequest, slug: str, name: str) -> HttpResponse:
    """A model: its versions (status live while validating, failure reason, signature,
    footprint) and the upload of a new version with a progress bar."""
    model = _guarded(lambda: access_model_by_name(_actor(request), slug, name, action=Action.READ))
    versions = list(model_version_list(model=model))
    deployment = getattr(model, "deployment", None)
    return _page(
        request,
        model.tenant,
        "console/model.html",
        {
            "model": model,
            "versions": versions,
            "deployment": deployment,
            "validating": any(v.status == "validating" for v in versions),
        },
    )


# ---------------------------------------------------------------- deployment editor


def _kept_batching(spec: DeploymentSpec | None) -> dict[str, Any]:
    """Batching settings the form has no input for (set over the API); the form's own fields,
    left empty, fall back to the defaults."""
    own = {"max_batch_size", "max_queue_delay_us", "instance_count"}
    return {name: value for name, value in (spec.batching if spec else {}).items() if name not in own}


@login_required
def deployment_page(request: HttpRequest, slug: str, name: str) -> HttpResponse:
    """The deployment editor: traffic per version with a canary control (shift N %, promote,
    roll back), replicas, batching and scale-to-zero; desired against actual replicas."""
    actor = _actor(request)
    model = _guarded(lambda: access_model_by_name(actor, slug, name, action=Action.READ))
    versions = [v.number for v in model_version_list(model=model) if v.status == "ready"]
    deployment = getattr(model, "deployment", None)
    spec = deployment_spec_of(deployment) if deployment is not None else None
    stable = deployment_stable_version(deployment) if deployment is not None else None
    initial: dict[str, Any] = {}
    if spec is not None:
        initial = {
            "min_replicas": spec.min_replicas,
            "max_replicas": spec.max_replicas,
            "target_inflight_per_replica": spec.target_inflight_per_replica,
            "scale_to_zero_after_s": spec.scale_to_zero_after_s,
            "device_kind": spec.device_kind,
            **{name: value for name, value in spec.batching.items() if name in DeploymentForm.base_fields},
            **{f"traffic_{number}": spec.traffic.get(str(number), 0) for number in versions},
        }
    elif versions:
        initial = {f"traffic_{versions[0]}": 100}
    form = DeploymentForm(initial=initial, versions=versions)
    canaries = [number for number in versions if number != stable]
    current = [int(v) for v, w in (deployment.traffic.items() if deployment else []) if w and int(v) != stable]
    preselected = (current or canaries)[0] if current or canaries else None
    canary = CanaryForm(initial={"version": preselected}, versions=canaries)
    status = 200
    if request.method == "POST":
        model = _guarded(lambda: access_model_by_name(actor, slug, name, action=Action.WRITE))
        action = request.POST.get("action", "")
        if action == "undeploy" and deployment is not None:
            deployment_delete(actor=actor, deployment=deployment)
            messages.success(request, f"{model.name} undeployed: its replicas are unloaded.")
            return redirect("console:deployment", slug=slug, name=name)
        if action == "save":
            form = DeploymentForm(request.POST, versions=versions)
            if form.is_valid():
                data = form.cleaned_data
                new = DeploymentSpec(
                    traffic=form.traffic(),
                    # Batching fields the form has no input for (set over the API) are kept.
                    batching={**_kept_batching(spec), **form.batching()},
                    min_replicas=data["min_replicas"],
                    max_replicas=data["max_replicas"],
                    target_inflight_per_replica=data["target_inflight_per_replica"],
                    scale_to_zero_after_s=data["scale_to_zero_after_s"],
                    device_kind=data["device_kind"],
                    prediction_log=spec.prediction_log if spec else {},
                )
                if _apply(request, form, lambda: deployment_put(actor=actor, model=model, spec=new)) is not None:
                    messages.success(request, "Deployment saved.")
                    return redirect("console:deployment", slug=slug, name=name)
            status = getattr(form, "refusal_status", 400)
        elif action in ("canary", "promote", "rollback") and deployment is not None:
            canary = CanaryForm(request.POST, versions=canaries)
            steps: dict[str, Callable[[], Any]] = {
                "rollback": lambda: deployment_rollback(actor=actor, deployment=deployment),
                "promote": lambda: deployment_promote(
                    actor=actor, deployment=deployment, version=canary.cleaned_data.get("version")
                ),
                "canary": lambda: deployment_canary(
                    actor=actor,
                    deployment=deployment,
                    version=canary.cleaned_data["version"],
                    percent=canary.cleaned_data["percent"],
                ),
            }
            valid = action == "rollback" or canary.is_valid()
            if valid and action == "canary" and canary.cleaned_data.get("version") is None:
                canary.add_error("version", "choose the version to send traffic to")
                valid = False
            if valid:
                changed = _apply(request, canary, steps[action])
                if changed is not None:
                    shares = ", ".join(f"v{k} {w} %" for k, w in sorted(changed.traffic.items()))
                    messages.success(request, f"Traffic: {shares}")
                    return redirect("console:deployment", slug=slug, name=name)
            status = getattr(canary, "refusal_status", 400)
        else:
            messages.error(request, "nothing to do: deploy first, or choose an action on this page")
            status = 400
    replicas = []
    if deployment is not None:
        replicas = list(deployment_replicas(deployment=deployment).order_by("version__number", "index"))
    traffic_fields = [form[f"traffic_{number}"] for number in versions]
    other_fields = [field for field in form if not field.name.startswith("traffic_")]
    return _page(
        request,
        model.tenant,
        "console/deployment.html",
        {
            "model": model,
            "deployment": deployment,
            "versions": versions,
            "form": form,
            "traffic_fields": traffic_fields,
            "other_fields": other_fields,
            "canary": canary,
            "stable": stable,
            "replicas": replicas,
            "wanted": deployment_wanted(deployment=deployment, replicas=replicas) if deployment else [],
        },
        status,
    )


# ---------------------------------------------------------------- API keys


NEW_KEY_SESSION = "console-new-api-key"


@never_cache
@login_required
def keys_page(request: HttpRequest, slug: str) -> HttpResponse:
    """API keys: create (the key is shown once, with a copy button), scopes, last use, revoke.

    A created key goes through the session to the page the browser is redirected to, which
    takes it out again: a reload neither shows it twice nor creates another key."""
    tenant = _tenant(request, slug, Action.MANAGE_ACCESS)
    form = ApiKeyCreateForm()
    status = 200
    if request.method == "POST":
        form = ApiKeyCreateForm(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            days = data.get("expires_in_days")
            expires = timezone.now() + timedelta(days=days) if days else None
            made = _apply(
                request,
                form,
                lambda: api_key_create(
                    actor=_actor(request), tenant=tenant, name=data["name"], scopes=data["scopes"], expires_at=expires
                ),
            )
            if made is not None:
                request.session[NEW_KEY_SESSION] = {"tenant": tenant.slug, "key": made[1]}
                return redirect("console:keys", slug=slug)
        status = getattr(form, "refusal_status", 400)
    pending = request.session.pop(NEW_KEY_SESSION, None)
    shown = pending["key"] if pending and pending.get("tenant") == tenant.slug else None
    keys = list(api_key_list(tenant=tenant).order_by("-created_at"))
    return _page(request, tenant, "console/keys.html", {"keys": keys, "form": form, "shown": shown}, status)


@login_required
@require_POST
def key_revoke(request: HttpRequest, slug: str, prefix: str) -> HttpResponse:
    key = _guarded(lambda: access_api_key_by_prefix(_actor(request), slug, prefix, action=Action.MANAGE_ACCESS))
    api_key_revoke(actor=_actor(request), api_key=key)
    messages.success(request, f"Key brt_{prefix}… revoked: it stops working within 2 seconds.")
    return redirect("console:keys", slug=slug)


# ---------------------------------------------------------------- members


@login_required
def members_page(request: HttpRequest, slug: str) -> HttpResponse:
    """Members and their roles; owners add, change and remove them."""
    tenant = _tenant(request, slug)
    form = MemberAddForm()
    status = 200
    if request.method == "POST":
        tenant = _tenant(request, slug, Action.MANAGE_ACCESS)
        form = MemberAddForm(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            added = _apply(
                request,
                form,
                lambda: membership_add(
                    actor=_actor(request), tenant=tenant, username=data["username"], role=data["role"]
                ),
            )
            if added is not None:
                messages.success(request, f"{data['username']} added as {data['role']}.")
                return redirect("console:members", slug=slug)
        status = getattr(form, "refusal_status", 400)
    members = list(membership_list(tenant=tenant))
    return _page(
        request, tenant, "console/members.html", {"members": members, "form": form, "roles": MemberRoleForm()}, status
    )


@login_required
@require_POST
def member_change(request: HttpRequest, slug: str, username: str) -> HttpResponse:
    actor = _actor(request)
    membership = _guarded(lambda: access_membership_by_username(actor, slug, username, action=Action.MANAGE_ACCESS))
    form = MemberRoleForm(request.POST)
    removing = request.POST.get("action") == "remove"
    try:
        if removing:
            membership_remove(actor=actor, membership=membership)
            messages.success(request, f"{username} removed.")
            return redirect("console:members", slug=slug)
        if form.is_valid():
            membership_update(actor=actor, membership=membership, role=form.cleaned_data["role"])
            messages.success(request, f"{username} is now {form.cleaned_data['role']}.")
            return redirect("console:members", slug=slug)
        problem, status = "choose one of the roles", 400
    except PermissionDeniedError as refused:
        raise PermissionDenied(refused.message) from None
    except ApplicationError as refused:
        problem, status = refused.message, refused.status_code
    # Refused: the page again, the reason on that member's row.
    tenant = membership.tenant
    members = list(membership_list(tenant=tenant))
    context = {"members": members, "form": MemberAddForm(), "roles": MemberRoleForm(), "row_error": (username, problem)}
    return _page(request, tenant, "console/members.html", context, status)


# ---------------------------------------------------------------- quota, usage, audit


@login_required
def quota_page(request: HttpRequest, slug: str) -> HttpResponse:
    """The tenant's quota beside what it uses now (staff change it on the staff pages)."""
    tenant = _tenant(request, slug)
    quota = quota_get(tenant=tenant)
    usage = tenant_usage(tenant=tenant)
    rows = [
        ("GPU memory (MiB)", usage.gpu_memory_mb, quota.gpu_memory_mb),
        ("CPU memory (MiB)", usage.cpu_memory_mb, quota.cpu_memory_mb),
        ("replicas", usage.replicas, quota.max_replicas),
        ("models", usage.models, quota.max_models),
        ("requests per second", None, quota.requests_per_second),
        ("concurrent requests", None, quota.max_concurrent_requests),
        ("artifact size (MiB)", None, quota.max_artifact_mb),
    ]
    return _page(request, tenant, "console/quota.html", {"rows": rows})


@login_required
def usage_page(request: HttpRequest, slug: str) -> HttpResponse:
    """Usage and cost for the last 30 days, per day and model version; CSV to download."""
    tenant = _tenant(request, slug)
    today = timezone.now().date()
    report = usage_report(tenant=tenant, first_day=today - timedelta(days=29), last_day=today)
    from django.conf import settings

    from apps.monitoring.cost import price_text
    from apps.monitoring.services import device_prices

    prices = {kind: price_text(price) for kind, price in device_prices().items()}
    return _page(
        request, tenant, "console/usage.html", {"report": report, "currency": settings.BERTH_CURRENCY, "prices": prices}
    )


@login_required
def audit_page(request: HttpRequest, slug: str) -> HttpResponse:
    """The tenant's audit log, newest first, 50 a page."""
    tenant = _tenant(request, slug, Action.AUDIT)
    paginator = Paginator(audit_event_list(tenant=tenant).order_by("-created_at", "-id"), 50)
    page = paginator.get_page(request.GET.get("page"))
    return _page(request, tenant, "console/audit.html", {"page": page})
