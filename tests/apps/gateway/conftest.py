from tests.apps.tenants.conftest import _fresh_cache, staff_client, world_a, world_b  # noqa: F401 — shared fixtures
