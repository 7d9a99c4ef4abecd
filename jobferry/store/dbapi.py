"""A statement compiled once per dialect, run on the transaction's own DB-API cursor.

Why: the statements every job's life runs (its claim, its handle, its end) cost
~20 us each through SQLAlchemy Core on SQLite even when the statement is built
once and its compiled form is cached, against ~5 us for the same SQL straight on
the sqlite3 cursor (measured in-process; in the running daemon every cost is 3-5x
that). ``Connection.exec_driver_sql`` saves only a sixth of it: the execution
context and result object are what cost, not the compilation. So a hot statement
is kept as its one SQLAlchemy construct (its single definition: nothing is
hand-written SQL that could drift from the models), compiled by SQLAlchemy once per
dialect with that dialect's paramstyle (sqlite3: qmark, psycopg: pyformat), and
executed on the DB-API connection of the Core ``Connection`` the caller's unit of
work already holds (``SessionFactory.transaction``). The transaction, its commit,
the pool, SQLite's one-writer lock and the error mapping of ``_unit_of_work`` stay
exactly as they are.

What SQLAlchemy would do around the cursor is done here too, from SQLAlchemy's own
parts: every parameter goes through its type's bind processor (datetimes become
SQLite's ISO text, JSON is serialised), every result column through its type's
result processor (aware UTC datetimes, parsed JSON), values fixed in the statement
(``records.in_fixed``, a LIMIT) are taken from the compiled statement, and a driver
error goes through the connection's own error handling (``_handle_dbapi_exception``:
wrapped in ``DBAPIError``, a lost connection invalidated with its pool), so that
``_unit_of_work`` maps it to ``StoreUnavailableError``/``StoreFullError`` as before.
What is not done: ``before_cursor_execute`` events (none in the daemon) and
SQLAlchemy's statement logging (``echo``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement
from sqlalchemy.types import TypeEngine

#: A bind or result processor (None: the value passes as it is).
_Processor = Callable[[Any], Any] | None


class _Compiled:
    """One statement as one dialect runs it."""

    __slots__ = ("sql", "places", "fixed", "varying", "dialect", "types", "results")

    def __init__(
        self,
        sql: str,
        places: tuple[tuple[str, _Processor, Any], ...] | None,
        fixed: dict[str, Any],
        varying: tuple[tuple[str, _Processor], ...],
        dialect: Dialect,
        types: tuple[TypeEngine[Any], ...],
    ) -> None:
        self.sql = sql
        #: Positional paramstyles: each place's name, its processor and, for values
        #: fixed in the statement, the processed value (else ``_VARYING``).
        self.places = places
        #: Named paramstyles: the fixed values (processed), the varying names' processors.
        self.fixed = fixed
        self.varying = varying
        self.dialect = dialect
        #: The result columns' types.
        self.types = types
        #: A processor per result column (None: none needs one), known from the first
        #: result: some depend on the driver's type code (PostgreSQL's numerics), as Core's.
        self.results: tuple[_Processor, ...] | None | object = _UNKNOWN

    def result_processors(self, description: Any) -> tuple[_Processor, ...] | None:
        """The result columns' processors, as Core chooses them from *description*."""
        found = tuple(
            type_._cached_result_processor(self.dialect, column[1])  # what Core applies
            for type_, column in zip(self.types, description, strict=True)
        )
        return found if any(found) else None


_VARYING = object()
_UNKNOWN = object()


def _compile(statement: ClauseElement, dialect: Dialect) -> _Compiled:
    compiled = statement.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
    assert isinstance(compiled, SQLCompiler)
    if compiled.escaped_bind_names:  # pragma: no cover - our names are plain
        raise ValueError(f"bind names need escaping: {compiled.escaped_bind_names}")
    values = compiled.params  # every bound name: its fixed value, or None
    varying_names = {
        compiled.bind_names[bind]
        for bind in compiled.bind_names
        if bind.required or (bind.value is None and bind.callable is None)
    }
    processors: Mapping[str, Any] = compiled._bind_processors  # the ones Core would use

    def fixed_value(name: str) -> Any:
        processor = processors.get(name)
        return values[name] if processor is None else processor(values[name])

    positions = compiled.positiontup
    places = None
    if positions is not None:
        places = tuple(
            (name, processors.get(name), _VARYING if name in varying_names else fixed_value(name))
            for name in positions
        )
    fixed = {name: fixed_value(name) for name in values if name not in varying_names}
    varying = tuple((name, processors.get(name)) for name in sorted(varying_names))
    types = tuple(column.type for column in getattr(statement, "exported_columns", ()))
    return _Compiled(str(compiled), places, fixed, varying, dialect, types)


class RawStatement:
    """*statement* (a SQLAlchemy construct, its only definition) run straight on the
    DB-API cursor of a Core connection's transaction; compiled on first use per
    dialect. Parameters are by name, as for ``Connection.execute``."""

    __slots__ = ("statement", "_by_dialect", "_lock")

    def __init__(self, statement: ClauseElement) -> None:
        self.statement = statement
        self._by_dialect: dict[str, _Compiled] = {}
        self._lock = threading.Lock()

    def compiled(self, dialect: Dialect) -> _Compiled:
        """The statement as *dialect* runs it (compiled once)."""
        found = self._by_dialect.get(dialect.name)
        if found is None:
            with self._lock:
                found = self._by_dialect.get(dialect.name)
                if found is None:
                    found = self._by_dialect[dialect.name] = _compile(self.statement, dialect)
        return found

    def sql(self, dialect: Dialect) -> str:
        """The SQL text *dialect* is sent (for tests and logs)."""
        return self.compiled(dialect).sql

    @staticmethod
    def _arguments(compiled: _Compiled, params: Mapping[str, Any]) -> Any:
        """*params* (by name) as the driver takes them for *compiled*, processed."""
        arguments: Any
        if compiled.places is not None:
            arguments = tuple(
                fixed
                if fixed is not _VARYING
                else (params[name] if processor is None else processor(params[name]))
                for name, processor, fixed in compiled.places
            )
        else:
            arguments = dict(compiled.fixed)
            for name, processor in compiled.varying:
                value = params[name]
                arguments[name] = value if processor is None else processor(value)
        return arguments

    def _run(self, conn: Connection, params: Any, fetch: bool, many: bool = False) -> Any:
        compiled = self.compiled(conn.dialect)
        if many:
            arguments = [self._arguments(compiled, each) for each in params]
        else:
            arguments = self._arguments(compiled, params)
        cursor = None
        try:
            cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            if many:
                cursor.executemany(compiled.sql, arguments)
            else:
                cursor.execute(compiled.sql, arguments)
            if not fetch:
                count = cursor.rowcount
                cursor.close()
                return count
            rows = cursor.fetchall()
            processors: Any = compiled.results
            if processors is _UNKNOWN:
                processors = compiled.results = compiled.result_processors(cursor.description)
            cursor.close()
        except BaseException as exc:
            # Exactly what Core does with any error of a statement: a driver error
            # becomes a DBAPIError (which ``_unit_of_work`` maps), a lost connection is
            # invalidated with its pool, an interrupt invalidates the connection too.
            conn._handle_dbapi_exception(exc, compiled.sql, arguments, cursor, None)
        if processors is None:
            return rows
        return [
            tuple(
                value if p is None or value is None else p(value)
                for p, value in zip(processors, row, strict=True)
            )
            for row in rows
        ]

    def all(self, conn: Connection, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Every row the statement returns, each a tuple of processed values."""
        rows: list[tuple[Any, ...]] = self._run(conn, params, fetch=True)
        return rows

    def first(self, conn: Connection, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """The first row, or None."""
        rows = self.all(conn, params)
        return rows[0] if rows else None

    def scalar(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        """The first row's first value, or None."""
        rows = self.all(conn, params)
        return rows[0][0] if rows else None

    def rowcount(self, conn: Connection, params: Mapping[str, Any]) -> int:
        """Run a statement that returns no rows; the number of rows it changed."""
        count: int = self._run(conn, params, fetch=False)
        return count

    def many(self, conn: Connection, params: list[Mapping[str, Any]]) -> None:
        """Run a statement that returns no rows once per set of *params* (executemany)."""
        if params:
            self._run(conn, params, fetch=False, many=True)
