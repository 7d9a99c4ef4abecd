#!/usr/bin/env python
"""Latency of Galaxy's ``GET /api/jobs`` on a store holding many jobs.

A fresh data directory gets a schema, four users, three registered scripts and
N jobs (default 100,000; spread over users, tools, states, histories and 90
days), inserted with Core ``executemany`` before any daemon starts. Then a
real ``jobferry serve`` runs on it and each scenario is requested sequentially
over one keep-alive connection (warm-up first), median and p99 reported next
to the loopback reference: ``GET /api/version`` on the same daemon.

The listing indexes it once proposed (``PROPOSED_INDEXES``) are now part of the
schema (migration 0004), so the default ``--indexes none`` measures the schema as
it ships; ``proposed``/``both`` are kept to re-check them (``IF NOT EXISTS``).

Usage::

    .venv/bin/python bench/jobs_list.py [--jobs 100000] [--requests 300]
        [--indexes none|proposed|both] [--wait-idle S] [--keep]

The seeded jobs are terminal, or queued/running on a runner/node this daemon
does not own, so the daemon's scheduler and recovery leave them alone. The
daemon is stopped by pid at the end (also on error or Ctrl-C); every wait is
bounded. Each row also shows how many cores *other* work on the machine kept busy
meanwhile (this client and the daemon excluded): on a shared machine that is what
the p99 mostly measures; ``--wait-idle S`` waits for quiet before each scenario.
Summary table on stdout, everything in ``bench/results/jobs_list-<timestamp>.json``.
Exit status 0 when every gated scenario (pages of 100) meets the p99 target with
the last schema measured.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sqlite3
import statistics
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests

if not __package__:  # run as a script: bench/ is sys.path[0], the repository root is not
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common.daemons import JOB_SCRIPTS, Daemon, bench_run
from bench.common.report import CPUS, log, table, write_results
from bench.common.stats import LoadMeter, own_cpu_s, percentile, process_cpu_s
from jobferry.config import load_config
from jobferry.services.container import Services, build
from jobferry.services.core import Core, Principal
from jobferry.services.scripts import ScriptUpload
from jobferry.store.engine import check_schema
from jobferry.store.models import Base, new_id

SCRIPTS = [JOB_SCRIPTS / n for n in ("wordcount.py", "sleeper.py", "noop.py")]
TARGET_P99_MS = 50.0
WARMUP = 20

#: Indexes proposed for the Galaxy jobs listing: newest first by update_time (default) or
#: create_time, per user for non-admins, by state. ``id`` last: it is the order's tiebreaker
#: and makes them covering for the page-of-ids subquery (offsets walk the index only).
PROPOSED_INDEXES = {
    "ix_jobs_updated": "CREATE INDEX IF NOT EXISTS ix_jobs_updated ON jobs (updated_at, id)",
    "ix_jobs_created": "CREATE INDEX IF NOT EXISTS ix_jobs_created ON jobs (created_at, id)",
    "ix_jobs_user_updated": (
        "CREATE INDEX IF NOT EXISTS ix_jobs_user_updated ON jobs (user_id, updated_at, id)"
    ),
    "ix_jobs_state_updated": (
        "CREATE INDEX IF NOT EXISTS ix_jobs_state_updated ON jobs (state, updated_at, id)"
    ),
}

#: (state, weight, runner, node): terminal states, or active ones this daemon never touches.
STATES = [
    ("ok", 70, "local", "bench-node"),
    ("error", 15, "local", "bench-node"),
    ("deleted", 10, "local", "bench-node"),
    ("queued", 3, "elsewhere", None),
    ("running", 2, "elsewhere", "another-node"),
]


# --- seeding ------------------------------------------------------------------------------------


@dataclass
class Seeded:
    admin_key: str
    user_keys: dict[str, str]
    user_ids: dict[str, str]
    slugs: list[str]
    jobs: int
    seconds: float


@dataclass
class FreshStore:
    """A new store with its admin (key in ``admin-api-key``) and three users."""

    core: Core
    services: Services
    admin_id: str
    admin_key: str
    keys: dict[str, str]  # user name → API key
    ids: dict[str, str]  # user name → id


def fresh_store(data_dir: Path) -> FreshStore:
    """The schema made in *data_dir*'s new store, the admin and ann, ben and cat in it;
    the caller closes ``core``."""
    config = load_config(None, environ={}, overrides={"data_dir": str(data_dir)})
    core = Core(config)
    core.ensure_dirs()
    check_schema(core.engine)  # a fresh store: creates the schema
    services = build(core)
    admin_info, admin_key = services.auth.create_user("admin", is_admin=True)
    (data_dir / "admin-api-key").write_text(admin_key + "\n")
    keys: dict[str, str] = {}
    ids: dict[str, str] = {}
    for name in ("ann", "ben", "cat"):
        info, key = services.auth.create_user(name, email=f"{name}@example.org")
        keys[name], ids[name] = key, info.id
    return FreshStore(core, services, admin_info.id, admin_key, keys, ids)


def seed(data_dir: Path, jobs: int, rng: random.Random) -> Seeded:
    started = time.perf_counter()
    store = fresh_store(data_dir)
    core, services, keys, ids = store.core, store.services, store.keys, store.ids
    admin_key = store.admin_key
    try:
        principal = Principal(store.admin_id, "admin", True)
        scripts = services.scripts
        versions: list[tuple[str, str]] = []
        for path in SCRIPTS:
            copy = core.tmp_path / path.name
            shutil.copyfile(path, copy)
            result = scripts.add_or_update(principal, [ScriptUpload(path.stem, copy, path.name)])
            assert result[0]["success"], result
            detail = scripts.get_script(result[0]["slug"])
            versions.append((detail["slug"], detail["default_version"]["id"]))
        owners = [store.admin_id, *ids.values()]
        histories = [new_id() for _ in range(50)]
        weights = [w for _, w, _, _ in STATES]
        now = datetime.now(UTC)
        jobs_table = Base.metadata.tables["jobs"]
        files_table = Base.metadata.tables["job_files"]
        batch = 5000
        with core.engine.begin() as conn:
            for start in range(0, jobs, batch):
                job_rows: list[dict[str, Any]] = []
                file_rows: list[dict[str, Any]] = []
                for _ in range(min(batch, jobs - start)):
                    state, _, runner, node = rng.choices(STATES, weights)[0]
                    slug, version_id = rng.choice(versions)
                    created = now - timedelta(seconds=rng.uniform(60, 90 * 86400))
                    started_at = created + timedelta(seconds=rng.uniform(0.01, 30))
                    updated = started_at + timedelta(seconds=rng.uniform(0.01, 600))
                    terminal = state in ("ok", "error", "deleted")
                    job_id = new_id()
                    job_rows.append(
                        {
                            "id": job_id,
                            "uuid": str(uuid.uuid4()),
                            "user_id": rng.choice(owners),
                            "script_version_id": version_id,
                            "name": f"bench {slug}",
                            "description": None,
                            "command": "--infile doc",
                            "argv": ["python", f"{slug}.py", "--infile", "doc"],
                            "params": {"infile": "doc", "repeat": rng.randint(1, 3)},
                            "state": state,
                            "state_reason": "exit code 1" if state == "error" else None,
                            "exit_code": (0 if state == "ok" else 1) if terminal else None,
                            "priority": 0,
                            "history_id": rng.choice(histories),
                            "runner": runner,
                            "destination": runner,
                            "node": node,
                            "attempt": 1 if state != "queued" else 0,
                            "external_id": None,
                            "handle": None,
                            "cores": 1,
                            "memory_mb": None,
                            "walltime_s": None,
                            "job_dir": str(data_dir / "jobs" / job_id[:2] / job_id),
                            "created_at": created,
                            "updated_at": updated,
                            "started_at": None if state == "queued" else started_at,
                            "finished_at": updated if terminal else None,
                            "wall_s": (updated - started_at).total_seconds() if terminal else None,
                            "cpu_user_s": None,
                            "cpu_sys_s": None,
                            "peak_rss_kb": None,
                        }
                    )
                    if state == "ok":
                        file_rows.append(
                            {
                                "id": new_id(),
                                "job_id": job_id,
                                "kind": "output",
                                "name": "count.txt",
                                "param": None,
                                "size": 3,
                                "sha256": "0" * 64,
                                "created_at": updated,
                            }
                        )
                conn.execute(jobs_table.insert(), job_rows)
                if file_rows:
                    conn.execute(files_table.insert(), file_rows)
        with core.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
    finally:
        core.close()
    return Seeded(
        admin_key=admin_key,
        user_keys=keys,
        user_ids=ids,
        slugs=[s for s, _ in versions],
        jobs=jobs,
        seconds=time.perf_counter() - started,
    )


def add_indexes(data_dir: Path) -> None:
    with sqlite3.connect(data_dir / "jobferry.db") as db:
        for sql in PROPOSED_INDEXES.values():
            db.execute(sql)
        db.execute("ANALYZE")


# --- measuring ----------------------------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    path: str
    who: str  # "admin" or a user name
    #: Whether the p99 target applies (it is set for pages of 100).
    gated: bool = True


@dataclass
class Measured:
    schema: str
    scenario: str
    path: str
    who: str
    items: int
    median_ms: float
    p99_ms: float
    max_ms: float
    reference_median_ms: float
    reference_p99_ms: float
    #: Cores other work on the machine kept busy while the scenario ran (this client
    #: and the daemon excluded): context for noisy figures on a shared machine.
    other_busy_cores: float
    passed: bool | None  # None: informational


def other_load(daemon: Daemon) -> LoadMeter:
    """Other work on the machine: not this client, not the daemon."""
    return LoadMeter(lambda: own_cpu_s() + process_cpu_s(daemon.pid))


def wait_idle(daemon: Daemon, limit_s: float, threshold: float = 0.3) -> float:
    """Wait (up to *limit_s*) until other work uses fewer than *threshold* cores."""
    deadline = time.monotonic() + limit_s
    while True:
        load = other_load(daemon)
        time.sleep(1.0)
        others = load.stop()["other_cores"]
        if others < threshold or time.monotonic() >= deadline:
            return others


def time_gets(session: requests.Session, url: str, count: int) -> tuple[list[float], Any]:
    """Milliseconds of *count* GETs of *url* (after WARMUP untimed ones), and the last
    response (any status but 200 raises)."""
    last: Any = None
    for _ in range(WARMUP):
        response = session.get(url, timeout=30)
        response.raise_for_status()
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        response = session.get(url, timeout=30)
        samples.append((time.perf_counter() - started) * 1000.0)
        if response.status_code != 200:
            raise RuntimeError(f"{url}: {response.status_code} {response.text[:200]}")
        last = response
    return samples, last


def scenarios(seeded: Seeded) -> list[Scenario]:
    tool = seeded.slugs[0]
    return [
        Scenario("admin, newest 100", "/api/jobs?limit=100", "admin"),
        Scenario("user, newest 100", "/api/jobs?limit=100", "ann"),
        Scenario("admin, state=error", "/api/jobs?limit=100&state=error", "admin"),
        Scenario(
            "admin, state=ok offset=1000", "/api/jobs?limit=100&state=ok&offset=1000", "admin"
        ),
        Scenario(
            "user, state=ok,error offset=500",
            "/api/jobs?limit=100&state=ok,error&offset=500",
            "ann",
        ),
        Scenario(f"user, tool_id={tool}", f"/api/jobs?limit=100&tool_id={tool}", "ann"),
        Scenario(
            "admin, order_by=create_time", "/api/jobs?limit=100&order_by=create_time", "admin"
        ),
        Scenario(
            "bioblend default (limit 500)",
            "/api/jobs?limit=500&offset=0&order_by=update_time",
            "ann",
            gated=False,
        ),
    ]


def measure(
    daemon: Daemon, seeded: Seeded, schema: str, count: int, idle_s: float
) -> list[Measured]:
    sessions: dict[str, requests.Session] = {}
    for who, key in [("admin", seeded.admin_key), *seeded.user_keys.items()]:
        session = requests.Session()
        session.headers["x-api-key"] = key
        sessions[who] = session
    try:
        reference, _ = time_gets(sessions["admin"], daemon.url + "/api/version", count)
        ref_median, ref_p99 = statistics.median(reference), percentile(reference, 99)
        log(
            f"[{schema}] reference GET /api/version: "
            f"median {ref_median:.2f} ms, p99 {ref_p99:.2f} ms"
        )
        results = []
        for scenario in scenarios(seeded):
            if idle_s > 0:
                wait_idle(daemon, idle_s)
            load = other_load(daemon)
            samples, last = time_gets(sessions[scenario.who], daemon.url + scenario.path, count)
            body = last.json()
            busy = load.stop()["other_cores"]
            median, p99 = statistics.median(samples), percentile(samples, 99)
            log(f"[{schema}] {scenario.name}: median {median:.2f} ms, p99 {p99:.2f} ms")
            results.append(
                Measured(
                    schema=schema,
                    scenario=scenario.name,
                    path=scenario.path,
                    who=scenario.who,
                    items=len(body),
                    median_ms=median,
                    p99_ms=p99,
                    max_ms=max(samples),
                    reference_median_ms=ref_median,
                    reference_p99_ms=ref_p99,
                    other_busy_cores=busy,
                    passed=(p99 <= TARGET_P99_MS) if scenario.gated else None,
                )
            )
        return results
    finally:
        for session in sessions.values():
            session.close()


def summary_table(rows: list[Measured]) -> str:
    header = (
        "schema",
        "scenario",
        "items",
        "median ms",
        "p99 ms",
        "ref median/p99 ms",
        "other load",
        "p99<=50",
    )
    lines = [
        (
            r.schema,
            r.scenario,
            str(r.items),
            f"{r.median_ms:.2f}",
            f"{r.p99_ms:.2f}",
            f"{r.reference_median_ms:.2f} / {r.reference_p99_ms:.2f}",
            f"{r.other_busy_cores:.2f} / {CPUS} cores",
            "info" if r.passed is None else "PASS" if r.passed else "FAIL",
        )
        for r in rows
    ]
    return table(header, lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--indexes", choices=("none", "proposed", "both"), default="none")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="S",
        help="before each scenario, wait up to S s for other work on the machine to stop",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    args = parser.parse_args(argv)
    rows: list[Measured] = []
    with bench_run("jobferry-jobs-list-", args.keep) as run:
        daemon = Daemon("data", run.workdir)
        data_dir = daemon.data_dir
        try:
            log(f"seeding {args.jobs:,} jobs into {data_dir}")
            seeded = seed(data_dir, args.jobs, random.Random(args.seed))
            log(f"seeded in {seeded.seconds:.1f} s")
            schemas = {
                "none": ["baseline"],
                "proposed": ["proposed"],
                "both": ["baseline", "proposed"],
            }
            for schema in schemas[args.indexes]:
                if schema == "proposed":
                    add_indexes(data_dir)
                    log(f"added {', '.join(PROPOSED_INDEXES)}")
                daemon.start()
                try:
                    rows += measure(daemon, seeded, schema, args.requests, args.wait_idle)
                finally:
                    daemon.stop()
        except KeyboardInterrupt:
            return 130
    print()
    print(summary_table(rows))
    out = write_results(
        "jobs_list",
        run.stamp,
        {
            "jobs": args.jobs,
            "requests_per_scenario": args.requests,
            "target_p99_ms": TARGET_P99_MS,
            "proposed_indexes": PROPOSED_INDEXES,
            "sqlite": sqlite3.sqlite_version,
            "seed_seconds": seeded.seconds,
            "results": [asdict(r) for r in rows],
        },
    )
    print(f"\nresults: {out}")
    last = rows[-1].schema if rows else None
    gated = [r for r in rows if r.schema == last and r.passed is not None]
    return 0 if gated and all(r.passed for r in gated) else 1


if __name__ == "__main__":
    sys.exit(main())
