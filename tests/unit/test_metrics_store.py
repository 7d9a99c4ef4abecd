"""The store's figures behind /metrics: what the aggregate counts, its cache, its index."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, text, update
from sqlalchemy.orm import Session, sessionmaker

from jobferry.config import parse_config
from jobferry.services.core import Core
from jobferry.services.metrics import MetricsService, live_jobs_query
from jobferry.store.engine import is_postgres
from jobferry.store.models import Job, JobState
from tests.unit.store_helpers import add_job


def service(tmp_path: Path, engine: Engine, cache_s: float) -> MetricsService:
    config = parse_config(
        {"data_dir": str(tmp_path / "data"), "metrics": {"store_cache_s": cache_s}}
    )
    return MetricsService(Core(config, engine=engine, node_name="node-a"))


def place(sessions: sessionmaker[Session], job_id: str, node: str) -> None:
    with sessions.begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(node=node))


def test_store_figures__count_live_jobs_by_node_state_destination_runner(
    tmp_path: Path, engine: Engine, sessions: sessionmaker[Session], user_id: str
) -> None:
    add_job(sessions, user_id)
    add_job(sessions, user_id)
    place(sessions, add_job(sessions, user_id, state=JobState.RUNNING), "node-a")
    place(sessions, add_job(sessions, user_id, state=JobState.RUNNING), "node-b")
    for _ in range(3):
        place(sessions, add_job(sessions, user_id, state=JobState.OK), "node-a")
    metrics = service(tmp_path, engine, 60)
    metrics.refresh()
    figures = metrics.core.telemetry.store_figures
    assert figures is not None
    assert figures.node_jobs == {("running", "local", "local"): 1}
    assert figures.store_jobs == {
        ("queued", "local", "local"): 2,
        ("running", "local", "local"): 2,
    }
    metrics.core.close()


def test_store_figures__reused_for_store_cache_s_then_read_again(
    tmp_path: Path, engine: Engine, sessions: sessionmaker[Session], user_id: str
) -> None:
    cached = service(tmp_path, engine, 3600)
    cached.refresh()
    first = cached.core.telemetry.store_figures
    add_job(sessions, user_id)
    assert not cached.stale()
    cached.refresh()
    assert cached.core.telemetry.store_figures is first
    fresh = service(tmp_path, engine, 0)
    fresh.refresh()
    again = fresh.core.telemetry.store_figures
    assert again is not None and again.store_jobs == {("queued", "local", "local"): 1}
    assert fresh.stale()
    cached.core.close()
    fresh.core.close()


def test_store_figures__the_aggregate_reads_the_state_index(engine: Engine) -> None:
    """Guards: with 100,000 ended jobs a full scan per scrape would cost tens of ms."""
    query = live_jobs_query()
    with engine.connect() as conn:
        compiled = query.compile(conn, compile_kwargs={"literal_binds": True})
        if is_postgres(engine):
            conn.execute(text("SET enable_seqscan = off"))  # tiny table: ask for the plan
            plan = " ".join(r[0] for r in conn.execute(text(f"EXPLAIN {compiled}")))
            assert "Index" in plan and "ix_jobs_" in plan, plan
        else:
            plan = " ".join(
                str(r[-1]) for r in conn.execute(text(f"EXPLAIN QUERY PLAN {compiled}"))
            )
            # An index range on the live states (ix_jobs_claim or a covering one), never a
            # scan of every job.
            assert "SEARCH jobs USING" in plan and "INDEX ix_jobs_" in plan, plan
            assert "(state=?)" in plan or "(state>?" in plan or "(state<?" in plan, plan
