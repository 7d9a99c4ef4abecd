"""The SQL store's PostgreSQL side: URL normalisation, the engine and session factory, and
claims that must hold under concurrent PostgreSQL sessions.

SQLite files by default; fresh PostgreSQL databases with JOBFERRY_TEST_DB=postgres
(tests.db). Tests named ``..._on_postgres_...`` always need PostgreSQL.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from jobferry.errors import StoreUnavailableError
from jobferry.store.engine import (
    PING_IDLE_S,
    SessionFactory,
    display_url,
    make_engine,
    make_session_factory,
    normalize_url,
    upgrade_schema,
)
from jobferry.store.models import Job, User
from jobferry.store.transitions import claim_queued_jobs
from tests.db import database_url, fresh_pg_database, on_postgres
from tests.services import require
from tests.unit.store_helpers import T0, add_job, claim, job_row, unreachable_postgres_url

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
def test_make_engine__postgres_gets_psycopg_3_and_a_pool_pinging_idle_connections(
    scheme: str,
) -> None:
    engine = make_engine(f"{scheme}://u:pw@db.invalid:5432/jf", pool_size=3)
    try:  # nothing connects until first use
        assert engine.url.render_as_string(hide_password=False) == (
            "postgresql+psycopg://u:pw@db.invalid:5432/jf"
        )
        assert (engine.dialect.name, engine.dialect.driver) == ("postgresql", "psycopg")
        assert not engine.pool._pre_ping  # type: ignore[attr-defined]
        assert _ping_listener(engine) is not None
        assert engine.pool.size() == 3  # type: ignore[attr-defined]
        assert SessionFactory(engine)._lock is None  # no SQLite lock on PostgreSQL
    finally:
        engine.dispose()


def _ping_listener(engine: Engine) -> Any:
    """The engine's checkout listener that pings idle connections (``_ping_if_idle``)."""
    found = [fn for fn in engine.pool.dispatch.checkout if getattr(fn, "__name__", "") == "_ping"]
    assert len(found) == 1
    return found[0]


def test_pool__postgres_connection_killed_while_idle_is_replaced_at_checkout() -> None:
    """A pooled connection the server ended while it rested over PING_IDLE_S fails its
    ping at checkout and is replaced: the unit of work succeeds."""
    require("postgres")
    engine = make_engine(fresh_pg_database(), pool_size=1)
    try:
        with engine.connect() as conn:
            first_pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        killer = make_engine(engine.url.render_as_string(hide_password=False))
        try:
            with killer.connect() as admin:
                admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first_pid})
                admin.commit()
        finally:
            killer.dispose()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the pooled connection rests past the limit
            time.sleep(PING_IDLE_S / 4)
            record = engine.pool._pool.queue[0]  # type: ignore[attr-defined]
            if time.monotonic() - record.info["jobferry_checkin"] > PING_IDLE_S:
                break
        with engine.connect() as conn:
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar() != first_pid
    finally:
        engine.dispose()


def test_pool__postgres_connection_reused_at_once_is_not_pinged() -> None:
    require("postgres")
    engine = make_engine(fresh_pg_database(), pool_size=1)
    pings: list[object] = []
    real_ping = engine.dialect.do_ping
    engine.dialect.do_ping = lambda conn: pings.append(conn) or real_ping(conn)  # type: ignore[method-assign]
    try:
        with engine.connect() as conn:  # a new connection: just made, no ping
            conn.execute(text("SELECT 1"))
        for _ in range(20):
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        assert pings == []
    finally:
        engine.dispose()


def test_display_url__masks_the_password() -> None:
    assert display_url("postgres://jf:s3cret@db/jf") == "postgresql+psycopg://jf:***@db/jf"


def test_session_factory__unreachable_postgres_raises_store_unavailable() -> None:
    url = unreachable_postgres_url()
    port = make_url(url).port
    engine = make_engine(url)
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
