"""The one DRF exception handler: every API error becomes ``{"error": ..., "field_errors"?: ...}``."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.defaults import page_not_found
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler

from control_plane.errors import ApplicationError


def _flatten(detail: Any) -> Any:
    if isinstance(detail, dict):
        return {key: _flatten(value) for key, value in detail.items()}
    if isinstance(detail, list):
        return [_flatten(value) for value in detail]
    return str(detail)


_MESSAGES = {
    exceptions.NotAuthenticated: "authentication required: sign in, or send 'Authorization: Bearer <API key>'",
    exceptions.AuthenticationFailed: "authentication failed: check the credentials or API key you sent",
    exceptions.PermissionDenied: "permission denied: your role does not allow this action",
    exceptions.NotFound: "not found: check the URL and the names in it",
    exceptions.MethodNotAllowed: "method not allowed on this URL",
}


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Turns any API exception into ``{"error": ..., "field_errors"?: ...}``."""
    if isinstance(exc, ApplicationError):
        body: dict[str, Any] = {"error": exc.message}
        if exc.field_errors:
            body["field_errors"] = exc.field_errors
        return Response(body, status=exc.status_code)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        fields = _flatten(exc.detail)
        if isinstance(fields, dict):
            names = ", ".join(sorted(fields))
            response.data = {"error": f"invalid input in: {names}; see field_errors", "field_errors": fields}
        else:
            response.data = {"error": f"invalid input: {'; '.join(map(str, fields))}"}
        return response
    if isinstance(exc, exceptions.MethodNotAllowed):
        view = context.get("view")
        allowed = ", ".join(m for m in getattr(view, "allowed_methods", ()) if m != "OPTIONS")
        response.data = {"error": f"method {context['request'].method} is not allowed here; use {allowed}"}
        return response
    message = next((text for kind, text in _MESSAGES.items() if type(exc) is kind), None)
    if message is None or (isinstance(exc, exceptions.APIException) and exc.detail != exc.default_detail):
        message = str(getattr(exc, "detail", exc))
    response.data = {"error": message}
    return response


def api_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Django's 404 handler: JSON under ``/api/``, the plain page elsewhere."""
    if request.path.startswith("/api/"):
        return JsonResponse(
            {"error": f"no API endpoint at {request.path}; see /api/v1/docs/ for the endpoints"}, status=404
        )
    return page_not_found(request, exception or Http404())
