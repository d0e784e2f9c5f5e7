"""Control tasks of the monitoring app."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="berth.ping")
def ping(nonce: str) -> str:
    """Answers with the nonce it was given: proves a broker round trip end to end."""
    return nonce


@shared_task(name="berth.monitoring.rollups_compact", ignore_result=True)
def rollups_compact() -> None:
    """Merges complete minutes into one-minute rollups and prunes past retention (beat, 30 s)."""
    from django.utils import timezone

    from apps.monitoring.services import rollups_compact as compact

    compact(now=timezone.now())


@shared_task(name="berth.monitoring.prediction_logs_prune", ignore_result=True)
def prediction_logs_prune() -> None:
    """Deletes prediction logs past their deployment's retention (beat, every 10 minutes)."""
    from django.utils import timezone

    from apps.monitoring.services import prediction_logs_prune as prune

    prune(now=timezone.now())
