from __future__ import annotations

from typing import Any

import factory
from django.contrib.auth import get_user_model

from apps.tenants.access import Actor
from apps.tenants.models import ApiKey, Membership, Quota, Role, Tenant
from apps.tenants.services import api_key_create


class UserFactory(factory.django.DjangoModelFactory[Any]):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.django.Password("pw-test-123")


class TenantFactory(factory.django.DjangoModelFactory[Tenant]):
    class Meta:
        model = Tenant
        skip_postgeneration_save = True

    slug = factory.Sequence(lambda n: f"tenant-{n}")
    name = factory.LazyAttribute(lambda t: f"Tenant {t.slug}")
    quota = factory.RelatedFactory("tests.apps.tenants.factories.QuotaFactory", factory_related_name="tenant")


class QuotaFactory(factory.django.DjangoModelFactory[Quota]):
    class Meta:
        model = Quota

    tenant = factory.SubFactory(TenantFactory, quota=None)


class MembershipFactory(factory.django.DjangoModelFactory[Membership]):
    class Meta:
        model = Membership

    user = factory.SubFactory(UserFactory)
    tenant = factory.SubFactory(TenantFactory)
    role = Role.MEMBER


def make_api_key(tenant: Tenant, scopes: list[str], *, name: str = "test key") -> tuple[ApiKey, str]:
    """A real key through the service (so hashing is the production path)."""
    staff = UserFactory.create(username="key-maker", is_staff=True)
    return api_key_create(actor=Actor(user=staff), tenant=tenant, name=name, scopes=scopes)
