"""Staff edit device prices in the admin too (the console and the REST API also can)."""

from django.contrib import admin

from apps.monitoring.models import DevicePrice


@admin.register(DevicePrice)
class DevicePriceAdmin(admin.ModelAdmin):
    list_display = ["device_kind", "price_per_hour", "updated_at", "updated_by"]
