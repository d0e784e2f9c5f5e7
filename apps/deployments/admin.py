from django.contrib import admin

from apps.deployments.models import Worker


@admin.register(Worker)
class WorkerAdmin(admin.ModelAdmin):
    list_display = ["worker_id", "device_kind", "device_name", "state", "last_heartbeat_at"]
    list_filter = ["state", "device_kind"]
    readonly_fields = [field.name for field in Worker._meta.fields]
