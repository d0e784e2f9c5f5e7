"""Reads on workers."""

from __future__ import annotations

from django.db.models import QuerySet

from apps.deployments.models import Worker


def worker_list() -> QuerySet[Worker]:
    """Every registered worker, dead ones included, by id."""
    return Worker.objects.order_by("worker_id")
