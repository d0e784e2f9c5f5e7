"""OpenAPI description of Berth's API-key authentication (drf-spectacular extension)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "apps.tenants.authentication.ApiKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "brt_<prefix>_<secret>",
            "description": "A tenant API key: Authorization: Bearer brt_…",
        }


class StaffBasicAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "apps.tenants.authentication.StaffBasicAuthentication"
    name = "staffBasic"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "basic", "description": "HTTP Basic, for platform staff only"}
