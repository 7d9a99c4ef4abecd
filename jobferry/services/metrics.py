"""The store's side of ``GET /metrics``: a few aggregate queries, cached.

A scrape costs the store at most three small queries, and only when the figures
it would serve are older than ``metrics.store_cache_s`` (concurrent scrapes share
one read). They run in the worker pool (``Core.call``), never on the event loop:

1. jobs in non-terminal states, grouped by node, state, destination and runner.
   ``WHERE state IN (...)`` reads a range of ``ix_jobs_claim`` (state first), so
   its cost follows the live jobs, not the ended ones the store keeps for months;
2. on the one node that exports the whole store's figures, nodes by state;
3. which node that is: the live node (up or draining, heartbeat within
   ``node.dead_after_s``) with the smallest name; on SQLite the one node.

Ended jobs are not counted here (an ever-growing count is what
``jobferry_job_ends_total`` gives, per node, without a query).
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from jobferry.services.core import Core
from jobferry.services.nodes import LIVE_STATES, read_db_now
from jobferry.services.telemetry import StoreFigures
from jobferry.store.engine import is_postgres
from jobferry.store.models import Job, JobState, Node

#: The states whose jobs are counted (ended jobs are counted by the end counter).
LIVE_JOB_STATES = (
    JobState.NEW.value,
    JobState.QUEUED.value,
    JobState.RUNNING.value,
    JobState.DELETING.value,
)


def live_jobs_query() -> Select[str | None, str, str, str, int]:
    """Jobs in non-terminal states by node, state, destination and runner."""
    return (
        select(Job.node, Job.state, Job.destination, Job.runner, func.count())
        .where(Job.state.in_(LIVE_JOB_STATES))
        .group_by(Job.node, Job.state, Job.destination, Job.runner)
    )


class MetricsService:
    def __init__(self, core: Core) -> None:
        self.core = core
        self._lock = threading.Lock()

    def stale(self) -> bool:
        """Whether the figures a scrape would serve are older than the cache allows."""
        figures = self.core.telemetry.store_figures
        max_age = self.core.config.metrics.store_cache_s
        return figures is None or time.time() - figures.read_at >= max_age

    def refresh(self) -> None:
        """Blocking: read the store's figures unless another thread just did."""
        with self._lock:
            if not self.stale():
                return
            begun = time.perf_counter()
            with self.core.sessions.begin() as session:
                figures = self._read(session)
            self.core.telemetry.store_figures = StoreFigures(
                node_jobs=figures.node_jobs,
                store_jobs=figures.store_jobs,
                store_nodes=figures.store_nodes,
                read_at=time.time(),
                read_s=time.perf_counter() - begun,
            )

    def _read(self, session: Session) -> StoreFigures:
        me = self.core.node_name
        rows = session.execute(live_jobs_query()).all()
        node_jobs: dict[tuple[str, str, str], int] = {}
        store_jobs: dict[tuple[str, str, str], int] = {}
        for node, state, destination, runner, count in rows:
            key = (str(state), str(destination), str(runner))
            store_jobs[key] = store_jobs.get(key, 0) + int(count)
            if node == me:
                node_jobs[key] = node_jobs.get(key, 0) + int(count)
        if not self._exports_store(session):
            return StoreFigures(node_jobs=node_jobs)
        nodes = session.execute(select(Node.state, func.count()).group_by(Node.state)).all()
        return StoreFigures(
            node_jobs=node_jobs,
            store_jobs=store_jobs,
            store_nodes={str(state): int(count) for state, count in nodes},
        )

    def _exports_store(self, session: Session) -> bool:
        """Whether this node exports the whole store's figures (one node does)."""
        if not is_postgres(session):
            return True
        cutoff = read_db_now(session) - timedelta(seconds=self.core.config.node.dead_after_s)
        first = session.execute(
            select(func.min(Node.name)).where(
                Node.state.in_(LIVE_STATES), Node.heartbeat_at >= cutoff
            )
        ).scalar()
        return first is None or first == self.core.node_name
