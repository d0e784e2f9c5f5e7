"""The gateway's database threads: an SQLite connection is kept from one call to the next
(opening one cost as much as the routing read) and dropped after an error; other
databases follow their ``CONN_MAX_AGE``."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.db import DatabaseError, connection

from apps.gateway.app import _DatabaseThreads

pytestmark = pytest.mark.django_db(transaction=True)


def _raw_connection() -> Any:
    connection.ensure_connection()
    return connection.connection


def _failing_query() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM no_such_table_here")


def _one_thread() -> _DatabaseThreads:
    threads = _DatabaseThreads()
    threads._pool = ThreadPoolExecutor(max_workers=1)  # every call on the same thread
    return threads


async def test_a_database_thread_keeps_its_sqlite_connection_until_an_error():
    threads = _one_thread()
    first = await threads.run(_raw_connection)
    second = await threads.run(_raw_connection)
    if connection.vendor == "sqlite":
        assert second is first
    else:  # the test settings' CONN_MAX_AGE of 0: a connection per call, as before
        assert connection.settings_dict["CONN_MAX_AGE"] == 0
        assert second is not first

    with pytest.raises(DatabaseError):
        await threads.run(_failing_query)
    after_error = await threads.run(_raw_connection)
    assert after_error is not second
    assert after_error is not first
