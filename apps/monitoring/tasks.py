"""Control tasks of the monitoring app."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="berth.ping")
def ping(nonce: str) -> str:
    """Answers with the nonce it was given: proves a broker round trip end to end."""
    return nonce
