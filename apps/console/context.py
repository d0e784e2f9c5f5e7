"""What every console page needs: the signed-in user's tenants, for the tenant switcher."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from apps.tenants.models import Tenant


def console(request: HttpRequest) -> dict[str, Any]:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    tenants = Tenant.objects.all() if user.is_staff else Tenant.objects.filter(memberships__user_id=user.pk)
    return {"my_tenants": list(tenants.order_by("slug").values_list("slug", flat=True)[:200])}
