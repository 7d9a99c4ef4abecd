#!/usr/bin/env python
"""The GA4GH TES face's three figures, each next to a reference measured in the same run.

1. **latency**: submit -> COMPLETE of an ``echo hi`` task on a Docker destination
   (image ``jobferry-test/python:1``, local, never pulled): N sequential tasks, each
   ``POST /ga4gh/tes/v1/tasks`` then ``GET /tasks/{id}?view=MINIMAL`` every
   ``--poll-ms`` until a final state; alternating with the bare ``docker run --rm
   jobferry-test/python:1 echo hi``, spawned and polled for its exit the same way.
   Median and p99 of both, their ratio and difference. Target: the task's median and
   p99 each <= the bare one's + 100 ms. A breakdown from the task's FULL view (read
   after the fact, untimed) says where the time went.
2. **acceptance**: task creations/s over 16 keep-alive connections to a daemon on
   SQLite whose TES tasks stay queued (a local destination with
   ``tes.container_command`` and ``runners.local.slots: 0``, as ``per_job_accept.py``
   holds jobs queued), in rounds alternating with the hello-world Tornado server of
   ``throughput_refs`` answering the same POST. Medians of the rounds. Target: >= 300/s.
3. **list**: ``GET /ga4gh/tes/v1/tasks?view=MINIMAL&page_size=256`` with 100,000
   tasks in the store (``bench/tes_list.py``): admin and user, a name prefix, a tag,
   deep pages by page token, sequential over one keep-alive connection, next to
   ``GET /healthz``. Target: p99 <= 50 ms.

Usage::

    .venv/bin/python bench/tes.py [--parts latency,accept,list] [--tasks 20]
        [--accept-tasks 2000] [--list-tasks 100000] [--requests 300] [--quick] [--keep]

Each part starts its own daemon in a temporary directory and stops it by pid at the
end (also on error, Ctrl-C or SIGTERM); every wait is bounded (``--time-limit``). A
part whose service is missing (Docker, the image) is skipped with a message. Summary
table on stdout, everything in ``bench/results/tes-<timestamp>.json``. Exit status 0
when every gated figure measured meets its target, 1 otherwise, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: bench/ is sys.path[0], the repository root is not
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common.clients import HttpConn, close_all, run_pool
from bench.common.daemons import Daemon, ScriptServer, bench_run
from bench.common.report import CPUS, BenchError, log, table, write_results
from bench.common.stats import Deadline, LoadMeter, own_cpu_s, percentile, process_cpu_s
from bench.tes_latency import docker_missing, latency_part
from bench.tes_list import (
    IMAGE,
    LOGGING,
    TARGET_LIST_P99_MS,
    TASKS_PATH,
    measure_list,
    seed_tasks,
)
from bench.throughput_refs import hello_server

#: Part 1's target: the task's median and p99 at most this much above the bare run's.
LATENCY_SLACK_MS = 100.0
#: Part 2's target.
ACCEPT_PER_S = 300.0
ACCEPT_BODY = json.dumps(
    {
        "name": "bench-accept",
        "executors": [{"image": IMAGE, "command": ["echo", "hi"]}],
        "tags": {"bench": "accept"},
    }
).encode()


@dataclass
class Figure:
    """One line of the summary: a figure, its reference, and whether it met its target."""

    part: str
    figure: str
    value: float
    reference: float
    reference_name: str
    unit: str
    target: str
    passed: bool | None  # None: informational
    other_cores: float = 0.0

    @property
    def ratio(self) -> float | None:
        return self.value / self.reference if self.reference else None


# --- part 1: submit -> COMPLETE (the measurement: bench/tes_latency.py) -------------------------


def latency_figures(result: dict[str, Any]) -> list[Figure]:
    task, bare = result["task_ms"], result["bare_ms"]
    rows = []
    for name, stat in (("median", statistics.median), ("p99", lambda v: percentile(v, 99))):
        value, ref = float(stat(task)), float(stat(bare))
        rows.append(
            Figure("latency", f"echo task submit->COMPLETE, {name}", value, ref,
                   "bare docker run", "ms", f"<= bare + {LATENCY_SLACK_MS:g} ms",
                   value <= ref + LATENCY_SLACK_MS, result["other_cores"])
        )  # fmt: skip
    return rows


# --- part 2: creations per second ----------------------------------------------------------------


async def pool_rate(
    conns: list[HttpConn], count: int, server_cpu: Callable[[], float], deadline: Deadline
) -> dict[str, Any]:
    """Creations/s of *count* POSTs of a task over *conns* (after a warm-up)."""

    async def create(conn: HttpConn, _index: int) -> str:
        status, body = await conn.request("POST", TASKS_PATH, ACCEPT_BODY, "application/json")
        if status != 200:
            raise BenchError(f"POST {TASKS_PATH} answered {status}: {body[:300]!r}")
        answer = json.loads(body)  # the hello-world server answers a job id
        return str(answer.get("id") or answer["job_id"])

    try:
        await deadline.bounded(run_pool(conns, 2 * len(conns), create), "warm-up")
        meter = LoadMeter(lambda: own_cpu_s() + server_cpu())
        cpu0 = server_cpu()
        t0 = time.perf_counter()
        await deadline.bounded(run_pool(conns, count, create), "task creations")
        seconds = time.perf_counter() - t0
        return {
            "requests": count,
            "requests_per_s": count / seconds,
            "server_cpu_ms_per_request": 1000 * (server_cpu() - cpu0) / count,
            **meter.stop(),
        }
    finally:
        close_all(conns)


def task_states(data_dir: Path) -> dict[str, int]:
    """The job states of the store's TES tasks (read-only, after the fact)."""
    path = data_dir / "jobferry.db"
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as db:
        rows = db.execute(
            "SELECT j.state, count(*) FROM tes_tasks t JOIN jobs j ON j.id = t.job_id"
            " GROUP BY j.state"
        ).fetchall()
    return {str(state): int(n) for state, n in rows}


async def accept_part(
    run_dir: Path, args: argparse.Namespace, deadline: Deadline
) -> dict[str, Any]:
    """Part 2: rounds of creations, alternating with the hello-world server."""
    config = {
        "logging": LOGGING,
        "runners": {"local": {"slots": 0}},  # tasks are accepted and queued, never run
        "destinations": {"local": {"runner": "local"}},
        "routing": {"default": "local"},
        "tes": {"enabled": True, "destination": "local", "container_command": ["docker"]},
    }
    daemon = await Daemon("accept", run_dir, config).start_async()
    hello: ScriptServer = hello_server()
    try:
        await asyncio.to_thread(hello.start)
        per_round = max(2 * args.connections, args.accept_tasks // args.rounds)
        results: dict[str, list[dict[str, Any]]] = {"hello": [], "tes": []}
        for index in range(args.rounds):
            for name in ("hello", "tes") if index % 2 == 0 else ("tes", "hello"):
                if name == "hello":
                    conns = [hello.conn() for _ in range(args.connections)]
                    cpu = lambda: process_cpu_s(hello.pid)  # noqa: E731
                else:
                    conns = [daemon.conn() for _ in range(args.connections)]
                    cpu = lambda: process_cpu_s(daemon.pid)  # noqa: E731
                info = await pool_rate(conns, per_round, cpu, deadline)
                results[name].append(info)
                log(
                    f"acceptance round {index + 1}/{args.rounds} {name}: "
                    f"{info['requests_per_s']:.0f}/s, server CPU "
                    f"{info['server_cpu_ms_per_request']:.2f} ms/request "
                    f"(other work {info['other_cores']:.2f} cores)"
                )
        states = await asyncio.to_thread(task_states, daemon.data_dir)
        log(f"acceptance: the tasks' job states afterwards: {states}")
    finally:
        daemon.stop()
        hello.stop()
    return {
        "per_round": per_round,
        "connections": args.connections,
        "rounds": results,
        "job_states": states,
    }


def accept_figures(result: dict[str, Any]) -> list[Figure]:
    rounds = result["rounds"]
    rate = statistics.median(r["requests_per_s"] for r in rounds["tes"])
    ref = statistics.median(r["requests_per_s"] for r in rounds["hello"])
    other = max(r["other_cores"] for v in rounds.values() for r in v)
    held = set(result["job_states"]) <= {"queued", "new"}
    return [
        Figure("accept", f"task creations/s (c={result['connections']}, queued, SQLite)",
               rate, ref, "hello-world Tornado", "/s", f">= {ACCEPT_PER_S:g}/s",
               rate >= ACCEPT_PER_S and held, other)
    ]  # fmt: skip


# --- part 3 and the run --------------------------------------------------------------------------


def list_part(run_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    config = {
        "logging": LOGGING,
        "runners": {"local": {"slots": 0}},  # the seeded queued tasks stay queued
        "tes": {"enabled": True},
    }
    daemon = Daemon("list", run_dir, config)
    log(f"list: seeding {args.list_tasks:,} tasks into {daemon.data_dir}")
    seeded = seed_tasks(daemon.data_dir, args.list_tasks, random.Random(args.seed))
    log(f"list: seeded in {seeded.seconds:.1f} s")
    daemon.start()
    try:
        rows = measure_list(daemon, seeded, args.requests, args.wait_idle)
    finally:
        daemon.stop()
    return {"seed_seconds": seeded.seconds, "scenarios": [asdict(r) for r in rows]}


def list_figures(result: dict[str, Any]) -> list[Figure]:
    return [
        Figure("list", f"{r['scenario']} ({r['tasks']}), p99 (median {r['median_ms']:.1f})",
               r["p99_ms"], r["reference_p99_ms"], "GET /healthz p99", "ms",
               f"p99 <= {TARGET_LIST_P99_MS:g} ms", r["passed"], r["other_busy_cores"])
        for r in result["scenarios"]
    ]  # fmt: skip


def summary(rows: list[Figure]) -> str:
    def verdict(row: Figure) -> str:
        return "info" if row.passed is None else "PASS" if row.passed else "FAIL"

    return table(
        ("figure", "value", "reference", "ratio", "diff", "target", "other load", "result"),
        [
            (
                r.figure,
                f"{r.value:.1f} {r.unit}",
                f"{r.reference:.1f} {r.unit} ({r.reference_name})",
                f"{r.ratio:.2f}" if r.ratio is not None else "n/a",
                f"{r.value - r.reference:+.1f} {r.unit}",
                r.target,
                f"{r.other_cores:.2f} / {CPUS} cores",
                verdict(r),
            )
            for r in rows
        ],
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="latency,accept,list", help="comma-separated")
    parser.add_argument("--tasks", type=int, default=None, help="latency: tasks (100)")
    parser.add_argument("--poll-ms", type=float, default=20.0, help="latency: poll interval")
    parser.add_argument("--accept-tasks", type=int, default=None, help="creations (2000)")
    parser.add_argument("--rounds", type=int, default=3, help="acceptance rounds")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--list-tasks", type=int, default=None, help="seeded tasks (100000)")
    parser.add_argument("--requests", type=int, default=None, help="per scenario (300)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="S",
        help="list: before each scenario, wait up to S s for other work on the machine to stop",
    )
    parser.add_argument("--time-limit", type=float, default=1800.0, metavar="S")
    parser.add_argument("--quick", action="store_true", help="5 tasks, 600, 20,000, 100")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {"tasks": (100, 5), "accept_tasks": (2000, 600), "list_tasks": (100_000, 20_000),
                "requests": (300, 100)}  # fmt: skip
    for name, (full, small) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(args.parts) - {"latency", "accept", "list"}
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    deadline = Deadline(args.time_limit)
    rows: list[Figure] = []
    details: dict[str, Any] = {}
    errors: list[str] = []
    interrupted = False
    with bench_run("jobferry-tes-", args.keep) as run:
        for part in args.parts:
            try:
                if part == "latency":
                    missing = docker_missing()
                    if missing:
                        log(f"latency: skipped, Docker is not usable: {missing}")
                        errors.append(f"latency skipped: {missing}")
                        continue
                    details["latency"] = latency_part(run.workdir, args, deadline)
                    rows += latency_figures(details["latency"])
                elif part == "accept":
                    details["accept"] = asyncio.run(accept_part(run.workdir, args, deadline))
                    rows += accept_figures(details["accept"])
                else:
                    details["list"] = list_part(run.workdir, args)
                    rows += list_figures(details["list"])
            except KeyboardInterrupt:
                interrupted = True
                errors.append("interrupted")
                break
            except Exception as exc:  # the other parts still run
                log(f"!! {part} failed: {type(exc).__name__}: {exc}")
                errors.append(f"{part}: {type(exc).__name__}: {exc}")
    print()
    print(summary(rows))
    latency = details.get("latency")
    if latency:
        print("\nwhere a task's latency goes (medians; store and FULL view, read afterwards):")
        for name, ms in latency["breakdown_median_ms"].items():
            print(f"  {name:<40} {ms:8.1f} ms")
        print(f"  status polls per task: {latency['status_polls_median']}")
    for error in errors:
        print(f"ERROR: {error}")
    out = write_results(
        "tes",
        run.stamp,
        {
            "settings": {k: v for k, v in vars(args).items()},
            "summary": [{**asdict(r), "ratio": r.ratio} for r in rows],
            "details": details,
            "errors": errors,
        },
    )
    print(f"\nresults: {out}")
    if interrupted:
        return 130
    gated = [r for r in rows if r.passed is not None]
    return 0 if gated and all(r.passed for r in gated) and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
