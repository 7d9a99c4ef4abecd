#!/usr/bin/env python
"""What Prometheus metrics cost: ``GET /metrics`` latency with 100,000 jobs in the store,
and end-to-end throughput with metrics enabled against disabled, in one run.

(a) A daemon's SQLite store is seeded directly (one bulk INSERT through the store's
    table) with ``--store-jobs`` rows: most ended, some queued for a destination this
    node does not serve, some running on another node, so every aggregate has rows.
    The daemon then runs with ``metrics.store_cache_s: 0``, so that *every* scrape
    reads the store (what a scraper every 15 s meets with the default 5 s cache), and
    ``GET /metrics`` is timed over one keep-alive connection, alternating with
    ``GET /healthz`` on the same connection (the reference: the same server, the same
    HTTP path, no work). Target: p99 <= 50 ms.
(b) Two daemons on one machine (default configuration; one with ``metrics.enabled:
    false``) run batches of noop jobs in alternating rounds (which goes first
    alternates too); the enabled one is scraped every ``--scrape-every`` s meanwhile
    (15, the sample scrape_interval). The medians of jobs/s are compared. Target:
    within 3 %.

Usage::

    .venv/bin/python bench/metrics.py [--store-jobs 100000] [--scrapes 300]
        [--rounds 3] [--jobs 150] [--keep]

Processes are stopped by pid at the end (also on error or Ctrl-C); results go to
``bench/results/metrics-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: bench/ is sys.path[0], the repository root is not
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import insert, select

from bench.common.clients import HttpConn, submit_many, wait_all
from bench.common.daemons import JOB_SCRIPTS, Daemon, bench_run
from bench.common.report import CPUS, BenchError, log, table, write_results
from bench.common.stats import Deadline, percentile
from jobferry.store.engine import make_engine
from jobferry.store.models import Job, User

NOOP = JOB_SCRIPTS / "noop.py"
TARGET_P99_MS = 50.0
TARGET_RATIO = 0.97
#: How often the metrics-enabled daemon is scraped during the throughput rounds, s
#: (conf/prometheus/prometheus.yml's scrape_interval; --scrape-every).
SCRAPE_EVERY_S = 15.0
#: Rows per INSERT statement while seeding.
SEED_BATCH = 5000


# --- (a) /metrics with a big store ---------------------------------------------------------------


def seed(data_dir: Path, count: int) -> dict[str, int]:
    """Insert *count* job rows into the daemon's store; how many of each kind."""
    engine = make_engine(f"sqlite:///{data_dir / 'jobferry.db'}")
    with engine.begin() as conn:
        user_id = conn.execute(select(User.id).where(User.username == "admin")).scalar_one()
    queued = min(2000, count // 50)
    running = min(1000, count // 100)
    kinds = {"ended": count - queued - running, "queued": queued, "running": running}
    t0 = datetime.now(UTC) - timedelta(days=30)
    rows: list[dict[str, Any]] = []

    def flush() -> None:
        with engine.begin() as conn:
            conn.execute(insert(Job), rows)
        rows.clear()

    for i in range(count):
        if i < kinds["ended"]:
            state, node, dest = ("ok", "error", "deleted")[i % 3], "node-old", "local"
        elif i < kinds["ended"] + queued:
            state, node, dest = "queued", None, ("pool-a", "pool-b")[i % 2]
        else:
            state, node, dest = "running", "node-x", "pool-a"
        created = t0 + timedelta(seconds=i)
        rows.append(
            {
                "id": uuid.uuid4().hex[:16],
                "uuid": str(uuid.uuid4()),
                "user_id": user_id,
                "name": "seeded",
                "command": "",
                "argv": ["python", "noop.py"],
                "params": {},
                "state": state,
                "priority": 0,
                "runner": "local",
                "destination": dest,
                "node": node,
                "attempt": 1,
                "cores": 1,
                "gpus": 0,
                "job_dir": f"/nonexistent/{i}",
                "created_at": created,
                "updated_at": created,
            }
        )
        if len(rows) >= SEED_BATCH:
            flush()
    if rows:
        flush()
    engine.dispose()
    return kinds


async def timed(conn: HttpConn, path: str) -> float:
    t0 = time.perf_counter()
    status, body = await conn.request("GET", path)
    seconds = time.perf_counter() - t0
    if status != 200:
        raise BenchError(f"GET {path} answered {status}: {body[:200]!r}")
    return seconds


async def scrape_latency(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    config = {"metrics": {"store_cache_s": 0}}
    daemon = Daemon("big-store", workdir, config)
    await daemon.start_async()
    daemon.stop()
    log(f"seeding {args.store_jobs} job rows")
    t0 = time.perf_counter()
    kinds = await asyncio.to_thread(seed, daemon.data_dir, args.store_jobs)
    log(f"seeded in {time.perf_counter() - t0:.1f}s: {kinds}")
    await daemon.start_async()
    try:
        conn = HttpConn(daemon.host, daemon.port)  # loopback: /metrics needs no key
        for _ in range(20):  # warm-up: connections, caches, first imports
            await timed(conn, "/metrics")
            await timed(conn, "/healthz")
        metrics: list[float] = []
        healthz: list[float] = []
        for _ in range(args.scrapes):
            metrics.append(await timed(conn, "/metrics"))
            healthz.append(await timed(conn, "/healthz"))
        status, body = await conn.request("GET", "/metrics")
        conn.close()
        text = body.decode()
        read_s = next(
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith("jobferry_store_figures_read_seconds{")
        )
    finally:
        daemon.stop()
    figures = {
        "store_jobs": args.store_jobs,
        "kinds": kinds,
        "scrapes": args.scrapes,
        "metrics_p50_ms": 1000 * statistics.median(metrics),
        "metrics_p99_ms": 1000 * percentile(metrics, 99),
        "metrics_max_ms": 1000 * max(metrics),
        "healthz_p50_ms": 1000 * statistics.median(healthz),
        "healthz_p99_ms": 1000 * percentile(healthz, 99),
        "store_read_ms_last": 1000 * read_s,
        "exposition_bytes": len(body),
    }
    log(json.dumps(figures))
    return figures


# --- (b) throughput, metrics on and off ---------------------------------------------------------


async def batch(
    daemon: Daemon, slug: str, n: int, deadline: Deadline, scrape_every_s: float
) -> tuple[float, float]:
    """Submit *n* noop jobs over CPUS*2 connections and wait for all; (jobs/s, daemon CPU
    ms per job)."""
    conns = [daemon.conn() for _ in range(2 * CPUS)]
    scraper = HttpConn(daemon.host, daemon.port)
    stop = asyncio.Event()

    async def scrape_loop() -> None:
        while not stop.is_set():
            await timed(scraper, "/metrics")
            try:
                await asyncio.wait_for(stop.wait(), scrape_every_s)
            except TimeoutError:
                pass

    task = asyncio.ensure_future(scrape_loop()) if scrape_every_s > 0 else None
    try:
        cpu0, _ = daemon.cpu()
        t0 = time.perf_counter()
        ids = await deadline.bounded(submit_many(conns, slug, n), "submitting")
        done = await wait_all(conns[:2], ids, deadline, window=4 * CPUS)
        if done.failed:
            raise BenchError(f"{done.failed} jobs did not complete")
        cpu1, _ = daemon.cpu()
        return n / (done.t_end - t0), 1000 * (cpu1 - cpu0) / n
    finally:
        stop.set()
        if task is not None:
            await task
        for conn in [*conns, scraper]:
            conn.close()


async def throughput(workdir: Path, args: argparse.Namespace, deadline: Deadline) -> dict[str, Any]:
    # --aa: both disabled, the same comparison measures the noise floor of this machine.
    on = Daemon("metrics-on", workdir, {"metrics": {"enabled": not args.aa}})
    off = Daemon("metrics-off", workdir, {"metrics": {"enabled": False}})
    await on.start_async()
    await off.start_async()
    slugs = {d.name: await asyncio.to_thread(d.register, NOOP) for d in (on, off)}
    rates: dict[str, list[float]] = {on.name: [], off.name: []}
    cpu_ms: dict[str, list[float]] = {on.name: [], off.name: []}
    try:
        for daemon in (on, off):  # warm-up round, not counted
            await batch(daemon, slugs[daemon.name], max(20, args.jobs // 5), deadline, 0)
        for r in range(args.rounds):
            order = (on, off) if r % 2 == 0 else (off, on)
            for daemon in order:
                every = args.scrape_every if daemon is on else 0
                rate, cpu = await batch(daemon, slugs[daemon.name], args.jobs, deadline, every)
                rates[daemon.name].append(rate)
                cpu_ms[daemon.name].append(cpu)
                log(f"round {r + 1}: {daemon.name} {rate:.1f} jobs/s, daemon CPU {cpu:.2f} ms/job")
    finally:
        on.stop()
        off.stop()
    on_median = statistics.median(rates[on.name])
    off_median = statistics.median(rates[off.name])
    return {
        "jobs_per_round": args.jobs,
        "rounds": args.rounds,
        "scrape_every_s": args.scrape_every,
        "aa_control": args.aa,
        "rates": rates,
        "daemon_cpu_ms_per_job": cpu_ms,
        "enabled_median_cpu_ms_per_job": statistics.median(cpu_ms[on.name]),
        "disabled_median_cpu_ms_per_job": statistics.median(cpu_ms[off.name]),
        "enabled_median_jobs_per_s": on_median,
        "disabled_median_jobs_per_s": off_median,
        "ratio": on_median / off_median,
    }


# --- (c) what one job's recording costs, in process ---------------------------------------------


def recording_cost(rounds: int = 20000) -> dict[str, Any]:
    """Seconds per job of the recording calls a job causes (a submission, its start and
    end, eight HTTP requests), enabled against disabled (the call overhead alone)."""
    from jobferry.config.operations import MetricsConfig
    from jobferry.services.telemetry import Telemetry

    created = datetime.now(UTC)

    def per_job(telemetry: Telemetry) -> float:
        t0 = time.perf_counter()
        for _ in range(rounds):
            telemetry.submitted("wooey")
            telemetry.job_started("local", created)
            telemetry.job_ended("local", "local", "ok", None, 0.2)
            for _ in range(8):
                telemetry.http_request("/api/jobs/v1/{}/status", "GET", 200, 0.001)
        return (time.perf_counter() - t0) / rounds

    on = Telemetry(MetricsConfig(enabled=True), "bench")
    off = Telemetry(MetricsConfig(enabled=False), "bench")
    per_job(on)  # warm-up
    on_s = statistics.median(per_job(on) for _ in range(5))
    off_s = statistics.median(per_job(off) for _ in range(5))
    figures = {"enabled_us_per_job": 1e6 * on_s, "disabled_us_per_job": 1e6 * off_s}
    log(json.dumps(figures))
    return figures


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store-jobs", type=int, default=100_000, help="rows seeded (100000)")
    parser.add_argument("--scrapes", type=int, default=300, help="timed scrapes (300)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per configuration (3)")
    parser.add_argument("--jobs", type=int, default=150, help="noop jobs per round (150)")
    parser.add_argument(
        "--scrape-every",
        type=float,
        default=SCRAPE_EVERY_S,
        help=f"scrape the enabled daemon every S s in its rounds; 0: never ({SCRAPE_EVERY_S:g})",
    )
    parser.add_argument(
        "--aa", action="store_true", help="A/A control: metrics off on both daemons (noise)"
    )
    parser.add_argument("--time-limit", type=float, default=1200, help="overall limit, s")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-scrape", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return parser.parse_args(argv)


async def run(workdir: Path, args: argparse.Namespace, out: dict[str, Any]) -> None:
    deadline = Deadline(args.time_limit)
    out["recording"] = await asyncio.to_thread(recording_cost)
    if not args.skip_scrape:
        out["scrape"] = await deadline.bounded(scrape_latency(workdir, args), "the scrape test")
    if not args.skip_throughput:
        out["throughput"] = await throughput(workdir, args, deadline)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out: dict[str, Any] = {}
    with bench_run("jobferry-bench-metrics-", args.keep) as bench:
        log(f"metrics benchmark: {CPUS} CPUs, data in {bench.workdir}")
        asyncio.run(run(bench.workdir, args, out))
        lines = []
        passed = True
        if "scrape" in out:
            s = out["scrape"]
            ok = s["metrics_p99_ms"] <= TARGET_P99_MS
            passed &= ok
            lines.append(
                [
                    f"GET /metrics p50/p99, {s['store_jobs']} jobs, uncached",
                    f"{s['metrics_p50_ms']:.2f} / {s['metrics_p99_ms']:.2f} ms",
                    f"/healthz {s['healthz_p50_ms']:.2f} / {s['healthz_p99_ms']:.2f} ms",
                    f"x{s['metrics_p99_ms'] / s['healthz_p99_ms']:.1f} (p99)",
                    f"p99 <= {TARGET_P99_MS:.0f} ms: {'ok' if ok else 'MISSED'}",
                ]
            )
        r = out["recording"]
        lines.append(
            [
                "recording per job (1 submit, start, end, 8 requests)",
                f"{r['enabled_us_per_job']:.1f} us",
                f"disabled {r['disabled_us_per_job']:.1f} us",
                f"+{r['enabled_us_per_job'] - r['disabled_us_per_job']:.1f} us",
                "",
            ]
        )
        if "throughput" in out:
            t = out["throughput"]
            ok = t["ratio"] >= TARGET_RATIO
            passed &= ok
            lines.append(
                [
                    f"throughput, metrics on ({t['rounds']}x{t['jobs_per_round']} jobs)",
                    f"{t['enabled_median_jobs_per_s']:.1f} jobs/s",
                    f"metrics off {t['disabled_median_jobs_per_s']:.1f} jobs/s",
                    f"{t['ratio']:.3f}",
                    f">= {TARGET_RATIO}: {'ok' if ok else 'MISSED'}",
                ]
            )
            lines.append(
                [
                    "daemon CPU per job, metrics on",
                    f"{t['enabled_median_cpu_ms_per_job']:.2f} ms",
                    f"metrics off {t['disabled_median_cpu_ms_per_job']:.2f} ms",
                    f"{t['enabled_median_cpu_ms_per_job'] / t['disabled_median_cpu_ms_per_job']:.3f}",  # noqa: E501
                    "",
                ]
            )
        path = write_results("metrics", bench.stamp, {**out, "passed": passed})
    print(table(["figure", "value", "reference", "ratio", "target"], lines))
    print(f"results: {path}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
