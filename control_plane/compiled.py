"""Queries run over and over, compiled by the ORM once per database connection.

The gateway's database threads run the same few queries many times a second (the routing
table, API key re-checks). Compiling a queryset to SQL costs far more CPU than running it
on a small table (3.6 ms against 0.2 ms for the routing read on SQLite), and that CPU is
spent holding the GIL while the event loop waits for it. A ``CompiledQuery`` keeps the SQL
Django compiled for a connection and runs it again with new values; its rows are converted
as the ORM converts them (JSON decoded, booleans, datetimes made aware).

It leans on the SQL compiler's undocumented surface (``as_sql``, ``select``, ``col_count``,
``get_converters``, ``apply_converters``): the same steps Django's own ``values_list``
iterator takes. docs/decisions/005-compiled-queries.md says what to check on
a Django upgrade; tests/control_plane/test_compiled.py compares every query the platform
compiles this way with the ORM's own rows.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import EmptyResultSet
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import QuerySet
from django.db.models.query import ValuesListIterable
from django.db.models.sql.compiler import SQLCompiler

Row = tuple[Any, ...]


@dataclass(frozen=True)
class _Compiled:
    connection: BaseDatabaseWrapper
    sql: str | None  # None: the query can match nothing (Django's EmptyResultSet)
    params: tuple[Any, ...] = ()
    slots: tuple[tuple[str, tuple[int, ...]], ...] = ()  # parameter name → its positions in ``params``
    compiler: SQLCompiler | None = None
    converters: dict[int, tuple[list[Any], Any]] | None = None


def _marker(name: str) -> str:
    # A value no caller sends, with the characters LIKE lookups escape: a parameter the ORM
    # transforms (``iexact``, ``contains``, ...) no longer equals its marker and is refused.
    return f"\x00%_\\{_core(name)}\x00"


def _core(name: str) -> str:
    """What of a parameter's marker any transform of it still holds (ended, so that no
    parameter's is part of another's)."""
    return f"berth-parameter:{name}:"


class CompiledQuery:
    """A ``values_list`` queryset compiled once per thread's connection, run with new values.

    ``build`` must depend on its parameters only (anything else it reads, such as the time,
    is frozen at the first compile), and each parameter must be a filter's exact value (a
    string compared as it is: ``field=value``, ``field__in=[value]``).

    Args:
        build: Makes the queryset from its parameters, given by keyword, each a string.
        names: The parameters' names.
    """

    def __init__(self, build: Callable[..., QuerySet[Any]], *names: str) -> None:
        self._build = build
        self._names = names
        # Per thread, as Django's connections are: alias → the SQL compiled for the thread's
        # connection (held by the entry, which goes with the thread).
        self._local = threading.local()

    def rows(self, *, using: str = "default", **values: str) -> list[Row]:
        """The query's rows for these parameter values, converted as the ORM converts them.

        Args:
            using: The database alias (routers are not consulted).
            values: One string for each of the query's parameters.

        Raises:
            TypeError: The parameters given are not the query's, or ``build`` did not make a
                plain ``values_list()`` queryset.
            ValueError: A parameter is not a filter's exact value.
        """
        if set(values) != set(self._names):
            raise TypeError(f"this query takes {sorted(self._names)}, not {sorted(values)}")
        connection = connections[using]
        by_alias: dict[str, _Compiled] = self._local.__dict__.setdefault("by_alias", {})
        compiled = by_alias.get(using)
        if compiled is None or compiled.connection is not connection:
            compiled = by_alias[using] = self._compile(connection)
        if compiled.sql is None:
            return []
        params = list(compiled.params)
        for name, positions in compiled.slots:
            for position in positions:
                params[position] = values[name]
        with connection.cursor() as cursor:
            cursor.execute(compiled.sql, params)
            fetched: Sequence[Row] = cursor.fetchall()
        if compiled.compiler is None or not compiled.converters:
            return [tuple(row) for row in fetched]
        return [tuple(row) for row in compiled.compiler.apply_converters(fetched, compiled.converters)]

    def _compile(self, connection: BaseDatabaseWrapper) -> _Compiled:
        markers = {name: _marker(name) for name in self._names}
        queryset = self._build(**markers)
        if queryset._iterable_class is not ValuesListIterable:
            raise TypeError("a compiled query is a values_list() queryset (neither flat nor named)")
        compiler = queryset.query.get_compiler(connection=connection)
        try:
            sql, params = compiler.as_sql()
        except EmptyResultSet:
            return _Compiled(connection=connection, sql=None)
        columns = [selected[0] for selected in compiler.select[: compiler.col_count]]
        if compiler.has_extra_select or compiler.has_composite_fields(columns):
            raise TypeError("a compiled query selects its own columns only, none of a composite key")
        slots = tuple(
            (name, tuple(i for i, param in enumerate(params) if param == marker)) for name, marker in markers.items()
        )
        missing = [name for name, positions in slots if not positions]
        transformed = [
            name
            for name, marker in markers.items()
            if any(isinstance(param, str) and _core(name) in param and param != marker for param in params)
        ]
        if missing or transformed:
            raise ValueError(
                f"the query's parameters {missing + transformed} are not filters' exact values "
                "(a compiled query substitutes values as they are)"
            )
        return _Compiled(
            connection=connection,
            sql=sql,
            params=tuple(params),
            slots=slots,
            compiler=compiler,
            converters=compiler.get_converters(columns),
        )
