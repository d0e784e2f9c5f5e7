from django.contrib import admin

from apps.tenants.models import ApiKey, AuditEvent, Membership, Quota, Tenant


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "active", "created_at"]
    search_fields = ["slug", "name"]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["tenant", "user", "role"]
    list_filter = ["role"]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["prefix", "tenant", "name", "scopes", "last_used_at", "revoked_at"]
    # The hash is never shown; keys are created and revoked through the API or console.
    exclude = ["key_hash"]
    readonly_fields = ["tenant", "prefix", "scopes", "created_by", "last_used_at", "expires_at", "revoked_at"]

    def has_add_permission(self, request: object) -> bool:
        return False


@admin.register(Quota)
class QuotaAdmin(admin.ModelAdmin):
    list_display = ["tenant", "gpu_memory_mb", "cpu_memory_mb", "max_replicas", "max_models"]


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ["created_at", "tenant", "actor_label", "action", "target"]
    list_filter = ["action"]
    readonly_fields = [field.name for field in AuditEvent._meta.fields]
