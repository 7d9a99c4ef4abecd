"""The SQL store on the test run's engine: job state changes (transitions, attempts and
fencing, claims, cancellation), the group commit of submissions (from threads and from
the event loop) and status reads on the event loop.

SQLite files by default; fresh PostgreSQL databases with JOBFERRY_TEST_DB=postgres
(tests.db). Tests named ``..._on_postgres_...`` always need PostgreSQL.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from jobferry.errors import ConflictError, StoreUnavailableError
from jobferry.store.engine import make_engine, make_session_factory
from jobferry.store.models import TERMINAL_STATES, Job, JobState
from jobferry.store.records import GroupInserter, job_status_inline, job_status_row
from jobferry.store.transitions import (
    mark_cancelled,
    requeue_job,
    transition_job,
    update_running_job,
)
from tests.unit.store_helpers import T0, add_job, claim, finish, job_row, store_url

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


def test_group_inserter__loop_submissions_go_in_one_transaction_and_all_land(
    sessions: sessionmaker[Session], user_id: str
) -> None:
    inserter = GroupInserter(sessions, ThreadPoolExecutor(2))
    ids = [uuid.uuid4().hex for _ in range(40)]
    files = [{"kind": "input", "name": "a.txt", "size": 1, "sha256": "0" * 64}]

    async def submit_all() -> list[dict[str, Any]]:
        return await asyncio.gather(
            *(inserter.insert_async(_submission(user_id, i), files) for i in ids)
        )

    rows = asyncio.run(submit_all())
    assert [row["id"] for row in rows] == ids
    # Queued in one loop iteration: one batch, one transaction (one timestamp).
    assert len({row["created_at"] for row in rows}) == 1
    with sessions.begin() as session:
        stored = set(session.scalars(select(Job.id)))
        n_files = session.scalar(text("SELECT count(*) FROM job_files"))
    assert stored == set(ids) and n_files == 40


def test_group_inserter__a_bad_loop_submission_fails_only_its_own_caller(
    sessions: sessionmaker[Session], user_id: str
) -> None:
    inserter = GroupInserter(sessions, ThreadPoolExecutor(2))
    taken = uuid.uuid4().hex
    inserter.insert(_submission(user_id, taken), [])
    ids = [taken, *(uuid.uuid4().hex for _ in range(5))]  # the first one is a duplicate

    async def submit_all() -> list[Any]:
        return await asyncio.gather(
            *(inserter.insert_async(_submission(user_id, i), []) for i in ids),
            return_exceptions=True,
        )

    outcomes = asyncio.run(submit_all())
    assert isinstance(outcomes[0], DBAPIError)
    assert [row["id"] for row in outcomes[1:]] == ids[1:]
    with sessions.begin() as session:
        assert set(session.scalars(select(Job.id))) == set(ids)


# --- status reads on the event loop ---------------------------------------------------------


def test_inline_status_read__gives_the_pooled_read_on_sqlite_and_is_never_used_on_postgres(
    sessions: Any, user_id: str
) -> None:
    job_id = add_job(sessions, user_id, state=JobState.QUEUED)
    with sessions.read() as connection:
        pooled = job_status_row(connection, job_id)
    assert pooled is not None and pooled.state == JobState.QUEUED.value
    if sessions.dialect != "sqlite":
        assert not sessions.reads_inline
        return
    assert sessions.reads_inline
    with sessions.read_inline() as raw:
        assert job_status_inline(raw, job_id) == pooled
        assert job_status_inline(raw, "no-such-job") is None


def test_inline_status_read__a_locked_sqlite_store_answers_unavailable_at_once_then_recovers(
    sessions: Any, user_id: str
) -> None:
    if sessions.dialect != "sqlite":  # PostgreSQL has no inline reads: asking is a bug
        with pytest.raises(RuntimeError), sessions.read_inline():
            pass
        return
    job_id = add_job(sessions, user_id)
    sessions.dispose()  # the inline reader's connection, opened anew below
    sessions.engine.dispose()
    # Another process's exclusive lock, which WAL readers must wait for (the rare case).
    holder = sqlite3.connect(sessions.engine.url.database)
    try:
        holder.execute("PRAGMA locking_mode=EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")
        holder.execute("UPDATE jobs SET priority = 1 WHERE id = ?", (job_id,))
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError), sessions.read_inline() as raw:
            job_status_inline(raw, job_id)
        assert time.monotonic() - started < 5  # the short busy timeout, not 30 s
    finally:
        holder.rollback()
        holder.close()
    with sessions.read_inline() as raw:
        row = job_status_inline(raw, job_id)
    assert row is not None and row.state == JobState.QUEUED.value
