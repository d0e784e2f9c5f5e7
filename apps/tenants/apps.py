from django.apps import AppConfig


class TenantsConfig(AppConfig):
    name = "apps.tenants"
    label = "tenants"

    def ready(self) -> None:
        # Registers the API-key scheme with drf-spectacular.
        from apps.tenants import schema  # noqa: F401
