"""A batch of queued jobs stored on PostgreSQL in one statement (``store.queued_insert``).

It must store exactly what the transaction path (``records.insert_jobs``) stores,
notify the other nodes, decline what is not its kind, and fail as any unit of work
fails. SQLite files by default; fresh PostgreSQL databases with
JOBFERRY_TEST_DB=postgres (tests.db). Tests named ``..._on_postgres`` always need
PostgreSQL.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, select, text

from jobferry.errors import StoreUnavailableError
from jobferry.store import records
from jobferry.store.engine import SessionFactory, make_engine, make_session_factory, upgrade_schema
from jobferry.store.models import Job, JobState, User, utcnow
from jobferry.store.notify import CHANNEL
from jobferry.store.queued_insert import insert_queued
from jobferry.store.records import GroupInserter, insert_jobs, job_values
from tests.db import fresh_pg_database
from tests.services import require
from tests.unit.store_helpers import unreachable_postgres_url

#: Strings that mean something to SQL, to PostgreSQL's array literals or to JSON.
HOSTILE = [
    "plain",
    "a,b",
    "{x}",
    '"quoted"',
    "it's",
    "back\\slash",
    "NULL",
    "",
    "ünï ✓",
    "line\nbreak",
    '\t{"a": [1, 2]}',
    "%s %(x)s",
]


@pytest.fixture
def pg() -> Iterator[tuple[Engine, SessionFactory, str]]:
    """A migrated fresh PostgreSQL database, its session factory and a user's id."""
    require("postgres")
    engine = make_engine(fresh_pg_database())
    upgrade_schema(engine)
    units = make_session_factory(engine)
    with units.begin() as session:
        user = User(username="alice")
        session.add(user)
        session.flush()
        user_id = user.id
    try:
        yield engine, units, user_id
    finally:
        engine.dispose()


def _job(user_id: str, i: int) -> dict[str, Any]:
    """A queued job whose every column varies with *i*: strings from HOSTILE, None
    where the column allows it, nested JSON, floats and timestamps."""
    word = HOSTILE[i % len(HOSTILE)]
    job_id = uuid.uuid4().hex
    t = utcnow() - timedelta(seconds=i, microseconds=i * 7)
    return {
        "id": job_id,
        "uuid": str(uuid.uuid4()),
        "user_id": user_id,
        "name": f"job {word}",
        "description": None if i % 3 == 0 else word,
        "command": f"--name {word}",
        "argv": ["python", "script.py", word, {"nested": [word, i, None]}],
        "params": {} if i % 4 == 0 else {word: word, "n": i, "f": i / 3, "none": None},
        "priority": i % 5 - 2,
        "history_id": None if i % 2 else word,
        "destination": "local",
        "cores": 1 + i % 3,
        "memory_mb": None if i % 2 else 512 * i,
        "walltime_s": None if i % 3 else 0.5 + i,
        "runner_options": None if i % 2 == 0 else {"volumes": [word], "gpu": i % 2 == 1},
        "job_dir": f"/data/jobs/{job_id}",
        "created_at": t,
        "updated_at": t,
    }


def _stored(engine: Engine, ids: list[str]) -> list[dict[str, str | None]]:
    """Every column of the jobs *ids* as PostgreSQL's text (what is stored, exactly)."""
    columns = [c.name for c in records.JOBS.c]
    select_list = ", ".join(f"{name}::text AS {name}" for name in columns)
    out = []
    with engine.connect() as conn:
        for job_id in ids:
            row = conn.execute(
                text(f"SELECT {select_list} FROM jobs WHERE id = :id"), {"id": job_id}
            ).one()
            out.append(dict(row._mapping))
    return out


def test_queued_insert__stores_exactly_what_the_transaction_path_stores_on_postgres(
    pg: tuple[Engine, SessionFactory, str],
) -> None:
    engine, units, user_id = pg
    jobs = [_job(user_id, i) for i in range(len(HOSTILE) * 2)]
    twins = [
        {**job, "id": uuid.uuid4().hex, "uuid": str(uuid.uuid4()), "job_dir": f"/d/{i}"}
        for i, job in enumerate(jobs)
    ]
    with units.transaction() as connection:
        insert_jobs(connection, [(job, []) for job in jobs])
    now = utcnow()
    assert insert_queued(units, [job_values(twin, now) for twin in twins]) is True

    by_transaction = _stored(engine, [job["id"] for job in jobs])
    by_statement = _stored(engine, [twin["id"] for twin in twins])
    for old, new in zip(by_transaction, by_statement, strict=True):
        for key in ("id", "uuid", "job_dir"):
            old.pop(key), new.pop(key)
        assert new == old
    assert {row["state"] for row in by_statement} == {JobState.QUEUED.value}
    # None in a JSON column is JSON's null in both, never SQL's NULL.
    assert by_statement[0]["runner_options"] == "null"


def test_queued_insert__notifies_listening_nodes_when_it_commits_on_postgres(
    pg: tuple[Engine, SessionFactory, str],
) -> None:
    engine, units, user_id = pg
    conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as listener:
        listener.execute(f"LISTEN {CHANNEL}")
        rows = [job_values(_job(user_id, i), utcnow()) for i in range(3)]
        rows = [{**row, "created_at": rows[0]["created_at"]} for row in rows]
        assert insert_queued(units, rows) is True
        heard = [n.channel for n in listener.notifies(timeout=60, stop_after=1)]
    assert heard == [CHANNEL]
    with units.begin() as session:
        assert set(session.scalars(select(Job.id))) == {row["id"] for row in rows}


def test_queued_insert__declines_what_is_not_its_kind_and_stores_nothing(
    engine: Engine, sessions: SessionFactory, user_id: str
) -> None:
    now = utcnow()
    queued = [job_values(_job(user_id, i), now) for i in range(2)]
    running = {**job_values(_job(user_id, 9), now), "state": JobState.RUNNING.value}
    other_columns = {k: v for k, v in job_values(_job(user_id, 8), now).items() if k != "gpus"}
    # Values JSON cannot carry exactly, a column jobs does not have: the transaction's.
    not_a_number = {**job_values(_job(user_id, 7), now), "walltime_s": float("nan")}
    unknown = {**job_values(_job(user_id, 6), now), "no_such_column": 1}
    for rows in (
        [],
        [*queued, running],
        [*queued, other_columns],
        [not_a_number],
        [{**queued[0], "params": {"bytes": b"x"}}],
        [unknown],
    ):
        assert insert_queued(sessions, rows) is False
    if engine.dialect.name != "postgresql":
        assert insert_queued(sessions, queued) is False  # SQLite: the transaction path
    with sessions.begin() as session:
        assert session.scalar(text("SELECT count(*) FROM jobs")) == 0


def test_queued_insert__an_unreachable_postgres_is_store_unavailable() -> None:
    engine = make_engine(unreachable_postgres_url())
    try:
        row = job_values(_job(uuid.uuid4().hex, 1), utcnow())
        with pytest.raises(StoreUnavailableError):
            insert_queued(make_session_factory(engine), [row])
    finally:
        engine.dispose()


def test_group_inserter__loop_submissions_without_files_go_in_one_statement_on_postgres_only(
    engine: Engine,
    sessions: SessionFactory,
    user_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []

    def counted(units: SessionFactory, rows: list[dict[str, Any]]) -> bool:
        calls.append(len(rows))
        return insert_queued(units, rows)

    monkeypatch.setattr(records, "insert_queued", counted)
    inserter = GroupInserter(sessions, ThreadPoolExecutor(2))
    jobs = [_job(user_id, i) for i in range(30)]

    async def submit_all() -> list[dict[str, Any]]:
        return await asyncio.gather(*(inserter.insert_async(job, []) for job in jobs))

    rows = asyncio.run(submit_all())
    assert [row["id"] for row in rows] == [job["id"] for job in jobs]
    assert all(row["state"] == JobState.QUEUED.value for row in rows)
    assert calls == ([30] if engine.dialect.name == "postgresql" else [])
    with sessions.begin() as session:
        assert set(session.scalars(select(Job.id))) == {job["id"] for job in jobs}
