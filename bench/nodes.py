#!/usr/bin/env python
"""Many daemons, one store: throughput with 1, 2 and 3 nodes on PostgreSQL and 1 on SQLite.

In one run, for each layout, N trivial jobs (``noop.py`` plus a line in a shared
run log) are submitted round-robin to the layout's nodes over 8 connections and
waited for; the figure is jobs/s from the first submission to the last end.
Every job's runs are counted from the log: duplicates and losses must be zero.
Claim latency is measured separately on an idle layout (sequential jobs, each
submitted to the next node): ``started_at - created_at`` from the store, i.e.
from the submitting node's commit to the claiming node's claim, including the
wake-up (LISTEN/NOTIFY on PostgreSQL). The machine's own reference, measured in
the same run: the same job spawned bare with the same total concurrency.

Usage::

    .venv/bin/python bench/nodes.py [--jobs 2000] [--claim-jobs 60] [--quick]

Needs the PostgreSQL of ``scripts/services`` (or JOBFERRY_BENCH_PG_URL); every
daemon is stopped by pid at the end, each layout uses a fresh database.
Results: printed, and written to ``bench/results/nodes-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

if not __package__:  # run as a script: bench/ is sys.path[0], the repository root is not
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common.daemons import Daemon, Managed, bench_run, key_session
from bench.common.report import CPUS, log, write_results
from bench.common.stats import nearest_rank

PG_URL = os.environ.get(
    "JOBFERRY_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:55432/jobferry"
)
SLOTS = CPUS
JOB = """import argparse, os
p = argparse.ArgumentParser(description="Record one run.")
p.add_argument("--log", required=True)
a = p.parse_args()
with open(a.log, "a") as f:
    f.write(os.environ.get("JOBFERRY_JOB_ID", "?") + "\\n")
"""


def sql(url: str, statement: str) -> list[Any]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            return list(conn.execute(text(statement)).all())
    finally:
        engine.dispose()


def fresh_database(tag: str) -> str:
    name = f"jf_bench_{tag}_{os.getpid()}"
    admin = create_engine(PG_URL, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE template0'))
    finally:
        admin.dispose()
    return make_url(PG_URL).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    name = make_url(url).database
    admin = create_engine(PG_URL, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


class Layout:
    def __init__(self, base: Path, name: str, nodes: int, url: str | None) -> None:
        self.name, self.url = name, url
        self.daemons: list[Daemon] = []
        for i in range(1, nodes + 1):
            config: dict[str, Any] = {
                "node": {"name": f"{name}-n{i}"},
                "runners": {"local": {"slots": SLOTS}},
                "logging": {"level": "WARNING"},
            }
            if url:
                config["database"] = {"url": url, "pool_size": 4}
            self.daemons.append(Daemon(f"n{i}", base / name, config))
        self.script = base / "record.py"
        #: Jobs already run in this layout (the claim-latency part counts on from there).
        self.offset = 0

    def __enter__(self) -> Layout:
        try:
            for daemon in self.daemons:
                daemon.start()
        except BaseException:
            self.__exit__()
            raise
        first = self.daemons[0]
        # One store: the first node's admin key is every node's.
        self.sessions = [(d.url, key_session(first.key)) for d in self.daemons]
        first.register(self.script, "record")
        if self.url is None:
            self.url = f"sqlite:///{self.daemons[0].data_dir / 'jobferry.db'}"
        return self

    def __exit__(self, *exc: object) -> None:
        for daemon in self.daemons:
            daemon.stop()  # SIGTERM, SIGKILL after a bound

    def submit(self, i: int, run_log: Path) -> str:
        url, s = self.sessions[i % len(self.sessions)]
        r = s.post(
            f"{url}/api/scripts/v1/record/submit/",
            data={"job_name": f"j{i}", "command": f"--log {run_log}"},
            timeout=60,
        )
        r.raise_for_status()
        return str(r.json()["job_id"])

    def ended(self) -> int:
        assert self.url is not None
        rows = sql(self.url, "SELECT count(*) FROM jobs WHERE state IN ('ok','error','deleted')")
        return int(rows[0][0])

    def wait(self, total: int, limit_s: float) -> None:
        deadline = time.monotonic() + limit_s
        while self.ended() < total:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: jobs not done in {limit_s}s")
            time.sleep(0.2)


def throughput(layout: Layout, jobs: int, tmp: Path) -> dict[str, Any]:
    run_log = tmp / f"{layout.name}-runs.log"
    began = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda i: layout.submit(i, run_log), range(jobs)))
    layout.wait(jobs, limit_s=1800)
    seconds = time.monotonic() - began
    runs: dict[str, int] = {}
    for line in run_log.read_text().splitlines():
        runs[line] = runs.get(line, 0) + 1
    assert layout.url is not None
    states = dict(sql(layout.url, "SELECT state, count(*) FROM jobs GROUP BY state"))
    per_node = dict(sql(layout.url, "SELECT node, count(*) FROM jobs GROUP BY node"))
    return {
        "jobs": jobs,
        "seconds": round(seconds, 2),
        "jobs_per_s": round(jobs / seconds, 2),
        "duplicates": sum(1 for n in runs.values() if n > 1),
        "lost": len(set(ids) - set(runs)),
        "states": states,
        "per_node": per_node,
    }


def claim_latency(layout: Layout, count: int, tmp: Path) -> dict[str, Any]:
    run_log = tmp / f"{layout.name}-claim.log"
    ids = []
    for i in range(count):
        ids.append(layout.submit(i, run_log))
        layout.wait(len(ids) + layout.offset, limit_s=60)
        time.sleep(random.uniform(0.05, 0.15))  # idle between jobs: the wake-up path
    assert layout.url is not None
    quoted = ",".join(f"'{i}'" for i in ids)
    rows = sql(layout.url, f"SELECT created_at, started_at FROM jobs WHERE id IN ({quoted})")
    values = []
    for created, started in rows:
        if isinstance(created, str):
            created, started = datetime.fromisoformat(created), datetime.fromisoformat(started)
        values.append((started - created).total_seconds() * 1000)
    return {
        "median_ms": round(statistics.median(values), 1),
        "p99_ms": round(nearest_rank(values, 99), 1),
    }


def bare(jobs: int, tmp: Path) -> float:
    script, run_log = tmp / "record.py", tmp / "bare-runs.log"
    began = time.monotonic()

    def one(i: int) -> None:
        subprocess.run([sys.executable, str(script), "--log", str(run_log)], check=True)

    with ThreadPoolExecutor(SLOTS) as pool:
        list(pool.map(one, range(jobs)))
    return jobs / (time.monotonic() - began)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--claim-jobs", type=int, default=60)
    parser.add_argument("--quick", action="store_true", help="200 jobs, 20 claim samples")
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.claim_jobs = 200, 20
    results: dict[str, Any] = {"slots_per_node": SLOTS, "cpus": CPUS}
    databases: list[str] = []
    with bench_run("jobferry-bench-nodes-") as run:
        tmp = run.workdir
        (tmp / "record.py").write_text(JOB)
        try:
            log(f"bare reference: {args.jobs} spawns of the job, {SLOTS} at a time")
            results["bare_jobs_per_s"] = round(bare(args.jobs, tmp), 2)
            log(f"bare: {results['bare_jobs_per_s']} jobs/s")
            layouts = [
                ("sqlite-1", 1, None),
                ("pg-1", 1, "pg"),
                ("pg-2", 2, "pg"),
                ("pg-3", 3, "pg"),
            ]
            for name, count, engine in layouts:
                url = fresh_database(name.replace("-", "_")) if engine else None
                if url:
                    databases.append(url)
                with Layout(tmp, name, count, url) as layout:
                    log(f"{name}: {args.jobs} jobs over {count} node(s)")
                    figures = throughput(layout, args.jobs, tmp)
                    layout.offset = args.jobs
                    figures["claim_latency"] = claim_latency(layout, args.claim_jobs, tmp)
                    figures["ratio_to_bare"] = round(
                        figures["jobs_per_s"] / results["bare_jobs_per_s"], 2
                    )
                    results[name] = figures
                    log(f"{name}: {json.dumps(figures)}")
        finally:
            Managed.stop_all()  # before their databases go
            for url in databases:
                drop_database(url)
    print()
    print(
        f"{'layout':<10} {'jobs/s':>8} {'÷ bare':>7} {'claim med':>10} {'claim p99':>10} "
        f"{'dup':>4} {'lost':>5}  per node"
    )
    for name in ("sqlite-1", "pg-1", "pg-2", "pg-3"):
        f = results[name]
        print(
            f"{name:<10} {f['jobs_per_s']:>8} {f['ratio_to_bare']:>7} "
            f"{f['claim_latency']['median_ms']:>8}ms {f['claim_latency']['p99_ms']:>8}ms "
            f"{f['duplicates']:>4} {f['lost']:>5}  {f['per_node']}"
        )
    print(f"bare spawn, {SLOTS} at a time: {results['bare_jobs_per_s']} jobs/s")
    out = write_results("nodes", run.stamp, results)
    print(f"results: {out}")
    ok = all(
        results[n]["duplicates"] == 0 and results[n]["lost"] == 0
        for n in results
        if isinstance(results[n], dict) and "duplicates" in results[n]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
