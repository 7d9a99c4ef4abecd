#!/usr/bin/env python
"""Throughput, latency, acceptance and memory of a real ``jobferry serve``.

Every figure is printed next to a reference measured on this machine in the
same run (bare process spawns, a hello-world Tornado server), so the ratios
say how close the daemon gets to what the machine can do. See bench/README.md.

Usage::

    .venv/bin/python bench/throughput.py [--quick] [--jobs 500] [--latency-jobs 100]
        [--accept-jobs 2000] [--rss-jobs 10000] [--profile]

Standard library + requests + tornado + psutil only. Daemons run in
subprocesses with their data in a temporary directory and are stopped by pid
at the end (also on error or Ctrl-C); every wait is bounded. The parts live in
``throughput_refs`` (the machine's references), ``throughput_daemon``
(throughput, latency, memory) and ``throughput_accept`` (acceptance), on the
frame of ``throughput_harness`` and the helpers of ``bench/common``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

if not __package__:  # run as a script: bench/ is sys.path[0], the repository root is not
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import report
from bench.common.daemons import bench_run
from bench.common.report import CPUS, log
from bench.throughput_accept import Acceptance
from bench.throughput_daemon import DaemonFigures
from bench.throughput_harness import LATENCY_POLL_S, NOISY_CORES, Settings, summary_table


class Bench(DaemonFigures, Acceptance):
    """The whole run: its parts in order, each failing alone."""

    async def run(self) -> None:
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("fork+exec reference", self.fork_reference),
            ("bare spawn references", self.bare_references),
            ("daemon throughput, latency and memory", self.daemon_figures),
            ("acceptance", self.acceptance),
        ]
        for name, step in steps:
            log(f"== {name}")
            await report.guarded(name, self.results.errors, self.part(name, step))

    async def part(self, name: str, step: Callable[[], Awaitable[None]]) -> None:
        """One part, once the machine is quiet (or --wait-idle has passed)."""
        await self.background_load(name)
        await step()


# --- main -----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, help="jobs in the throughput test (500; quick 100)")
    parser.add_argument("--latency-jobs", type=int, help="sequential jobs (100; quick 20)")
    parser.add_argument("--accept-jobs", type=int, help="submissions, slots=0 (2000; quick 300)")
    parser.add_argument("--rss-jobs", type=int, help="jobs before the RSS (10000; quick 1000)")
    parser.add_argument("--fork-spawns", type=int, help="/bin/true spawns (2000; quick 300)")
    parser.add_argument(
        "--accept-concurrency", type=int, default=16, help="client connections (16)"
    )
    parser.add_argument("--time-limit", type=float, help="overall limit, s (1800; quick 300)")
    parser.add_argument(
        "--latency-poll",
        action="store_true",
        help="in the latency test, poll status every --latency-poll-ms instead of the "
        "daemon's long-poll (status/?wait=30), as a plain Wooey client would",
    )
    parser.add_argument(
        "--latency-poll-ms",
        type=float,
        default=1000 * LATENCY_POLL_S,
        help="status poll interval in the latency test, ms (2)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        help="repeat a measurement up to this many times when other work used more than"
        f" {NOISY_CORES} cores meanwhile; the least disturbed attempt counts (2; quick 0)",
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        help="before each part, wait up to this many seconds for other work on the machine"
        " to stop (30; quick 0)",
    )
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run the daemons under cProfile (all threads); figures are then not comparable",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    quick = bool(args.quick)

    def pick(value: int | float | None, full: float, small: float) -> float:
        return float(value) if value is not None else (small if quick else full)

    settings = Settings(
        jobs=int(pick(args.jobs, 500, 100)),
        latency_jobs=int(pick(args.latency_jobs, 100, 20)),
        accept_jobs=int(pick(args.accept_jobs, 2000, 300)),
        rss_jobs=int(pick(args.rss_jobs, 10000, 1000)),
        fork_spawns=int(pick(args.fork_spawns, 2000, 300)),
        concurrency=CPUS,
        accept_concurrency=int(args.accept_concurrency),
        time_limit_s=pick(args.time_limit, 1800, 300),
        wait_idle_s=pick(args.wait_idle, 30, 0),
        latency_poll_s=max(0.0, float(args.latency_poll_ms)) / 1000,
        latency_long_poll=not args.latency_poll,
        retries=max(0, int(pick(args.retries, 2, 0))),
        profile=bool(args.profile),
        keep=bool(args.keep),
        quick=quick,
    )
    if min(settings.jobs, settings.latency_jobs, settings.accept_jobs, settings.fork_spawns) < 2:
        parser.error("every count must be at least 2")
    if not 1 <= settings.accept_concurrency <= 256:
        parser.error("--accept-concurrency must be in 1..256")
    return settings


def write_json(bench: Bench, settings: Settings, stamp: str, seconds: float) -> Path:
    results = bench.results
    passed = bool(results.rows) and not results.errors
    passed = passed and all(row.passed is not False for row in results.rows)
    return report.write_summary(
        "throughput",
        stamp,
        seconds,
        settings,
        results.rows,
        results.details,
        results.errors,
        passed=passed,
    )


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    with bench_run("jobferry-bench-", settings.keep) as run:
        log(
            f"jobferry throughput benchmark: {CPUS} CPUs, {sys.executable}, data in {run.workdir}"
            + (" (quick)" if settings.quick else "")
        )
        bench = Bench(settings, run.workdir, run.stamp)
        interrupted = report.run_loop(bench.run(), bench.results.errors)
    report.print_summary(
        f"Summary ({CPUS} CPUs, {run.seconds:.0f}s run{', quick' if settings.quick else ''}):",
        summary_table(bench.results.rows),
        [],
        bench.results.errors,
        write_json(bench, settings, run.stamp, run.seconds),
    )
    if interrupted:
        return 130
    failed = bench.results.errors or any(row.passed is False for row in bench.results.rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
