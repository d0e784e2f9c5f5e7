"""The gateway's database threads: an SQLite connection is kept from one call to the next
(opening one cost as much as the routing read), sees what other connections commit, and is
dropped after a database error, inside a transaction or not; other databases follow their
``CONN_MAX_AGE``."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.db import DatabaseError, connection, transaction

from apps.gateway.app import _DatabaseThreads
from apps.tenants.models import Tenant

pytestmark = pytest.mark.django_db(transaction=True)


def _raw_connection() -> Any:
    connection.ensure_connection()
    return connection.connection


def _failing_query() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM no_such_table_here")


def _failing_in_a_transaction() -> None:
    with transaction.atomic():
        Tenant.objects.count()
        _failing_query()


def _tenants() -> int:
    return Tenant.objects.count()


def _tenant_created(slug: str) -> None:
    Tenant.objects.create(slug=slug, name=slug)


@pytest.fixture
def one_thread() -> Iterator[_DatabaseThreads]:
    """Database threads with a single thread, so every call runs on the same one."""
    threads = _DatabaseThreads()
    threads._pool.shutdown()
    threads._pool = ThreadPoolExecutor(max_workers=1)
    yield threads
    threads._pool.shutdown()


async def test_a_database_thread_keeps_its_sqlite_connection_until_an_error(one_thread):
    first = await one_thread.run(_raw_connection)
    second = await one_thread.run(_raw_connection)
    if connection.vendor == "sqlite":
        assert second is first
    else:  # the test settings' CONN_MAX_AGE of 0: a connection per call, as before
        assert connection.settings_dict["CONN_MAX_AGE"] == 0
        assert second is not first

    with pytest.raises(DatabaseError):
        await one_thread.run(_failing_query)
    after_error = await one_thread.run(_raw_connection)
    assert after_error is not second

    # An error inside a transaction: the rollback clears Django's error flag; still dropped.
    with pytest.raises(DatabaseError):
        await one_thread.run(_failing_in_a_transaction)
    assert await one_thread.run(_raw_connection) is not after_error


async def test_a_kept_connection_sees_what_other_connections_commit(one_thread):
    other = _DatabaseThreads()
    try:
        before = await one_thread.run(_tenants)
        kept = await one_thread.run(_raw_connection)
        await other.run(_tenant_created, slug="seen-from-elsewhere")
        assert await one_thread.run(_tenants) == before + 1
        if connection.vendor == "sqlite":
            assert await one_thread.run(_raw_connection) is kept
    finally:
        other._pool.shutdown()
