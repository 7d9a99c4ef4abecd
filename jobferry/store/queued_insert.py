"""A batch of queued submissions stored on PostgreSQL in one statement, one round trip.

Why: ``GroupInserter``'s usual transaction (``insert_jobs``) is a BEGIN, the
jobs' ``executemany`` (psycopg's pipeline: a message and a flush per row), the
``pg_notify`` and a COMMIT, each its own wait on the server. Measured on the
acceptance benchmark's machine with batches of four: 9 ``sendto``, 4 ``recvfrom``
and 15 ``poll`` calls, and 0.6-0.8 ms of the daemon's CPU per batch. Every wait
is also the worker thread giving up the GIL and queueing to take it back from
the busy event loop.

So a batch that is only new queued jobs (the usual submission: no uploaded
files, no attached rows, nothing started at once) goes out as one statement on
an autocommit connection, its rows as one JSON document::

    WITH stored AS (INSERT INTO jobs (...) SELECT r.id, ...
                    FROM json_populate_recordset(NULL::jobs, %s::json) AS r)
    SELECT pg_notify(...)

One statement is atomic by itself, so the jobs and the notification commit
together or not at all, as in the transaction it replaces; its failures are
SQLAlchemy's (``exec_driver_sql``), so the unit of work maps them as it maps any
(``StoreUnavailableError``, ``StoreFullError``) and ``GroupInserter`` retries the
batch's submissions one by one on any error.

One document rather than a parameter per value: ``json.dumps`` writes every row
in C, where psycopg adapts each value in Python, and the statement is the same
for every batch size (psycopg re-parses one of more than 50 parameters at every
execution; the server plans this one once). Same batches, same machine: 0.27 ms
of CPU for four rows, against 0.46 with an array per column (``unnest``) and 0.7
with the transaction.

The rows are stored as SQLAlchemy stores them (a test compares every column's
text): the columns a row leaves out get their model default (``id``,
``command``...), times are UTC without a zone (``UTCDateTime``), and None in a
JSON column is JSON's null (``COALESCE``: the document's null would be SQL's
NULL). A row this cannot write exactly (a value JSON has no form for, NaN) is
declined, and goes through the transaction. SQLite, and any other batch, keep
``insert_jobs``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Float, Integer, String

from jobferry.store.engine import SessionFactory
from jobferry.store.models import Base, JobState, UTCDateTime
from jobferry.store.notify import CHANNEL

_JOBS = Base.metadata.tables["jobs"]
#: Column types whose values JSON carries exactly (String covers Text).
_PLAIN_TYPES = (String, Integer, Float, JSON, UTCDateTime)


@dataclass(frozen=True)
class _Plan:
    """The statement for rows of some columns, and the defaults of the rest."""

    sql: str
    #: The model defaults of the columns the rows leave out: (name, value or
    #: callable, whether callable: then called per row).
    defaults: tuple[tuple[str, Any, bool], ...]


#: Plans built so far, by the column names given (a few sets in practice; bounded).
_PLANS: dict[tuple[str, ...], _Plan | None] = {}
_MAX_PLANS = 64


def _plan(given: tuple[str, ...]) -> _Plan | None:
    """The plan for rows of the columns *given*; None if one is not a jobs column or
    of a type this does not write."""
    if given in _PLANS:
        return _PLANS[given]
    plan: _Plan | None = None
    if all(name in _JOBS.c for name in given):
        defaulted = [c for c in _JOBS.c if c.name not in given and c.default is not None]
        every = [*(_JOBS.c[name] for name in given), *defaulted]
        if all(isinstance(c.type, _PLAIN_TYPES) for c in every):
            select_list = ", ".join(
                f"COALESCE(r.{c.name}, 'null'::json)" if isinstance(c.type, JSON) else f"r.{c.name}"
                for c in every
            )
            sql = (
                f"WITH stored AS (INSERT INTO jobs ({', '.join(c.name for c in every)}) "
                f"SELECT {select_list} FROM json_populate_recordset(NULL::jobs, %s::json) AS r) "
                f"SELECT pg_notify('{CHANNEL}', '')"
            )
            defaults = []
            for column in defaulted:
                default: Any = column.default
                defaults.append((column.name, default.arg, bool(default.is_callable)))
            plan = _Plan(sql, tuple(defaults))
    if len(_PLANS) < _MAX_PLANS:
        _PLANS[given] = plan
    return plan


def _utc_naive(value: Any) -> str:
    """``json.dumps``' hook: a time as ``UTCDateTime`` stores it (UTC, no zone)."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None).isoformat()
    raise TypeError(f"no JSON form for {type(value).__name__}")


def insert_queued(units: SessionFactory, rows: Sequence[dict[str, Any]]) -> bool:
    """Store *rows* (whole job rows, ``records.job_values``) and notify the other
    nodes in one statement; False, having done nothing, when this store or these rows
    are not its kind (not PostgreSQL, a job not queued, rows of different columns, a
    value JSON cannot carry exactly): then the caller stores them in a transaction."""
    if units.dialect != "postgresql" or not rows:
        return False
    given = tuple(rows[0])
    queued = JobState.QUEUED.value
    if any(row.get("state") != queued or tuple(row) != given for row in rows):
        return False
    plan = _plan(given)
    if plan is None:
        return False
    if plan.defaults:
        rows = [
            {**row, **{name: arg(None) if per_row else arg for name, arg, per_row in plan.defaults}}
            for row in rows
        ]
    try:
        document = json.dumps(rows, default=_utc_naive, allow_nan=False)
    except (TypeError, ValueError):
        return False
    with units.statement() as connection:
        connection.exec_driver_sql(plan.sql, (document,))
    return True
