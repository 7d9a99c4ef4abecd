"""A batch of queued submissions stored on PostgreSQL in one statement, one round trip.

Why: ``GroupInserter``'s usual transaction (``insert_jobs``) is a BEGIN, the
jobs' ``executemany`` (psycopg's pipeline: a message and a flush per row), the
``pg_notify`` and a COMMIT, each its own wait on the server. Measured on the
acceptance benchmark's machine with batches of four: 9 ``sendto``, 4 ``recvfrom``
and 15 ``poll`` calls, and 0.7-0.8 ms of the daemon's CPU per batch, where the
same rows cost 0.3-0.4 ms on SQLite. Every wait is also the worker thread giving
up the GIL and queueing to take it back from the busy event loop.

So a batch that is only new queued jobs (the usual submission: no uploaded
files, no attached rows, nothing started at once) goes out as one statement on
an autocommit connection, one array per column::

    WITH stored AS (INSERT INTO jobs (...) SELECT * FROM unnest(%s::VARCHAR(32)[], ...))
    SELECT pg_notify(...)

One statement is atomic by itself, so the jobs and the notification commit
together or not at all, as in the transaction it replaces; its failures are
SQLAlchemy's (``exec_driver_sql``), so the unit of work maps them as it maps any
(``StoreUnavailableError``, ``StoreFullError``) and ``GroupInserter`` retries the
batch's submissions one by one on any error. Arrays rather than a ``VALUES`` row
per job: the statement and its parameters are the same for every batch size, so
psycopg converts it once (it re-parses a statement of more than 50 parameters at
every execution) and the server plans it once. SQLite, and any other batch, keep
``insert_jobs``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Dialect

from jobferry.store.engine import SessionFactory
from jobferry.store.models import Base, JobState
from jobferry.store.notify import CHANNEL

_JOBS = Base.metadata.tables["jobs"]


@dataclass(frozen=True)
class _Plan:
    """The statement for rows of some columns, and how each column's values are made
    as SQLAlchemy makes them: the columns the rows leave out get their model default
    (``id``, ``command`` ...), and every value goes through its type's bind processing
    (``UTCDateTime``: naive UTC; ``JSON``: serialized, None as JSON's null)."""

    sql: str
    given: tuple[str, ...]
    #: Defaults of the columns the rows leave out: a value, or a callable (per row).
    defaults: tuple[tuple[Any, bool], ...]
    #: The bind processor of each column (given, then defaulted), or None.
    processors: tuple[Callable[[Any], Any] | None, ...]


#: Plans built so far, by column names given (a few sets in practice; bounded anyway).
_PLANS: dict[tuple[str, tuple[str, ...]], _Plan] = {}
_MAX_PLANS = 64


def _plan(dialect: Dialect, given: tuple[str, ...]) -> _Plan:
    key = (dialect.name, given)
    plan = _PLANS.get(key)
    if plan is not None:
        return plan
    # Column names come from our code, never from a request; unknown ones fail here.
    columns = [_JOBS.c[name] for name in given]
    defaulted = [c for c in _JOBS.c if c.name not in given and c.default is not None]
    defaults = []
    for column in defaulted:
        default: Any = column.default
        defaults.append((default.arg, bool(default.is_callable)))
    every = [*columns, *defaulted]
    arrays = ", ".join(f"%s::{c.type.compile(dialect=dialect)}[]" for c in every)
    sql = (
        f"WITH stored AS (INSERT INTO jobs ({', '.join(c.name for c in every)}) "
        f"SELECT * FROM unnest({arrays})) SELECT pg_notify('{CHANNEL}', '')"
    )
    processors = tuple(c.type.dialect_impl(dialect).bind_processor(dialect) for c in every)
    plan = _Plan(sql, given, tuple(defaults), processors)
    if len(_PLANS) < _MAX_PLANS:
        _PLANS[key] = plan
    return plan


def insert_queued(units: SessionFactory, rows: Sequence[dict[str, Any]]) -> bool:
    """Store *rows* (whole job rows, ``records.job_values``) and notify the other
    nodes in one statement; False, having done nothing, when this store or these rows
    are not its kind (not PostgreSQL, a job not queued, rows of different columns):
    then the caller stores them in a transaction."""
    if units.dialect != "postgresql" or not rows:
        return False
    given = tuple(rows[0])
    queued = JobState.QUEUED.value
    if any(row.get("state") != queued or tuple(row) != given for row in rows):
        return False
    plan = _plan(units.engine.dialect, given)
    # One array per column (``unnest`` makes the rows): the same statement, and the
    # same parameters, for every batch size, so psycopg converts it once and the
    # server plans it once.
    values = [[row[name] for row in rows] for name in given]
    for arg, per_row in plan.defaults:
        values.append([arg(None) for _ in rows] if per_row else [arg] * len(rows))
    params = tuple(
        column if process is None else [process(value) for value in column]
        for process, column in zip(plan.processors, values, strict=True)
    )
    with units.statement() as connection:
        connection.exec_driver_sql(plan.sql, params)
    return True
