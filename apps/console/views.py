"""Console pages. Views only read through selectors and render templates."""

from __future__ import annotations

import re

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from apps.deployments.selectors import worker_list
from apps.monitoring.selectors import RANGES
from apps.registry.selectors import model_list
from apps.tenants.access import Action, Actor, access_tenant_by_slug
from apps.tenants.models import Tenant
from control_plane.errors import NotFoundError, PermissionDeniedError


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """The console's landing page: the platform at a glance, and the user's tenants."""
    user = request.user
    chosen = request.GET.get("tenant", "")
    if chosen and re.fullmatch(r"[a-z0-9-]{1,63}", chosen):  # the tenant switcher without JavaScript
        return redirect("console:models", slug=chosen)
    workers = list(worker_list()) if user.is_staff else []
    tenants = Tenant.objects.all() if user.is_staff else Tenant.objects.filter(memberships__user_id=user.pk or 0)
    return render(request, "console/home.html", {"workers": workers, "tenants": list(tenants.order_by("slug"))})


@login_required
def tenant_dashboard(request: HttpRequest, slug: str) -> HttpResponse:
    """A tenant's live dashboard: throughput, errors and latency per model version."""
    try:
        tenant = access_tenant_by_slug(Actor(user=request.user), slug, action=Action.READ)
    except NotFoundError:
        raise Http404(f"no tenant '{slug}'") from None
    except PermissionDeniedError as refused:
        raise PermissionDenied(refused.message) from None
    models = [model.name for model in model_list(tenant=tenant)]
    chosen = request.GET.get("model", "")
    from apps.console.tenant_views import allowed_actions

    can = allowed_actions(request, tenant)
    return render(
        request,
        "console/dashboard.html",
        {
            "tenant": tenant,
            "models": models,
            "model": chosen if chosen in models else "",
            "ranges": list(RANGES),
            "can": {action.value: action in can for action in Action},
        },
    )


@login_required
def fleet(request: HttpRequest) -> HttpResponse:
    """Staff: every device as a bar of its memory, hosted replicas as segments, live."""
    if not request.user.is_staff:
        raise Http404("no such page")
    from apps.monitoring.selectors import DEVICE_RANGES

    return render(request, "console/fleet.html", {"device_ranges": list(DEVICE_RANGES), "workers": list(worker_list())})
