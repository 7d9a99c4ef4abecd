#!/usr/bin/env python
"""Retention rounds on a store of many ended jobs: what an idle round costs, and a full one.

For SQLite and (when it answers) PostgreSQL, in one run: a store with ``--jobs``
jobs that ended 100 days ago and whose files already expired (the steady state
after months with ``retention.files_days`` and no ``rows_days``), plus 1 % still
running. Measured:

- an **idle round** (``RetentionService.run_round`` with nothing to purge): median
  and p99 over ``--rounds`` rounds; the reference, measured in the same run, is one
  ``SELECT 1`` in a transaction through the same session factory (the cheapest
  store round trip), so the ratio says how much a round costs beyond that;
- a **full round**: ``--batch`` jobs whose directories (three small files each)
  are purged by one round: seconds and jobs/s.

Usage::

    .venv/bin/python bench/retention.py [--jobs 100000] [--rounds 200] [--batch 200]

PostgreSQL: the server of ``scripts/services`` (or JOBFERRY_BENCH_PG_URL); a fresh
database is made and dropped. Results: printed, and written to
``bench/results/retention-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common.report import fmt, log, stamp, table, write_results  # noqa: E402
from bench.common.stats import percentile  # noqa: E402
from jobferry.config import parse_config  # noqa: E402
from jobferry.services.core import Core  # noqa: E402
from jobferry.services.retention import RetentionService  # noqa: E402
from jobferry.store.engine import check_schema  # noqa: E402
from jobferry.store.models import Base, User, utcnow  # noqa: E402

PG_URL = os.environ.get(
    "JOBFERRY_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:55432/jobferry"
)
JOBS = Base.metadata.tables["jobs"]


def pg_database() -> tuple[str, Callable[[], None]] | None:
    """A fresh PostgreSQL database's URL and how to drop it; None if none answers."""
    name = f"jf_bench_retention_{os.getpid()}"
    admin = create_engine(PG_URL, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE template0'))
    except Exception as exc:
        log(f"PostgreSQL not measured: {exc.__class__.__name__}")
        admin.dispose()
        return None

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return make_url(PG_URL).set(database=name).render_as_string(hide_password=False), drop


def fill(core: Core, jobs: int) -> None:
    """*jobs* rows ended 100 days ago with expired files, and 1 % running."""
    now = utcnow()
    ended, expired = now - timedelta(days=100), now - timedelta(days=70)
    with core.sessions.begin() as session:
        session.add(User(id="u1", username="admin", is_admin=True))
    chunk = 5000
    for start in range(0, jobs, chunk):
        rows = []
        for i in range(start, min(jobs, start + chunk)):
            job_id = uuid.uuid4().hex[:16]
            running = i % 100 == 0
            rows.append(
                {
                    "id": job_id,
                    "uuid": str(uuid.uuid4()),
                    "user_id": "u1",
                    "name": "j",
                    "argv": ["true"],
                    "params": {},
                    "command": "",
                    "job_dir": str(core.job_dir(job_id)),
                    "state": "running" if running else "ok",
                    "created_at": ended,
                    "updated_at": ended,
                    "finished_at": None if running else ended,
                    "files_expired_at": None if running else expired,
                    "home_node": "bench",
                }
            )
        with core.sessions.begin() as session:
            session.execute(insert(JOBS), rows)


def purgeable(core: Core, count: int) -> None:
    """*count* jobs ended 30 days ago, each with a directory of three small files."""
    ended = utcnow() - timedelta(days=30)
    rows = []
    for _ in range(count):
        job_id = uuid.uuid4().hex[:16]
        job_dir = core.job_dir(job_id)
        (job_dir / "work").mkdir(parents=True)
        for name in ("stdout", "stderr", "work/out.txt"):
            (job_dir / name).write_bytes(b"x" * 1000)
        rows.append(
            {
                "id": job_id,
                "uuid": str(uuid.uuid4()),
                "user_id": "u1",
                "name": "j",
                "argv": ["true"],
                "params": {},
                "command": "",
                "job_dir": str(job_dir),
                "state": "ok",
                "created_at": ended,
                "updated_at": ended,
                "finished_at": ended,
                "home_node": "bench",
            }
        )
    with core.sessions.begin() as session:
        session.execute(insert(JOBS), rows)


def timed(fn: Callable[[], Any], rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def measure(engine: str, url: str | None, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    config: dict[str, Any] = {
        "data_dir": str(data),
        "node": {"name": "bench"},
        "retention": {"files_days": 7, "batch": args.batch},
    }
    if url:
        config["database"] = {"url": url}
    core = Core(parse_config(config), node_name="bench")
    try:
        core.ensure_dirs()
        check_schema(core.engine)
        log(f"{engine}: filling {args.jobs} jobs")
        fill(core, args.jobs)
        with core.engine.begin() as conn:  # as autovacuum would have, after months
            conn.execute(text("ANALYZE jobs" if url else "ANALYZE"))
        service = RetentionService(core)
        service.run_round()  # warm: connections, statement caches

        def ping() -> None:
            with core.sessions.begin() as session:
                session.execute(text("SELECT 1"))

        log(f"{engine}: {args.rounds} idle rounds, and as many SELECT 1 (reference)")
        idle, reference = [], []
        for _ in range(args.rounds):  # interleaved: the same load on both
            idle += timed(lambda: service.run_round(), 1)
            reference += timed(ping, 1)
        purgeable(core, args.batch)
        start = time.perf_counter()
        done = service.run_round()
        full_s = time.perf_counter() - start
        assert done.files is not None and len(done.files.job_ids) == args.batch, done
        return {
            "idle_median_ms": 1000 * statistics.median(idle),
            "idle_p99_ms": 1000 * percentile(idle, 99),
            "ref_select1_median_ms": 1000 * statistics.median(reference),
            "idle_over_ref": statistics.median(idle) / statistics.median(reference),
            "full_round_s": full_s,
            "full_round_jobs_per_s": args.batch / full_s,
            "bytes_freed": done.files.bytes_freed,
        }
    finally:
        core.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--batch", type=int, default=200)
    args = parser.parse_args()
    run = stamp()
    results: dict[str, Any] = {"settings": vars(args)}
    with tempfile.TemporaryDirectory(prefix="jf-bench-retention-") as tmp:
        results["sqlite"] = measure("sqlite", None, Path(tmp) / "sqlite", args)
        pg = pg_database()
        if pg is not None:
            url, drop = pg
            try:
                results["postgres"] = measure("postgres", url, Path(tmp) / "pg", args)
            finally:
                drop()
    rows = [
        [
            engine,
            fmt(r["idle_median_ms"], " ms"),
            fmt(r["idle_p99_ms"], " ms"),
            fmt(r["ref_select1_median_ms"], " ms"),
            f"{r['idle_over_ref']:.2f}x",
            fmt(r["full_round_s"], " s"),
            fmt(r["full_round_jobs_per_s"], " jobs/s"),
        ]
        for engine, r in results.items()
        if engine != "settings"
    ]
    print(
        table(
            ["store", "idle median", "idle p99", "SELECT 1", "idle/ref", "full round", "purged"],
            rows,
        )
    )
    log(f"results: {write_results('retention', run, results)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
