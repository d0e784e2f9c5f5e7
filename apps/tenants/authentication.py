"""DRF authentication by ``Authorization: Bearer <API key>``."""

from __future__ import annotations

from typing import Any

from rest_framework.authentication import BaseAuthentication, BasicAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed, PermissionDenied
from rest_framework.request import Request

from apps.tenants.access import Actor, ApiKeyPrincipal
from apps.tenants.keys import ApiKeyRefused, api_key_authenticate
from control_plane.errors import PermissionDeniedError


class ApiKeyUser:
    """Stands in for ``request.user`` when an API key authenticated the request."""

    is_authenticated = True
    is_active = True
    is_staff = False
    is_superuser = False
    pk = None

    def __init__(self, principal: ApiKeyPrincipal) -> None:
        self.principal = principal

    def get_username(self) -> str:
        return f"api-key:{self.principal.prefix}"

    def __str__(self) -> str:
        return self.get_username()


class ApiKeyAuthentication(BaseAuthentication):
    """Authenticates ``Authorization: Bearer brt_…``; other schemes are left to others."""

    def authenticate(self, request: Request) -> tuple[ApiKeyUser, ApiKeyPrincipal] | None:
        header = get_authorization_header(request)
        if header[:7].lower() != b"bearer ":
            return None
        raw = header[7:].decode("utf-8", "replace").strip()
        try:
            principal = api_key_authenticate(raw=raw)
        except ApiKeyRefused as exc:
            raise AuthenticationFailed(exc.message) from exc
        except PermissionDeniedError as exc:
            # As a DRF exception, so DRF marks the request unauthenticated and answers 403.
            raise PermissionDenied(exc.message) from exc
        return ApiKeyUser(principal), principal

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="berth"'


class StaffBasicAuthentication(BasicAuthentication):
    """HTTP Basic for platform staff's scripts only; tenant users use sessions or API keys."""

    def authenticate_credentials(self, userid: str, password: str, request: Any = None) -> tuple[Any, None]:
        user, auth = super().authenticate_credentials(userid, password, request)
        if not user.is_staff:
            raise AuthenticationFailed("HTTP Basic is for platform staff; use an API key (Bearer) instead")
        return user, auth


def actor_from_request(request: Any) -> Actor:
    """The ``Actor`` behind a DRF or Django request (API key or signed-in user)."""
    principal = getattr(request, "auth", None)
    if isinstance(principal, ApiKeyPrincipal):
        return Actor(key=principal)
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return Actor(user=user)
    return Actor()
