from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from apps.registry.models import Model, ModelVersion
from apps.tenants.models import ApiKey, Role, Tenant
from tests.apps.tenants.factories import MembershipFactory, TenantFactory, UserFactory, make_api_key


@pytest.fixture(autouse=True)
def _fresh_cache():
    cache.clear()
    yield
    cache.clear()


@dataclass
class TenantWorld:
    """A tenant with a user in every role and a key for every scope."""

    tenant: Tenant
    users: dict[str, Any]
    keys: dict[str, str]
    key_rows: dict[str, ApiKey]
    model_name: str = ""

    def session(self, role: str) -> APIClient:
        client = APIClient()
        client.force_authenticate(user=None)
        client.force_login(self.users[role])
        return client

    def bearer(self, scope: str) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {self.keys[scope]}")
        return client


def build_world(slug: str) -> TenantWorld:
    tenant = TenantFactory.create(slug=slug)
    users: dict[str, Any] = {}
    for role in Role.values:
        user = UserFactory.create(username=f"{slug}-{role}")
        membership = MembershipFactory.create(tenant=tenant, role=role, user=user)
        users[role] = membership.user
    keys, rows = {}, {}
    for scope in ("infer", "read", "manage"):
        row, raw = make_api_key(tenant, [scope], name=f"{slug}-{scope}")
        keys[scope], rows[scope] = raw, row
    model = Model.objects.create(tenant=tenant, name=f"{slug}-model")
    ModelVersion.objects.create(
        model=model,
        number=1,
        artifact=f"{slug}/none",
        sha256="0" * 64,
        size_bytes=1,
        status=ModelVersion.Status.READY,
        format="onnx",
    )
    return TenantWorld(tenant=tenant, users=users, keys=keys, key_rows=rows, model_name=model.name)


@pytest.fixture
def world_a(db) -> TenantWorld:
    return build_world("alpha")


@pytest.fixture
def world_b(db) -> TenantWorld:
    return build_world("bravo")


@pytest.fixture
def staff_client(db) -> APIClient:
    client = APIClient()
    client.force_login(UserFactory.create(username="platform-staff", is_staff=True))
    return client
