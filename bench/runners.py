#!/usr/bin/env python
"""Per-runner latency and throughput of a real ``jobferry serve``: local, Docker, Slurm.

For each runner, in one run against one daemon: the submit->running latency
(median, p99; the job writes its own start time, ``bench/started.py``) and the
end-to-end throughput of N trivial jobs, each next to the bare cost of the same
command on the same machine in the same run (a direct spawn, ``docker run``,
``sbatch --wrap``). See bench/README.md.

Usage::

    .venv/bin/python bench/runners.py [--runners local,docker,slurm] [--jobs 200]
        [--latency-jobs 30] [--quick] [--time-limit S] [--keep]

The bare references live in ``runners_refs``; the daemon, HTTP client and
helpers are ``bench/common``'s. Every wait is bounded; the daemon and every
process started here are stopped by pid at the end, and the containers and
Slurm jobs this run created are removed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: bench/ is sys.path[0], the repository root is not
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import report
from bench.common.daemons import Daemon, Managed, bench_run
from bench.common.report import CPUS, BenchError, fmt, log, table
from bench.common.stats import Deadline, machine_busy
from bench.runners_jobferry import JobferrySide, daemon_config
from bench.runners_refs import (
    JOB_SCRIPT,
    BareRefs,
    Children,
    cleanup_services,
    run_sync,
    service_problem,
)

RUNNERS = ("local", "docker", "slurm")
#: Busy cores (while this benchmark is idle) above which other work is warned about.
IDLE_CORES = 0.2


# --- settings and results -------------------------------------------------------------------------


@dataclass
class Settings:
    runners: list[str]
    jobs: int
    latency_jobs: int
    time_limit_s: float
    slurm_poll_s: float
    keep: bool
    quick: bool


@dataclass
class Row:
    runner: str
    figure: str
    unit: str
    jobferry: float | None
    bare: float | None
    bare_label: str
    ratio: float | None = None
    delta: float | None = None  # jobferry - bare (latency overhead)
    busy_cores: float | None = None  # whole machine while measured (max of both)
    background_cores: float | None = None  # other work, measured just before the runner


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def summary_table(rows: Sequence[Row]) -> str:
    header = ("runner", "figure", "jobferry", "bare", "ratio", "jobferry-bare", "other work")
    lines = [
        (
            r.runner,
            r.figure,
            fmt(r.jobferry, r.unit),
            f"{fmt(r.bare, r.unit)} ({r.bare_label})" if r.bare is not None else "n/a",
            "-" if r.ratio is None else f"{r.ratio:.2f}",
            "-" if r.delta is None else fmt(r.delta, r.unit),
            "-" if r.background_cores is None else f"{r.background_cores:.2f} cores",
        )
        for r in rows
    ]
    return table(header, lines)


# --- the benchmark --------------------------------------------------------------------------------


class Bench:
    def __init__(self, settings: Settings, workdir: Path, stamp: str) -> None:
        self.s = settings
        self.workdir = workdir
        self.stamp = stamp
        self.tag = f"jobferry-bench-{stamp}-{os.getpid()}"  # names our containers and Slurm jobs
        self.node = self.tag  # the daemon's node name: labels its containers and Slurm jobs
        self.deadline = Deadline(settings.time_limit_s)
        self.results = Results()
        self.python = sys.executable  # the daemon's interpreter, so its local jobs' too
        self.refs = BareRefs(
            jobs=settings.jobs,
            latency_jobs=settings.latency_jobs,
            slurm_poll_s=settings.slurm_poll_s,
            deadline=self.deadline,
            tag=self.tag,
            ref_dir=workdir / "refs",
            python=self.python,
        )
        self.jobferry: JobferrySide | None = None
        self.runnable: list[str] = []

    async def run(self) -> None:
        for runner in self.s.runners:
            problem = service_problem(runner)
            if problem:
                log(f"SKIP {runner}: {problem}")
                self.results.skipped[runner] = problem
            else:
                self.runnable.append(runner)
        if not self.runnable:
            raise BenchError("no runner to measure")
        config = daemon_config(self.runnable, self.node, self.s.slurm_poll_s)
        self.results.details["daemon_config"] = config
        daemon = Daemon("daemon", self.workdir, config)
        await daemon.start_async(min(60.0, self.deadline.remaining()))
        slug = await asyncio.to_thread(daemon.register, JOB_SCRIPT)
        log(f"daemon pid {daemon.pid} at {daemon.url}; script {slug}; node {self.node}")
        self.jobferry = JobferrySide(
            daemon,
            slug,
            jobs=self.s.jobs,
            latency_jobs=self.s.latency_jobs,
            deadline=self.deadline,
        )
        for runner in self.runnable:
            log(f"== {runner}")
            try:
                await report.guarded(runner, self.results.errors, self.runner_part(runner))
            finally:
                await asyncio.to_thread(
                    cleanup_services, [runner], self.runnable, self.tag, self.node
                )

    # -- one runner

    async def runner_part(self, runner: str) -> None:
        jobferry = self.jobferry
        assert jobferry is not None
        details: dict[str, Any] = self.results.details.setdefault(runner, {})
        details["before"] = before = await self.machine_state(runner)
        background = float(before["background_busy_cores"])
        bare_latency, bare_throughput = self.refs.fns(runner)

        log(f"{runner}: bare latency, {self.s.latency_jobs} sequential runs")
        details["bare_latency"] = b_lat = await self.metered(bare_latency)
        self.log_latency(f"{runner} bare", b_lat)
        log(f"{runner}: jobferry latency, {self.s.latency_jobs} sequential jobs")
        details["jobferry_latency"] = j_lat = await self.metered(lambda: jobferry.latency(runner))
        self.log_latency(f"{runner} jobferry", j_lat)
        if j_lat["breakdown_median_ms"]:
            log(
                f"{runner} jobferry breakdown (medians, store + the job's own start): "
                + ", ".join(f"{k} {v:.1f} ms" for k, v in j_lat["breakdown_median_ms"].items())
            )
        for key, label in (("median_ms", "median"), ("p99_ms", "p99")):
            self.results.rows.append(
                Row(
                    runner,
                    f"submit->running latency, {label}",
                    "ms",
                    j_lat["latency"][key],
                    b_lat["latency"][key],
                    b_lat["label"],
                    j_lat["latency"][key] / b_lat["latency"][key],
                    j_lat["latency"][key] - b_lat["latency"][key],
                    max(j_lat["busy_cores"], b_lat["busy_cores"]),
                    background,
                )
            )

        log(f"{runner}: jobferry throughput, {self.s.jobs} jobs")
        details["jobferry_throughput"] = j_tp = await self.metered(
            lambda: jobferry.throughput(runner)
        )
        log(
            f"{runner} jobferry: {j_tp['jobs']} jobs in {j_tp['seconds']:.2f}s ="
            f" {j_tp['jobs_per_s']:.2f} jobs/s (all accepted after {j_tp['submitted_s']:.2f}s;"
            f" machine busy {j_tp['busy_cores']:.2f} cores)"
        )
        log(f"{runner}: bare throughput, {self.s.jobs} runs")
        details["bare_throughput"] = b_tp = await self.metered(bare_throughput)
        log(
            f"{runner} bare ({b_tp['label']}): {b_tp['jobs']} runs in {b_tp['seconds']:.2f}s ="
            f" {b_tp['jobs_per_s']:.2f} runs/s (machine busy {b_tp['busy_cores']:.2f} cores)"
        )
        self.results.rows.append(
            Row(
                runner,
                f"throughput, {self.s.jobs} jobs",
                "jobs/s",
                j_tp["jobs_per_s"],
                b_tp["jobs_per_s"],
                b_tp["label"],
                j_tp["jobs_per_s"] / b_tp["jobs_per_s"],
                None,
                max(j_tp["busy_cores"], b_tp["busy_cores"]),
                background,
            )
        )
        for what, info in (("jobferry", j_lat), ("jobferry", j_tp), ("bare", b_lat)):
            if info.get("failed"):
                self.results.errors.append(f"{runner} {what}: {info['failed']} runs failed")
        if b_tp.get("failed"):
            self.results.errors.append(f"{runner} bare throughput: {b_tp['failed']} runs failed")

    async def metered(self, run: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        """Run a measurement and add the whole machine's busy cores meanwhile.

        Containers and Slurm jobs are not children of this process, so the
        machine's CPU use cannot be split into ours and other work's here: the
        figure is the whole machine's (our load included); compare it with the
        background load measured before each runner.
        """
        busy = machine_busy()
        info = await run()
        info["busy_cores"] = busy()
        return info

    async def machine_state(self, runner: str) -> dict[str, Any]:
        """Background load (1 s while this benchmark is idle) and the service's other work."""
        busy = machine_busy()
        await asyncio.sleep(1.0)
        state: dict[str, Any] = {
            "background_busy_cores": busy(),
            "loadavg": os.getloadavg(),
        }
        if runner == "docker":
            out = await asyncio.to_thread(run_sync, ["docker", "ps", "-q"])
            state["other_running_containers"] = len(out.stdout.split())
        if runner == "slurm":
            out = await asyncio.to_thread(run_sync, ["squeue", "-h", "-o", "%i %T"])
            state["other_slurm_jobs"] = len(out.stdout.splitlines())
        log(
            f"{runner}: before: {state['background_busy_cores']:.2f} cores busy with other work,"
            f" load average {state['loadavg'][0]:.2f}"
            + "".join(f", {k.replace('_', ' ')} {v}" for k, v in state.items() if k.startswith("o"))
        )
        if state["background_busy_cores"] > IDLE_CORES or any(
            v for k, v in state.items() if k.startswith("other")
        ):
            log(f"WARNING: other work on the machine while measuring {runner}")
        return state

    @staticmethod
    def log_latency(name: str, info: dict[str, Any]) -> None:
        lat = info["latency"]
        log(
            f"{name}: submit->running median {lat['median_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms"
            f" (min {lat['min_ms']:.1f}, max {lat['max_ms']:.1f}); until seen complete median"
            f" {info['until_complete']['median_ms']:.1f} ms"
        )


# --- main -----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--runners", default=",".join(RUNNERS), help="comma-separated (local,docker,slurm)"
    )
    parser.add_argument("--jobs", type=int, help="jobs in each throughput test (200; quick 40)")
    parser.add_argument(
        "--latency-jobs", type=int, help="sequential jobs in each latency test (30; quick 8)"
    )
    parser.add_argument("--time-limit", type=float, help="overall limit, s (2400; quick 600)")
    parser.add_argument(
        "--slurm-poll",
        type=float,
        default=0.5,
        help="the daemon's runners.slurm.poll_interval_s and the bare reference's squeue "
        "interval, s (0.5)",
    )
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    runners = [r.strip() for r in str(args.runners).split(",") if r.strip()]
    unknown = sorted(set(runners) - set(RUNNERS))
    if unknown or not runners:
        parser.error(f"--runners takes some of {','.join(RUNNERS)}")
    settings = Settings(
        runners=[r for r in RUNNERS if r in runners],
        jobs=int(args.jobs if args.jobs is not None else (40 if quick else 200)),
        latency_jobs=int(
            args.latency_jobs if args.latency_jobs is not None else (8 if quick else 30)
        ),
        time_limit_s=float(
            args.time_limit if args.time_limit is not None else (600 if quick else 2400)
        ),
        slurm_poll_s=max(0.2, float(args.slurm_poll)),
        keep=bool(args.keep),
        quick=quick,
    )
    if min(settings.jobs, settings.latency_jobs) < 2:
        parser.error("--jobs and --latency-jobs must be at least 2")
    return settings


def write_json(bench: Bench, settings: Settings, run_stamp: str, seconds: float) -> Path:
    results = bench.results
    return report.write_summary(
        "runners",
        run_stamp,
        seconds,
        settings,
        results.rows,
        results.details,
        results.errors,
        skipped=results.skipped,
    )


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    with bench_run("jobferry-bench-runners-", settings.keep) as run:
        run.workdir.chmod(0o755)  # containers run as nobody and mount directories below it
        log(
            f"jobferry per-runner benchmark: {CPUS} CPUs, runners {','.join(settings.runners)},"
            f" {settings.jobs} jobs, {settings.latency_jobs} latency jobs, data in"
            f" {run.workdir}, load average {os.getloadavg()[0]:.2f}"
        )
        bench = Bench(settings, run.workdir, run.stamp)
        try:
            interrupted = report.run_loop(bench.run(), bench.results.errors)
        finally:
            Children.kill_all()
            Managed.stop_all()
            cleanup_services(RUNNERS, bench.runnable, bench.tag, bench.node)
    report.print_summary(
        f"Summary ({CPUS} CPUs, {run.seconds:.0f}s run, {settings.jobs} jobs,"
        f" {settings.latency_jobs} latency jobs{', quick' if settings.quick else ''}):",
        summary_table(bench.results.rows),
        [f"SKIPPED {runner}: {why}" for runner, why in bench.results.skipped.items()],
        bench.results.errors,
        write_json(bench, settings, run.stamp, run.seconds),
    )
    if interrupted:
        return 130
    return 1 if bench.results.errors else 0


if __name__ == "__main__":
    sys.exit(main())
