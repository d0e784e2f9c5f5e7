"""Reads about the platform's own health."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.db import DatabaseError, connections
from kombu import Connection
from kombu.exceptions import OperationalError


@dataclass(frozen=True)
class HealthCheck:
    """One dependency's health: ``ok`` or what went wrong."""

    part: str
    ok: bool
    detail: str


def database_health() -> HealthCheck:
    """Whether the default database answers a query."""
    try:
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError as exc:
        return HealthCheck(part="database", ok=False, detail=f"database unreachable: {exc}")
    return HealthCheck(part="database", ok=True, detail="ok")


def broker_health(*, url: str, transport_options: dict[str, Any]) -> HealthCheck:
    """Whether the Celery broker accepts a connection (or, embedded, its folder is writable)."""
    if url.startswith(("berthfs://", "filesystem://")):
        folder = Path(transport_options.get("data_folder_out", ""))
        if not folder.is_dir():
            return HealthCheck(part="broker", ok=False, detail=f"broker folder {folder} is missing")
        probe = folder / ".healthz"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            return HealthCheck(part="broker", ok=False, detail=f"broker folder not writable: {exc.strerror}")
        return HealthCheck(part="broker", ok=True, detail="ok")
    with Connection(url, transport_options=transport_options, connect_timeout=2) as connection:
        unreachable: tuple[type[BaseException], ...] = (OperationalError, OSError, *connection.connection_errors)
        try:
            connection.ensure_connection(max_retries=1, timeout=3)
        except unreachable as exc:
            return HealthCheck(part="broker", ok=False, detail=f"broker unreachable: {exc}")
    return HealthCheck(part="broker", ok=True, detail="ok")
