"""Read-only admin views of tenancy data.

Changes go through the API or the console, whose services enforce the rules (the last
owner, immutable slugs) and write the audit trail; the admin only looks.
"""

from typing import Any

from django.contrib import admin

from apps.tenants.models import ApiKey, AuditEvent, Membership, Quota, Tenant


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False


@admin.register(Tenant)
class TenantAdmin(ReadOnlyAdmin):
    list_display = ["slug", "name", "active", "created_at"]
    search_fields = ["slug", "name"]


@admin.register(Membership)
class MembershipAdmin(ReadOnlyAdmin):
    list_display = ["tenant", "user", "role"]
    list_filter = ["role"]


@admin.register(ApiKey)
class ApiKeyAdmin(ReadOnlyAdmin):
    list_display = ["prefix", "tenant", "name", "scopes", "last_used_at", "revoked_at"]
    exclude = ["key_hash"]


@admin.register(Quota)
class QuotaAdmin(ReadOnlyAdmin):
    list_display = ["tenant", "gpu_memory_mb", "cpu_memory_mb", "max_replicas", "max_models"]


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "tenant", "actor_label", "action", "target"]
    list_filter = ["action"]
