"""The application's errors: services raise these; one handler turns them into responses.

Every 4xx body has the shape ``{"error": "<what is wrong and how to fix it>"}``, with
``field_errors`` when particular fields are at fault (see ``exception_handler.py``).
This module imports nothing from DRF, so any layer may raise these errors.
"""

from __future__ import annotations

from typing import Any


class ApplicationError(Exception):
    """A refusal a service raises on purpose, with the status and message to return."""

    status_code: int = 400

    def __init__(self, message: str, *, status_code: int | None = None, field_errors: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code
        self.field_errors = field_errors or {}


class NotFoundError(ApplicationError):
    """The object does not exist, or the caller may not know that it exists."""

    status_code: int = 404


class PermissionDeniedError(ApplicationError):
    """The caller is known but its role, scope or tenant state does not allow this."""

    status_code: int = 403


class ConflictError(ApplicationError):
    """The request contradicts the current state (a quota, a deployment in the way)."""

    status_code: int = 409
