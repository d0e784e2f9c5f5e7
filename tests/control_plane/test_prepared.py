"""PreparedQuery on real rows: the ORM's rows and conversions, compiled once per connection."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.db import connections
from django.db.models.sql.query import Query
from django.utils import timezone

from apps.tenants.models import ApiKey, Tenant
from control_plane.prepared import PreparedQuery
from tests.apps.tenants.factories import TenantFactory, make_api_key

FIELDS = ("id", "prefix", "tenant__slug", "tenant__active", "scopes", "expires_at", "revoked_at")


def _by_tenant() -> PreparedQuery:
    return PreparedQuery(
        lambda slug: ApiKey.objects.filter(tenant__slug=slug).order_by("id").values_list(*FIELDS), "slug"
    )


@pytest.fixture
def keys(db) -> list[ApiKey]:
    alpha, bravo = TenantFactory.create(slug="alpha"), TenantFactory.create(slug="bravo", active=False)
    first, _ = make_api_key(alpha, ["infer", "read"], name="first")
    first.expires_at = timezone.now() + timedelta(days=1)
    first.revoked_at = timezone.now()
    first.save()
    second, _ = make_api_key(alpha, ["manage"], name="second")
    third, _ = make_api_key(bravo, ["infer"], name="third")
    return [first, second, third]


def test_rows_are_the_orms_rows_converted_as_it_converts_them(keys):
    query = _by_tenant()
    for slug in ("alpha", "bravo", "nobody"):
        expected = list(ApiKey.objects.filter(tenant__slug=slug).order_by("id").values_list(*FIELDS))
        assert query.rows(slug=slug) == expected
    first = query.rows(slug="alpha")[0]
    assert first[3] is True  # a boolean, not SQLite's 1
    assert first[4] == ["infer", "read"]  # JSON decoded
    assert first[5].tzinfo is not None and first[6].tzinfo is not None  # aware datetimes
    assert query.rows(slug="bravo")[0][3] is False


def test_a_value_is_a_parameter_never_sql(keys):
    query = _by_tenant()
    assert query.rows(slug="alpha' OR '1'='1") == []
    assert len(query.rows(slug="alpha")) == 2


def test_nothing_is_compiled_again_on_the_same_connection(keys, monkeypatch):
    query = _by_tenant()
    assert len(query.rows(slug="alpha")) == 2

    def no_compile(*args: object, **kwargs: object) -> None:
        raise AssertionError("compiled again")

    monkeypatch.setattr(Query, "get_compiler", no_compile)
    assert len(query.rows(slug="bravo")) == 1


@pytest.mark.django_db(transaction=True)
def test_each_thread_runs_it_on_its_own_connection(keys):
    query = _by_tenant()
    assert len(query.rows(slug="alpha")) == 2  # compiled for this thread's connection

    def in_thread(slug: str) -> tuple[int, int]:
        try:
            return len(query.rows(slug=slug)), id(connections["default"])
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=1) as pool:
        count, connection_id = pool.submit(in_thread, "alpha").result()
    assert count == 2
    assert connection_id != id(connections["default"])


def test_its_parameters_are_checked(db):
    query = _by_tenant()
    with pytest.raises(TypeError, match="takes \\['slug'\\]"):
        query.rows(tenant="alpha")
    not_a_filter = PreparedQuery(lambda slug: Tenant.objects.values_list("id"), "slug")
    with pytest.raises(ValueError, match="no parameter \\['slug'\\]"):
        not_a_filter.rows(slug="alpha")
