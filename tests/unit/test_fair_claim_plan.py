"""SQLite reads a claim's candidate from ``ix_jobs_claim`` without sorting the queue
(``store.fair_claim``): its cost follows the users waiting, not the jobs queued."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobferry.store.engine import make_engine, upgrade_schema
from jobferry.store.transitions import NodeResources, _claim_sql

pytestmark = pytest.mark.engine_independent  # its own SQLite store: SQLite's planner


@pytest.mark.parametrize("fitted", [False, True])
@pytest.mark.parametrize("homed", [False, True])
def test_walk__reads_the_claim_index_in_order_and_never_sorts(
    tmp_path: Path, fitted: bool, homed: bool
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'jobferry.db'}")
    try:
        upgrade_schema(engine)  # the index as migrated
        walk = _claim_sql("sqlite", ("local", "big"), fitted, homed, ("remote",)).walk
        fit = NodeResources(4, 1000, 0, 4, 1000, 0)
        params = {
            "home": "n1",
            "dest": "local",
            "prio": 0,
            "after": "",
            "total_cores": fit.total_cores,
            "total_memory_mb": fit.total_memory_mb,
            "total_gpus": fit.total_gpus,
        }
        with engine.connect() as conn:
            for statement in (walk.head, walk.next_user):
                compiled = statement.compiled(conn.dialect)
                arguments = statement._arguments(compiled, params)
                plan = " | ".join(
                    row[-1]
                    for row in conn.exec_driver_sql(
                        "EXPLAIN QUERY PLAN " + compiled.sql, arguments
                    ).all()
                )
                assert "ix_jobs_claim" in plan, plan
                assert "TEMP B-TREE" not in plan, plan  # no sort of the queue
    finally:
        engine.dispose()
