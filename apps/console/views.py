"""Console pages. Views only read through selectors and render templates."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from apps.deployments.selectors import worker_list


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """The console's landing page: the platform at a glance."""
    user = request.user
    workers = list(worker_list()) if user.is_staff else []
    return render(request, "console/home.html", {"workers": workers})
