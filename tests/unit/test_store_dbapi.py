"""``store.dbapi``: the hot statements run on the transaction's DB-API cursor give what
SQLAlchemy's own execution of the same construct gives (rows, types, what is stored and
read back through the ORM), and a driver error is mapped as Core maps it (503, 507, a
statement error, a lost PostgreSQL connection).

SQLite files by default; fresh PostgreSQL databases with JOBFERRY_TEST_DB=postgres
(tests.db). Tests named ``..._on_sqlite_...`` build their own SQLite file; tests named
``..._on_postgres_...`` always need PostgreSQL.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Engine, MetaData, String, Table, select, text
from sqlalchemy.exc import DBAPIError

from jobferry.api.base import status_for
from jobferry.errors import StoreFullError, StoreUnavailableError
from jobferry.services.execution import _record_handle_sql
from jobferry.staging.paths import make_job_dir
from jobferry.store.dbapi import RawStatement
from jobferry.store.engine import SessionFactory, make_engine, make_session_factory, upgrade_schema
from jobferry.store.models import Job, JobState, Node, new_id
from jobferry.store.records import DRAINED, INSERT_OUTPUT, JOB_FILES, JOBS, STATE, _running_sql
from jobferry.store.transitions import _claim_sql, _finish_sql
from tests.db import fresh_pg_database
from tests.services import require

#: A timestamp with microseconds, which a text (SQLite) or timestamp (PostgreSQL) column keeps.
WHEN = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def add_job(
    sessions: Any,
    user_id: str,
    *,
    state: JobState = JobState.QUEUED,
    priority: int = 0,
    age: int = 0,
    destination: str = "local",
    home_node: str | None = None,
    runner_options: dict[str, Any] | None = None,
    memory_mb: int | None = None,
    attempt: int = 0,
    node: str | None = None,
) -> str:
    with sessions.begin() as session:
        job = Job(
            uuid=str(uuid.uuid4()),
            user_id=user_id,
            name="j",
            argv=["python3", "x.py", {"nested": [1, 2.5, None, "é"]}],
            job_dir="/nonexistent",
            state=state.value,
            destination=destination,
            home_node=home_node,
            runner="local",
            priority=priority,
            memory_mb=memory_mb,
            walltime_s=12.5,
            runner_options=runner_options,
            attempt=attempt,
            node=node,
            created_at=WHEN + timedelta(seconds=age),
        )
        session.add(job)
        session.flush()
        return job.id


@pytest.fixture
def jobs(sessions: Any, user_id: str) -> list[str]:
    """Queued jobs of two users, several destinations and options, and one running."""
    other = add_user(sessions, "bob")
    return [
        add_job(sessions, user_id, age=0, runner_options={"partition": "p", "qos": None}),
        add_job(sessions, other, age=1, memory_mb=64),
        add_job(sessions, user_id, age=2, priority=3, home_node="n2"),
        add_job(sessions, other, age=3, destination="remote", home_node="n2"),
        add_job(sessions, user_id, age=4, state=JobState.RUNNING, attempt=1, node="n1"),
    ]


def add_user(sessions: Any, name: str) -> str:
    from jobferry.store.models import User

    with sessions.begin() as session:
        user = User(username=name)
        session.add(user)
        session.flush()
        return user.id


def core_then_raw(engine: Engine, raw: RawStatement, params: dict[str, Any]) -> tuple[Any, Any]:
    """The rows of *raw*'s construct through Core, then through the DB-API cursor, each
    in a transaction rolled back (so both see the same store)."""
    with engine.connect() as conn:
        core = [tuple(row) for row in conn.execute(raw.statement, params).all()]
        conn.rollback()
        mine = raw.all(conn, params)
        conn.rollback()
    return core, mine


def same(mine: Any, core: Any) -> bool:
    """Equal rows whose values are of the same types (a datetime, not its text)."""
    types = [[type(value) for value in row] for row in mine]
    return bool(mine == core and types == [[type(value) for value in row] for row in core])


def stored_rows(conn: Any, table: Table, where: Any) -> list[tuple[Any, ...]]:
    """A table's rows as the driver returns them (SQLite: the stored text of datetimes)."""
    sql = str(select(table).where(where).compile(conn, compile_kwargs={"literal_binds": True}))
    return [tuple(row) for row in conn.exec_driver_sql(sql).all()]


def test_the_claim_statements_give_the_rows_core_gives_for_every_shape(
    engine: Engine, jobs: list[str]
) -> None:
    fit = {"total_cores": 4, "total_memory_mb": 1000, "total_gpus": 0}
    for destinations, fitted, homed, anywhere in [
        (("local",), False, False, ()),
        (("local", "remote"), True, True, ("remote",)),
        (("local", "remote"), True, True, ()),
        (("nowhere",), False, False, ()),
    ]:
        sql = _claim_sql(engine.dialect.name, destinations, fitted, homed, anywhere)
        params: dict[str, Any] = {"home": "n1", **(fit if fitted else {})}
        core, mine = core_then_raw(engine, sql.candidate, params)
        assert same(mine, core)
        core, mine = core_then_raw(engine, sql.more, params)
        assert same(mine, core)
    sql = _claim_sql(engine.dialect.name, ("local",), False, False, ())
    claim = {"job_id": jobs[0], "claim_node": "n1", "claim_now": WHEN}
    core, mine = core_then_raw(engine, sql.claim, claim)
    assert same(mine, core) and len(mine) == 1
    row = dict(zip(sql.claim.statement.exported_columns.keys(), mine[0], strict=True))
    assert row["argv"] == ["python3", "x.py", {"nested": [1, 2.5, None, "é"]}]
    assert row["runner_options"] == {"partition": "p", "qos": None}
    assert row["created_at"] == WHEN and row["created_at"].tzinfo is not None
    assert (row["attempt"], row["walltime_s"]) == (1, 12.5)


def test_the_small_reads_give_what_core_gives(
    engine: Engine, sessions: Any, jobs: list[str]
) -> None:
    with sessions.begin() as session:
        session.add(Node(name="n1", url="http://n1", drained=True))
    assert core_then_raw(engine, DRAINED, {"node": "n1"}) == ([(True,)], [(True,)])
    assert core_then_raw(engine, DRAINED, {"node": "n9"}) == ([], [])
    assert core_then_raw(engine, STATE, {"job_id": jobs[4]}) == ([("running",)], [("running",)])
    for destinations in [("local",), ("local", "remote"), ()]:
        core, mine = core_then_raw(engine, _running_sql(destinations), {})
        assert same(mine, core)
    assert core_then_raw(engine, _running_sql(("local",)), {})[1] == [("local", 1)]


@pytest.mark.parametrize("fenced_by_node", [True, False])
def test_the_end_and_handle_writes_store_what_core_stores(
    engine: Engine, sessions: Any, jobs: list[str], fenced_by_node: bool
) -> None:
    running = jobs[4]
    fence = {"job_id": running, "fence_attempt": 1, "fence_node": "n1", "now": WHEN}
    finish = {
        **fence,
        "to_state": "ok",
        "reason": "done",
        "code": 0,
        "finished": WHEN + timedelta(microseconds=1),
        "metric_wall_s": 1.25,
        "metric_cpu_user_s": None,
        "metric_cpu_sys_s": 0.5,
        "metric_peak_rss_kb": 1234,
    }
    handle = {**fence, "new_handle": '{"pid": 1}', "new_external_id": "x-1"}
    where = JOBS.c.id == running
    for raw, params in [
        (_finish_sql(fenced_by_node), finish),
        (_record_handle_sql(fenced_by_node), handle),
    ]:
        with engine.connect() as conn:
            core_result = conn.execute(raw.statement, params)
            core_rows = core_result.all() if core_result.returns_rows else core_result.rowcount
            core_stored = stored_rows(conn, JOBS, where)
            conn.rollback()
            mine = raw.all(conn, params) if core_result.returns_rows else raw.rowcount(conn, params)
            assert stored_rows(conn, JOBS, where) == core_stored
            conn.rollback()
        assert mine == ([tuple(r) for r in core_rows] if isinstance(core_rows, list) else core_rows)
    stale = {**finish, "fence_attempt": 2}
    with engine.connect() as conn:
        assert _finish_sql(fenced_by_node).rowcount(conn, stale) == 0
        conn.rollback()


def test_values_written_raw_read_back_identically_through_the_orm(
    engine: Engine, sessions: Any, jobs: list[str]
) -> None:
    """Datetimes (microseconds, aware UTC), floats, integers and text written on the
    DB-API cursor are what the ORM reads back, on both engines."""
    running = jobs[4]
    params = {
        "job_id": running,
        "fence_attempt": 1,
        "fence_node": "n1",
        "now": WHEN,
        "to_state": "error",
        "reason": "no",
        "code": 3,
        "finished": WHEN + timedelta(hours=1, microseconds=7),
        "metric_wall_s": 0.1,
        "metric_cpu_user_s": 2.0,
        "metric_cpu_sys_s": None,
        "metric_peak_rss_kb": 99,
    }
    outputs = [
        {
            "id": new_id(),
            "job_id": running,
            "kind": "output",
            "name": name,
            "param": None,
            "size": 7,
            "sha256": "0" * 64,
            "created_at": WHEN,
        }
        for name in ("a.txt", "sub/é.txt")
    ]
    with sessions.transaction() as conn:
        assert _finish_sql(True).rowcount(conn, params) == 1
        INSERT_OUTPUT.many(conn, outputs)
    with sessions.begin() as session:
        job = session.get(Job, running)
        assert job is not None
        assert (job.state, job.state_reason, job.exit_code) == ("error", "no", 3)
        assert job.finished_at == params["finished"] and job.updated_at == WHEN
        assert (job.wall_s, job.cpu_user_s, job.cpu_sys_s, job.peak_rss_kb) == (0.1, 2.0, None, 99)
        files = session.execute(
            select(JOB_FILES.c.name, JOB_FILES.c.created_at).where(JOB_FILES.c.job_id == running)
        ).all()
    assert sorted(files) == [("a.txt", WHEN), ("sub/é.txt", WHEN)]
    with engine.connect() as conn:  # stored as Core stores it (SQLite: the same ISO text)
        mine = stored_rows(conn, JOB_FILES, JOB_FILES.c.job_id == running)
        conn.execute(JOB_FILES.delete().where(JOB_FILES.c.job_id == running))
        conn.execute(JOB_FILES.insert(), outputs)
        core = stored_rows(conn, JOB_FILES, JOB_FILES.c.job_id == running)
        conn.rollback()
    assert sorted(mine) == sorted(core)


# --- errors --------------------------------------------------------------------------------


@pytest.fixture
def sqlite_sessions(tmp_path: Path) -> Iterator[SessionFactory]:
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    upgrade_schema(engine)
    try:
        yield SessionFactory(engine)
    finally:
        engine.dispose()


def _an_output(job_id: str, name: str) -> dict[str, Any]:
    return {
        "id": new_id(),
        "job_id": job_id,
        "kind": "output",
        "name": name,
        "param": None,
        "size": 1,
        "sha256": "0" * 64,
        "created_at": WHEN,
    }


def test_a_locked_store_on_sqlite_under_a_raw_statement_is_503(
    sqlite_sessions: SessionFactory, tmp_path: Path
) -> None:
    user = add_user(sqlite_sessions, "alice")
    job_id = add_job(sqlite_sessions, user)
    with closing(sqlite3.connect(tmp_path / "store.db", isolation_level=None)) as other:
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreUnavailableError) as caught:
            with sqlite_sessions.transaction() as conn:
                conn.exec_driver_sql("PRAGMA busy_timeout = 1")
                INSERT_OUTPUT.many(conn, [_an_output(job_id, "a")])
        other.execute("ROLLBACK")
    assert not isinstance(caught.value, StoreFullError) and status_for(caught.value) == 503
    assert isinstance(caught.value.__cause__, DBAPIError)
    assert isinstance(caught.value.__cause__.orig, sqlite3.OperationalError)


def test_a_full_store_on_sqlite_under_a_raw_statement_is_507(
    sqlite_sessions: SessionFactory,
) -> None:
    user = add_user(sqlite_sessions, "alice")
    job_id = add_job(sqlite_sessions, user)
    with pytest.raises(StoreFullError) as caught:
        with sqlite_sessions.transaction() as conn:
            pages = conn.exec_driver_sql("PRAGMA page_count").scalar()
            conn.exec_driver_sql(f"PRAGMA max_page_count = {pages}")
            INSERT_OUTPUT.many(conn, [_an_output(job_id, "x" * 100_000 + str(i)) for i in range(9)])
    assert status_for(caught.value) == 507 and "full" in caught.value.details["reason"]
    with sqlite_sessions.begin() as session:  # nothing of it was stored
        assert session.execute(select(JOB_FILES.c.id)).all() == []


def test_a_statement_error_on_sqlite_is_a_dbapi_error_not_an_outage(
    sqlite_sessions: SessionFactory,
) -> None:
    missing = RawStatement(select(Table("no_such_table", MetaData(), Column("x", String))))
    with pytest.raises(DBAPIError) as caught:
        with sqlite_sessions.transaction() as conn:
            missing.all(conn, {})
    assert not isinstance(caught.value, StoreUnavailableError)
    assert "no_such_table" in str(caught.value)


def test_a_lost_connection_on_postgres_under_a_raw_statement_is_503_and_replaced() -> None:
    require("postgres")
    engine = make_engine(fresh_pg_database(), pool_size=1)
    killer = make_engine(engine.url.render_as_string(hide_password=False))
    try:
        upgrade_schema(engine)
        sessions = make_session_factory(engine)
        with pytest.raises(StoreUnavailableError) as caught:
            with sessions.transaction() as conn:
                pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
                with killer.connect() as admin:
                    admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
                    admin.commit()
                STATE.scalar(conn, {"job_id": "x"})
        assert "cannot be reached" in caught.value.message and status_for(caught.value) == 503
        assert isinstance(caught.value.__cause__, DBAPIError)
        assert caught.value.__cause__.connection_invalidated
        with sessions.transaction() as conn:  # the pool replaced the connection
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar() != pid
            assert STATE.scalar(conn, {"job_id": "x"}) is None
    finally:
        killer.dispose()
        engine.dispose()


# --- make_job_dir ----------------------------------------------------------------------------


def test_make_job_dir_makes_missing_parents_and_keeps_what_exists(tmp_path: Path) -> None:
    job_dir = tmp_path / "jobs" / "ab" / "abcdef"
    make_job_dir(str(job_dir))
    assert (job_dir / "work").is_dir()
    (job_dir / "work" / "kept").write_text("x")
    make_job_dir(job_dir)  # again: nothing changes
    assert (job_dir / "work" / "kept").read_text() == "x"
    other = tmp_path / "jobs" / "ab" / "other"
    other.mkdir()  # made at submission (uploads), without its work directory
    make_job_dir(other)
    assert (other / "work").is_dir()
