"""The SQL store on the test run's engine: migrations, schema checks and job state changes.

SQLite files by default; fresh PostgreSQL databases with JOBFERRY_TEST_DB=postgres
(tests.db). Tests named ``..._on_postgres_...`` always need PostgreSQL.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from jobferry.errors import ConflictError, SchemaOutOfDateError, StoreUnavailableError
from jobferry.store.engine import (
    SessionFactory,
    check_schema,
    current_revision,
    display_url,
    head_revision,
    is_empty,
    make_engine,
    make_session_factory,
    normalize_url,
    upgrade_schema,
)
from jobferry.store.models import TERMINAL_STATES, Base, Job, JobState, User
from jobferry.store.records import GroupInserter
from jobferry.store.transitions import (
    claim_queued_jobs,
    finish_job,
    mark_cancelled,
    requeue_job,
    transition_job,
    update_running_job,
)
from tests.db import database_url, fresh_pg_database, on_postgres
from tests.services import require

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def store_url(tmp_path: Path, name: str) -> str:
    """A new, empty store named *name* for this test (a SQLite file or a PG database)."""
    return database_url(tmp_path / name)


def add_job(
    sessions: sessionmaker[Session],
    user_id: str,
    *,
    state: JobState = JobState.QUEUED,
    priority: int = 0,
    created_at: datetime = T0,
    runner: str = "local",
    attempt: int = 0,
    name: str = "job",
) -> str:
    with sessions.begin() as session:
        job = Job(
            uuid=str(uuid.uuid4()),
            user_id=user_id,
            name=name,
            argv=["python", "script.py"],
            job_dir="/nonexistent/job",
            state=state.value,
            priority=priority,
            created_at=created_at,
            runner=runner,
            attempt=attempt,
        )
        session.add(job)
        session.flush()
        return job.id


def job_row(sessions: sessionmaker[Session], job_id: str) -> Job:
    with sessions.begin() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def claim(sessions: sessionmaker[Session], limit: int, node: str = "node-a") -> list[Job]:
    with sessions.begin() as session:
        return list(claim_queued_jobs(session, runner="local", node=node, limit=limit))


def finish(
    sessions: sessionmaker[Session], job_id: str, attempt: int, state: JobState = JobState.OK
) -> None:
    with sessions.begin() as session:
        finish_job(
            session,
            job_id,
            attempt,
            state,
            reason=None,
            exit_code=0,
            finished_at=T0,
            metrics={"wall_s": 1.5},
        )


# --- schema ---------------------------------------------------------------------------------


def _schema(engine: Engine) -> dict[str, Any]:
    """Everything the inspector reports about each table, in a comparable form."""
    insp = inspect(engine)
    tables: dict[str, Any] = {}
    for table in sorted(insp.get_table_names()):
        if table == "alembic_version":
            continue
        tables[table] = {
            # Sorted: a column added by a later migration comes last, which is fine.
            "columns": sorted(
                (c["name"], str(c["type"]), c["nullable"], c.get("default"))
                for c in insp.get_columns(table)
            ),
            "pk": insp.get_pk_constraint(table),
            "fks": sorted(
                (fk["name"], tuple(fk["constrained_columns"]), fk["referred_table"], fk["options"])
                for fk in insp.get_foreign_keys(table)
            ),
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                for i in insp.get_indexes(table)
            ),
            "uniques": sorted(
                (u["name"], tuple(u["column_names"])) for u in insp.get_unique_constraints(table)
            ),
        }
    return tables


def test_migrations__upgrade_head_matches_the_models(tmp_path: Path) -> None:
    migrated = make_engine(store_url(tmp_path, "migrated"))
    created = make_engine(store_url(tmp_path, "created"))
    try:
        assert upgrade_schema(migrated) == (None, head_revision())
        Base.metadata.create_all(created)
        with migrated.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            )
            diffs = compare_metadata(context, Base.metadata)
        # Alembic cannot compare an index with an expression (ix_jobs_claim's
        # "priority DESC") against SQLite's reflection, so it always reports it; the
        # inspector comparison below and the SQL check that follows cover it.
        expression_indexes = {"ix_jobs_claim"}
        diffs = [
            d
            for d in diffs
            if not (d[0] in ("add_index", "remove_index") and d[1].name in expression_indexes)
        ]
        assert diffs == []
        assert _schema(migrated) == _schema(created)
        for engine in (migrated, created):
            with engine.connect() as conn:
                sql = conn.exec_driver_sql(
                    "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_jobs_claim'"
                    if engine.dialect.name == "postgresql"
                    else "SELECT sql FROM sqlite_master WHERE name = 'ix_jobs_claim'"
                ).scalar_one()
            assert "priority DESC" in sql
        assert set(_schema(migrated)) == set(Base.metadata.tables)
    finally:
        migrated.dispose()
        created.dispose()


def test_upgrade_schema__is_idempotent_at_head(engine: Engine) -> None:
    assert upgrade_schema(engine) == (head_revision(), head_revision())
    assert current_revision(engine) == head_revision()


def test_check_schema__initialises_an_empty_database(tmp_path: Path) -> None:
    eng = make_engine(store_url(tmp_path, "sub/fresh"))
    try:
        assert is_empty(eng)
        check_schema(eng)
        assert current_revision(eng) == head_revision()
        assert set(Base.metadata.tables) <= set(inspect(eng).get_table_names())
        check_schema(eng)  # at head: nothing to do, no error
    finally:
        eng.dispose()


def test_check_schema__without_initialise_refuses_an_empty_database(tmp_path: Path) -> None:
    eng = make_engine(store_url(tmp_path, "fresh"))
    try:
        with pytest.raises(SchemaOutOfDateError, match="jobferry db upgrade"):
            check_schema(eng, initialize_empty=False)
    finally:
        eng.dispose()


@pytest.mark.parametrize(
    "tamper",
    [
        "DELETE FROM alembic_version",
        "DROP TABLE alembic_version",
        "UPDATE alembic_version SET version_num = 'f00dfeed'",
    ],
    ids=["no-revision", "no-version-table", "unknown-revision"],
)
def test_check_schema__refuses_a_database_not_at_head(engine: Engine, tamper: str) -> None:
    with engine.begin() as conn:
        conn.execute(text(tamper))
    with pytest.raises(SchemaOutOfDateError) as caught:
        check_schema(engine)
    assert "jobferry db upgrade" in caught.value.message
    assert head_revision() in caught.value.message
    assert "\n" not in caught.value.message


def test_check_schema__behind_database_is_fixed_by_upgrade(tmp_path: Path) -> None:
    """A store created before the first migration: only an empty alembic_version table."""
    eng = make_engine(store_url(tmp_path, "old"))
    try:
        with eng.begin() as conn:
            conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
        with pytest.raises(SchemaOutOfDateError, match="revision none"):
            check_schema(eng)
        assert upgrade_schema(eng) == (None, head_revision())
        check_schema(eng, initialize_empty=False)
    finally:
        eng.dispose()


def test_upgrade_schema__unknown_revision_is_a_one_line_schema_error(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'f00dfeed'"))
    with pytest.raises(SchemaOutOfDateError) as caught:
        upgrade_schema(engine)
    assert "f00dfeed" in caught.value.message and "\n" not in caught.value.message


# --- transition_job -------------------------------------------------------------------------


def test_transition_job__moves_from_an_allowed_state_and_sets_values(
    sessions: sessionmaker[Session], user_id: str
) -> None:
    job_id = add_job(sessions, user_id)
    before = datetime.now(UTC)
    with sessions.begin() as session:
        transition_job(
            session, job_id, [JobState.QUEUED], JobState.RUNNING, node="n1", state_reason="go"
        )
    job = job_row(sessions, job_id)
    assert (job.state, job.node, job.state_reason) == ("running", "n1", "go")
    assert job.updated_at >= before


def test_transition_job__state_mismatch_raises_conflict_and_changes_nothing(
    sessions: sessionmaker[Session], user_id: str
) -> None:
    job_id = add_job(sessions, user_id, state=JobState.RUNNING)
    with sessions.begin() as session, pytest.raises(ConflictError) as caught:
        transition_job(session, job_id, [JobState.QUEUED], JobState.DELETED)
    assert caught.value.details == {"job_id": job_id, "state": "running"}
    assert job_row(sessions, job_id).state == "running"


def test_transition_job__unknown_job_raises_conflict(
    sessions: sessionmaker[Session], user_id: str
) -> None:
    with sessions.begin() as session, pytest.raises(ConflictError, match="unknown"):
        transition_job(session, "0123456789abcdef", [JobState.QUEUED], JobState.RUNNING)


@pytest.mark.parametrize("terminal", sorted(TERMINAL_STATES))
@pytest.mark.parametrize("target", list(JobState))
def test_transition_job__terminal_states_never_change(
    sessions: sessionmaker[Session], user_id: str, terminal: JobState, target: JobState
) -> None:
    job_id = add_job(sessions, user_id, state=terminal)
    # Even when the caller names the terminal state as allowed.
    with sessions.begin() as session, pytest.raises(ConflictError):
        transition_job(session, job_id, list(JobState), target, state_reason="overwritten")
    job = job_row(sessions, job_id)
    assert (job.state, job.state_reason) == (terminal.value, None)


# --- attempts and fencing -------------------------------------------------------------------


def test_finish_job__stale_attempt_is_refused(
    sessions: sessionmaker[Session], user_id: str
) -> None:
    job_id = add_job(sessions, user_id)
    (claimed,) = claim(sessions, 1)
    assert claimed.attempt == 1
    with pytest.raises(ConflictError):
        finish(sessions, job_id, attempt=0)
    assert job_row(sessions, job_id).state == "running"
    finish(sessions, job_id, attempt=1)
    job = job_row(sessions, job_id)
    assert (job.state, job.exit_code, job.wall_s, job.finished_at) == ("ok", 0, 1.5, T0)


def test_finish_job__after_requeue_and_reclaim_the_old_attempt_is_fenced(
    sessions: sessionmaker[Session], user_id: str
) -> None:
    job_id = add_job(sessions, user_id)
    claim(sessions, 1, node="node-a")
    with sessions.begin() as session:
        requeue_job(session, job_id, 1, "never started")
    queued = job_row(sessions, job_id)
    assert (queued.state, queued.node, queued.attempt) == ("queued", None, 1)
    (again,) = claim(sessions, 1, node="node-b")
    assert again.attempt == 2
    with pytest.raises(ConflictError):
        finish(sessions, job_id, attempt=1, state=JobState.ERROR)
    with sessions.begin() as session, pytest.raises(ConflictError):
        requeue_job(session, job_id, 1, "stale writer")
    with sessions.begin() as session, pytest.raises(ConflictError):
        update_running_job(session, job_id, 1, external_id="stale")
    with sessions.begin() as session:
        update_running_job(session, job_id, 2, external_id="pid@1")
    job = job_row(sessions, job_id)
    assert (job.state, job.node, job.attempt, job.external_id) == ("running", "node-b", 2, "pid@1")


def test_finish_job__ends_a_job_being_cancelled(
    sessions: sessionmaker[Session], user_id: str
) -> None:
    job_id = add_job(sessions, user_id)
    claim(sessions, 1)
    with sessions.begin() as session:
        assert mark_cancelled(session, job_id) is JobState.DELETING
    finish(sessions, job_id, attempt=1, state=JobState.DELETED)
    assert job_row(sessions, job_id).state == "deleted"
    with pytest.raises(ConflictError):
        finish(sessions, job_id, attempt=1, state=JobState.OK)


# --- claim_queued_jobs ----------------------------------------------------------------------


def test_claim_queued_jobs__best_priority_then_oldest(
    sessions: sessionmaker[Session], user_id: str
) -> None:
    low_old = add_job(sessions, user_id, priority=0, created_at=T0)
    high_new = add_job(sessions, user_id, priority=5, created_at=T0 + timedelta(minutes=2))
    high_old = add_job(sessions, user_id, priority=5, created_at=T0 + timedelta(minutes=1))
    low_new = add_job(sessions, user_id, priority=0, created_at=T0 + timedelta(minutes=3))
    first_two = claim(sessions, 2)
    assert [j.id for j in first_two] == [high_old, high_new]
    assert job_row(sessions, low_old).state == "queued"
    assert [j.id for j in claim(sessions, 10)] == [low_old, low_new]
    assert claim(sessions, 10) == []


def test_claim_queued_jobs__marks_running_on_the_node_and_increments_attempt(
    sessions: sessionmaker[Session], user_id: str
) -> None:
    job_id = add_job(sessions, user_id, attempt=3)
    (claimed,) = claim(sessions, 1, node="node-x")
    assert (claimed.id, claimed.state, claimed.attempt, claimed.node) == (
        job_id,
        "running",
        4,
        "node-x",
    )
    stored = job_row(sessions, job_id)
    assert (stored.state, stored.attempt, stored.node) == ("running", 4, "node-x")
    assert stored.started_at is not None


def test_claim_queued_jobs__only_queued_jobs_of_that_runner(
    sessions: sessionmaker[Session], user_id: str
) -> None:
    for state in JobState:
        if state is not JobState.QUEUED:
            add_job(sessions, user_id, state=state)
    add_job(sessions, user_id, runner="slurm")
    wanted = add_job(sessions, user_id)
    assert [j.id for j in claim(sessions, 100)] == [wanted]


def test_claim_queued_jobs__respects_limit_and_zero_claims_nothing(
    sessions: sessionmaker[Session], user_id: str
) -> None:
    ids = {add_job(sessions, user_id, created_at=T0 + timedelta(seconds=i)) for i in range(5)}
    assert claim(sessions, 0) == []
    assert claim(sessions, -1) == []
    assert len(claim(sessions, 3)) == 3
    with sessions.begin() as session:
        states = session.execute(select(Job.state).where(Job.id.in_(ids))).scalars().all()
    assert sorted(states) == ["queued", "queued", "running", "running", "running"]


def test_claim_queued_jobs__sequential_claims_never_take_the_same_job(
    sessions: sessionmaker[Session], user_id: str
) -> None:
    add_job(sessions, user_id)
    add_job(sessions, user_id)
    (first,) = claim(sessions, 1)
    (second,) = claim(sessions, 1)
    assert first.id != second.id
    assert claim(sessions, 1) == []


def test_claim_queued_jobs__concurrent_claimers_take_each_job_exactly_once(
    tmp_path: Path, engine: Engine, sessions: sessionmaker[Session], user_id: str
) -> None:
    ids = {add_job(sessions, user_id, created_at=T0 + timedelta(milliseconds=i)) for i in range(40)}
    url = store_url(tmp_path, "store")  # the engine fixture's database
    start = threading.Barrier(4, timeout=30)

    def claimer(index: int) -> list[tuple[str, int, str]]:
        """A separate 'daemon': its own engine and sessions, claiming until none are left."""
        own = make_engine(url, pool_size=1)
        try:
            own_sessions = make_session_factory(own)
            start.wait()
            got: list[tuple[str, int, str]] = []
            while True:
                jobs = claim(own_sessions, 3, node=f"node-{index}")
                if not jobs:
                    return got
                got += [(j.id, j.attempt, str(j.node)) for j in jobs]
        finally:
            own.dispose()

    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(claimer, i) for i in range(4)]
        results = [f.result(timeout=120) for f in futures]
    claimed = [entry for result in results for entry in result]
    assert sorted(job_id for job_id, _, _ in claimed) == sorted(ids)  # each exactly once
    assert {attempt for _, attempt, _ in claimed} == {1}
    for index, result in enumerate(results):
        for job_id, _, _ in result:
            assert job_row(sessions, job_id).node == f"node-{index}"


# --- mark_cancelled -------------------------------------------------------------------------


@pytest.mark.parametrize("state", [JobState.NEW, JobState.QUEUED])
def test_mark_cancelled__a_job_not_started_is_deleted_at_once(
    sessions: sessionmaker[Session], user_id: str, state: JobState
) -> None:
    job_id = add_job(sessions, user_id, state=state)
    with sessions.begin() as session:
        assert mark_cancelled(session, job_id) is JobState.DELETED
    job = job_row(sessions, job_id)
    assert job.state == "deleted" and job.finished_at is not None
    assert job.state_reason == "cancelled before it started"
    assert claim(sessions, 10) == []


def test_mark_cancelled__a_running_job_becomes_deleting(
    sessions: sessionmaker[Session], user_id: str
) -> None:
    job_id = add_job(sessions, user_id)
    claim(sessions, 1)
    with sessions.begin() as session:
        assert mark_cancelled(session, job_id) is JobState.DELETING
    job = job_row(sessions, job_id)
    assert (job.state, job.state_reason, job.finished_at) == ("deleting", "cancelled", None)


@pytest.mark.parametrize("state", [*sorted(TERMINAL_STATES), JobState.DELETING])
def test_mark_cancelled__an_ended_or_ending_job_is_a_conflict(
    sessions: sessionmaker[Session], user_id: str, state: JobState
) -> None:
    job_id = add_job(sessions, user_id, state=state)
    with sessions.begin() as session, pytest.raises(ConflictError):
        mark_cancelled(session, job_id)
    assert job_row(sessions, job_id).state == state.value


# --- PostgreSQL -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u:pw@db:5432/jf", "postgresql+psycopg://u:pw@db:5432/jf"),
        ("postgresql://u@db/jf", "postgresql+psycopg://u@db/jf"),
        ("postgresql+psycopg://u@db/jf", "postgresql+psycopg://u@db/jf"),
        ("sqlite:////srv/jf/jobferry.db", "sqlite:////srv/jf/jobferry.db"),
    ],
)
def test_normalize_url__postgres_urls_use_psycopg_3(given: str, expected: str) -> None:
    assert normalize_url(given) == expected


@pytest.mark.parametrize("scheme", ["postgres", "postgresql", "postgresql+psycopg"])
def test_make_engine__postgres_gets_psycopg_3_and_a_pre_pinged_pool(scheme: str) -> None:
    engine = make_engine(f"{scheme}://u:pw@db.invalid:5432/jf", pool_size=3)
    try:  # nothing connects until first use
        assert engine.url.render_as_string(hide_password=False) == (
            "postgresql+psycopg://u:pw@db.invalid:5432/jf"
        )
        assert (engine.dialect.name, engine.dialect.driver) == ("postgresql", "psycopg")
        assert engine.pool._pre_ping  # type: ignore[attr-defined]
        assert engine.pool.size() == 3  # type: ignore[attr-defined]
        assert SessionFactory(engine)._lock is None  # no SQLite lock on PostgreSQL
    finally:
        engine.dispose()


def test_display_url__masks_the_password() -> None:
    assert display_url("postgres://jf:s3cret@db/jf") == "postgresql+psycopg://jf:***@db/jf"


def test_session_factory__unreachable_postgres_raises_store_unavailable() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    engine = make_engine(f"postgresql://postgres@127.0.0.1:{port}/jobferry")
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError) as caught:
            with make_session_factory(engine).begin() as session:
                session.execute(select(User.id)).all()
        assert time.monotonic() - started < 10
        assert caught.value.code == "store_unavailable" and "\n" not in caught.value.message
        assert str(port) in caught.value.details["reason"]  # for the log, not the client
        assert str(port) not in caught.value.message
    finally:
        engine.dispose()


def test_session_factory__a_statement_error_is_not_a_store_outage(
    sessions: SessionFactory,
) -> None:
    with pytest.raises(DBAPIError) as caught, sessions.begin() as session:
        session.execute(text("SELECT no_such_column FROM users"))
    assert not isinstance(caught.value, StoreUnavailableError)


def test_store__claim_on_postgres_never_hands_a_job_to_two_claimers(tmp_path: Path) -> None:
    """Eight claimers, each with its own engine, drain one queue of 300 jobs."""
    require("postgres")
    url = database_url(tmp_path / "pg") if on_postgres() else fresh_pg_database()
    engine = make_engine(url)
    upgrade_schema(engine)
    sessions = make_session_factory(engine)
    try:
        with sessions.begin() as session:
            user = User(username="alice")
            session.add(user)
            session.flush()
            owner = user.id
        ids = {
            add_job(sessions, owner, priority=i % 3, created_at=T0 + timedelta(milliseconds=i))
            for i in range(300)
        }
        start = threading.Barrier(8, timeout=30)

        def claimer(index: int) -> list[tuple[str, int]]:
            own = make_engine(url, pool_size=1)
            try:
                own_sessions = make_session_factory(own)
                start.wait()
                got: list[tuple[str, int]] = []
                while True:
                    jobs = claim(own_sessions, 4, node=f"node-{index}")
                    if not jobs:
                        return got
                    assert len(jobs) <= 4
                    got += [(j.id, j.attempt) for j in jobs]
            finally:
                own.dispose()

        with ThreadPoolExecutor(max_workers=8) as pool:
            results = [f.result(timeout=120) for f in [pool.submit(claimer, i) for i in range(8)]]
        claimed = [job_id for result in results for job_id, _ in result]
        assert len(claimed) == len(set(claimed)) == len(ids)  # none twice, none lost
        assert set(claimed) == ids
        assert {attempt for result in results for _, attempt in result} == {1}
        assert sum(1 for result in results if result) > 1  # the claimers really competed
        with sessions.begin() as session:
            rows = session.execute(select(Job.id, Job.node, Job.state)).all()
        by_claimer = {job_id: f"node-{i}" for i, r in enumerate(results) for job_id, _ in r}
        assert {(job_id, node, state) for job_id, node, state in rows} == {
            (job_id, node, "running") for job_id, node in by_claimer.items()
        }
    finally:
        engine.dispose()


def test_claim_queued_jobs__on_postgres_skips_jobs_another_claim_holds(tmp_path: Path) -> None:
    """A claim in progress (uncommitted) does not block a second claimer: it takes the next."""
    require("postgres")
    url = database_url(tmp_path / "pg") if on_postgres() else fresh_pg_database()
    engine = make_engine(url)
    upgrade_schema(engine)
    sessions = make_session_factory(engine)
    try:
        with sessions.begin() as session:
            user = User(username="alice")
            session.add(user)
            session.flush()
            owner = user.id
        first_id = add_job(sessions, owner, created_at=T0)
        second_id = add_job(sessions, owner, created_at=T0 + timedelta(seconds=1))
        with sessions.begin() as holding:
            (held,) = claim_queued_jobs(holding, runner="local", node="node-a", limit=1)
            assert held.id == first_id
            with sessions.begin() as other:
                other.execute(text("SET LOCAL lock_timeout = '2s'"))
                taken = claim_queued_jobs(other, runner="local", node="node-b", limit=5)
                assert [j.id for j in taken] == [second_id]
        assert (job_row(sessions, first_id).node, job_row(sessions, second_id).node) == (
            "node-a",
            "node-b",
        )
    finally:
        engine.dispose()


# --- group commit of submissions ----------------------------------------------------------


def _submission(user_id: str, job_id: str) -> dict[str, Any]:
    return {
        "id": job_id,
        "uuid": str(uuid.uuid4()),
        "user_id": user_id,
        "name": "j",
        "argv": ["python", "script.py"],
        "job_dir": f"/nonexistent/{job_id}",
    }


def test_group_inserter__concurrent_submissions_all_land_with_their_files(
    sessions: sessionmaker[Session], user_id: str
) -> None:
    inserter = GroupInserter(sessions)
    ids = [uuid.uuid4().hex for _ in range(40)]
    files = [{"kind": "input", "name": "a.txt", "size": 1, "sha256": "0" * 64}]
    with ThreadPoolExecutor(8) as pool:
        rows = list(pool.map(lambda i: inserter.insert(_submission(user_id, i), files), ids))
    assert [row["id"] for row in rows] == ids
    assert all(row["state"] == JobState.QUEUED.value for row in rows)
    with sessions.begin() as session:
        stored = set(session.scalars(select(Job.id)))
        n_files = session.scalar(text("SELECT count(*) FROM job_files"))
    assert stored == set(ids) and n_files == 40


def test_group_inserter__a_bad_row_fails_only_its_own_submission(
    sessions: sessionmaker[Session], user_id: str
) -> None:
    inserter = GroupInserter(sessions)
    taken = uuid.uuid4().hex
    inserter.insert(_submission(user_id, taken), [])
    barrier = threading.Barrier(6)

    def submit(job_id: str) -> str:
        barrier.wait()
        try:
            inserter.insert(_submission(user_id, job_id), [])
        except DBAPIError:
            return "refused"
        return "stored"

    ids = [taken, *(uuid.uuid4().hex for _ in range(5))]  # the first one is a duplicate
    with ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(submit, ids))
    assert outcomes == ["refused"] + ["stored"] * 5
    with sessions.begin() as session:
        assert set(session.scalars(select(Job.id))) == set(ids)
