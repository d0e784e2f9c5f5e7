"""CompiledQuery on real rows: the ORM's rows and conversions, compiled once per connection."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from django.db import connections
from django.db.models.sql.query import Query
from django.utils import timezone

from apps.tenants.models import ApiKey, Tenant
from control_plane.compiled import CompiledQuery
from tests.apps.tenants.factories import TenantFactory, make_api_key

FIELDS = ("id", "prefix", "tenant__slug", "tenant__active", "scopes", "expires_at", "revoked_at")


def _by_tenant() -> CompiledQuery:
    return CompiledQuery(
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


@pytest.fixture
def compiles(monkeypatch) -> Iterator[list[int]]:
    """Each ORM compile, counted (by the thread's id)."""
    import threading

    real = Query.get_compiler
    seen: list[int] = []

    def counted(self: Query, *args: Any, **kwargs: Any) -> Any:
        seen.append(threading.get_ident())
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Query, "get_compiler", counted)
    yield seen


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


def test_the_platforms_compiled_queries_read_what_the_orm_reads(keys):
    from apps.gateway import selectors
    from apps.tenants import keys as tenant_keys

    for compiled in selectors._QUERIES:
        built = compiled._build()
        assert compiled.rows() == list(built)
    for row in keys:
        built = tenant_keys._BY_DIGEST._build(digest=row.key_hash)
        assert tenant_keys._BY_DIGEST.rows(digest=row.key_hash) == list(built)


def test_a_value_is_a_parameter_never_sql(keys):
    query = _by_tenant()
    assert query.rows(slug="alpha' OR '1'='1") == []
    assert query.rows(slug="%") == []
    assert len(query.rows(slug="alpha")) == 2


def test_nothing_is_compiled_again_on_the_same_connection(keys, compiles):
    query = _by_tenant()
    assert len(query.rows(slug="alpha")) == 2
    assert len(query.rows(slug="bravo")) == 1
    assert len(compiles) == 1


@pytest.mark.django_db(transaction=True)
def test_each_thread_compiles_once_for_its_connection_even_reconnected(keys, compiles):
    import threading

    query = _by_tenant()
    assert len(query.rows(slug="alpha")) == 2

    def in_thread() -> list[int]:
        try:
            counts = [len(query.rows(slug="alpha"))]
            connections["default"].close()  # as the gateway's database threads do after an error
            counts.append(len(query.rows(slug="bravo")))
            return counts
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=1) as pool:
        assert pool.submit(in_thread).result() == [2, 1]
    main = threading.get_ident()
    assert compiles.count(main) == 1
    assert len(compiles) == 2  # one more, on the other thread, for its reads either side of the reconnect


def test_parameters_whose_names_begin_alike_are_each_substituted(keys):
    query = CompiledQuery(
        lambda slug, slug_of_key: ApiKey.objects.filter(tenant__slug=slug, name=slug_of_key).values_list("name"),
        "slug",
        "slug_of_key",
    )
    assert query.rows(slug="alpha", slug_of_key="second") == [("second",)]
    assert query.rows(slug="bravo", slug_of_key="second") == []


def test_an_empty_query_is_no_rows(keys):
    query = CompiledQuery(lambda slug: ApiKey.objects.filter(tenant__slug=slug, id__in=[]).values_list("id"), "slug")
    assert query.rows(slug="alpha") == []


def test_its_parameters_are_checked(db):
    query = _by_tenant()
    with pytest.raises(TypeError, match="takes \\['slug'\\]"):
        query.rows(tenant="alpha")
    not_a_filter = CompiledQuery(lambda slug: Tenant.objects.values_list("id"), "slug")
    with pytest.raises(ValueError, match="\\['slug'\\] are not filters' exact values"):
        not_a_filter.rows(slug="alpha")
    # A value the ORM escapes or wraps (LIKE) would be substituted unescaped: refused.
    contains = CompiledQuery(lambda slug: Tenant.objects.filter(slug__contains=slug).values_list("id"), "slug")
    with pytest.raises(ValueError, match="not filters' exact values"):
        contains.rows(slug="alpha")
    twice = CompiledQuery(
        lambda slug: Tenant.objects.filter(slug=slug, name__startswith=slug).values_list("id"), "slug"
    )
    with pytest.raises(ValueError, match="not filters' exact values"):
        twice.rows(slug="alpha")
    flat = CompiledQuery(lambda slug: Tenant.objects.filter(slug=slug).values_list("id", flat=True), "slug")
    with pytest.raises(TypeError, match="values_list"):
        flat.rows(slug="alpha")
