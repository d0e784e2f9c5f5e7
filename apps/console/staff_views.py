"""Staff console pages: tenants and their quotas, workers and draining. Not found for others."""

from __future__ import annotations

from functools import wraps
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from apps.console.forms import QuotaForm, TenantCreateForm
from apps.console.tenant_views import _actor, _apply
from apps.deployments.selectors import worker_list
from apps.deployments.services import worker_drain
from apps.tenants.models import Tenant
from apps.tenants.selectors import quota_get, tenant_usage
from apps.tenants.services import QUOTA_FIELDS, quota_update, tenant_create, tenant_update


def staff_only(view: Any) -> Any:
    """Staff pages are 404 to everyone else (they need not know they exist)."""

    @login_required
    @wraps(view)
    def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_staff:
            raise Http404("no such page")
        return view(request, *args, **kwargs)

    return guarded


@staff_only
def tenants_page(request: HttpRequest) -> HttpResponse:
    """Every tenant with its usage; create one (with its owner)."""
    form = TenantCreateForm()
    status = 200
    if request.method == "POST":
        form = TenantCreateForm(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            made = _apply(
                request,
                form,
                lambda: tenant_create(
                    actor=_actor(request), slug=data["slug"], name=data["name"], owner_username=data["owner_username"]
                ),
            )
            if made is not None:
                messages.success(request, f"Tenant {made.slug} created.")
                return redirect("console:staff-tenant", slug=made.slug)
        status = getattr(form, "refusal_status", 400)
    tenants = [(tenant, tenant_usage(tenant=tenant)) for tenant in Tenant.objects.order_by("slug")]
    return render(request, "console/staff_tenants.html", {"tenants": tenants, "form": form}, status=status)


@staff_only
def tenant_page(request: HttpRequest, slug: str) -> HttpResponse:
    """One tenant for staff: its quota (edit) beside its usage; deactivate or reactivate."""
    tenant = Tenant.objects.filter(slug=slug).first()
    if tenant is None:
        raise Http404(f"no tenant '{slug}'")
    quota = quota_get(tenant=tenant)
    form = QuotaForm(initial={name: getattr(quota, name) for name in QUOTA_FIELDS})
    status = 200
    if request.method == "POST":
        action = request.POST.get("action", "quota")
        if action in ("deactivate", "reactivate"):
            tenant_update(actor=_actor(request), tenant=tenant, active=action == "reactivate")
            messages.success(request, f"Tenant {slug} {action}d.")
            return redirect("console:staff-tenant", slug=slug)
        form = QuotaForm(request.POST)
        if form.is_valid():
            changes = {name: form.cleaned_data[name] for name in QUOTA_FIELDS}
            if _apply(request, form, lambda: quota_update(actor=_actor(request), tenant=tenant, changes=changes)):
                messages.success(request, "Quota saved.")
                return redirect("console:staff-tenant", slug=slug)
        status = getattr(form, "refusal_status", 400)
    return render(
        request,
        "console/staff_tenant.html",
        {"tenant": tenant, "form": form, "usage": tenant_usage(tenant=tenant)},
        status=status,
    )


@staff_only
@require_POST
def worker_drain_action(request: HttpRequest, worker_id: str) -> HttpResponse:
    """Drains a worker (its replicas move elsewhere, each serving until replaced) or undoes it."""
    worker = worker_list().filter(worker_id=worker_id).first()
    if worker is None:
        raise Http404(f"no worker '{worker_id}'")
    drain = request.POST.get("action") != "undrain"
    worker_drain(actor=_actor(request), worker=worker, drain=drain)
    messages.success(request, f"Worker {worker_id} {'draining' if drain else 'back in service'}.")
    return redirect("console:fleet")
