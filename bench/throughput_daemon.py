"""The daemon's own figures in ``throughput.py``: throughput, latency and memory.

One daemon (default configuration, ``runners.local.slots`` = CPUs) runs them
in turn: N noop jobs over 16 connections (throughput), sequential jobs
(latency, with a breakdown from the store's timestamps), the bare references
again while it is idle, then batches of jobs until ``--rss-jobs`` have
completed (RSS after each batch). Throughput and latency rows compare with the
mean of the bare references measured before and after (``References.bare``).
"""

from __future__ import annotations

import asyncio
import signal
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from bench.common.clients import job_status, store_times, submit, submit_many, wait_all
from bench.common.daemons import Daemon
from bench.common.report import CPUS, MB, BenchError, log
from bench.common.stats import LoadMeter, children_cpu_s, own_cpu_s, percentile
from bench.throughput_harness import (
    NOOP,
    TARGET_LATENCY_OVERHEAD_MS,
    TARGET_RSS_MB,
    TARGET_THROUGHPUT_RATIO,
    Row,
)
from bench.throughput_refs import References

#: Jobs submitted per batch in the memory test (RSS is sampled after each).
RSS_BATCH = 1000


class DaemonFigures(References):
    """Throughput, latency and memory of one daemon, against the bare references."""

    # 1, 2, 4: one normal daemon

    async def daemon_figures(self) -> None:
        daemon = Daemon("daemon", self.workdir, profile_path=self.profile_path("daemon"))
        try:
            await daemon.start_async(min(60.0, self.deadline.remaining()))
            slug = await asyncio.to_thread(daemon.register, NOOP)
            await asyncio.sleep(1.0)  # let start-up settle before sampling memory
            self.rss_idle = daemon.rss_bytes()
            log(f"daemon pid {daemon.pid} at {daemon.url}; idle RSS {self.rss_idle / MB:.1f} MB")
            self.completed = 0
            await self.throughput(daemon, slug)
            await self.latency(daemon, slug)
            completed = self.completed
            log("bare references again (the daemon is idle)")
            try:
                await self.bare_run("after")
            finally:
                self.speed_rows()
            await self.memory(daemon, slug, completed)
        finally:
            code = daemon.stop(signal.SIGINT if daemon.profile_path else signal.SIGTERM)
            if code not in (0, None):
                log(f"daemon exited with {code}: {daemon.log_tail()}")
            self.report_profile(daemon.profile_path)

    def daemon_meter(self, daemon: Daemon) -> LoadMeter:
        return LoadMeter(lambda: own_cpu_s() + children_cpu_s() + sum(daemon.cpu()))

    async def measured(self, name: str, once: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        """``best_of`` *once*, kept in the details as *name*; failed jobs are errors."""
        info = await self.best_of(name, once)
        self.results.details[name] = info
        if info["failed_jobs"]:
            self.results.errors.append(f"{name}: {info['failed_jobs']} jobs did not succeed")

    async def throughput(self, daemon: Daemon, slug: str) -> None:
        await self.measured("throughput", lambda: self.throughput_once(daemon, slug))

    async def throughput_once(self, daemon: Daemon, slug: str) -> dict[str, Any]:
        n = self.s.jobs
        conns = [daemon.conn() for _ in range(self.s.accept_concurrency)]
        peak = [daemon.rss_bytes()]

        def sample() -> None:
            peak[0] = max(peak[0], daemon.rss_bytes())

        try:
            meter = self.daemon_meter(daemon)
            cpu0, kids0 = daemon.cpu()
            client0 = own_cpu_s()
            wall0 = time.time()
            t0 = time.perf_counter()
            ids = await self.deadline.bounded(submit_many(conns, slug, n), "submitting")
            t_submitted = time.perf_counter() - t0
            done = await wait_all(
                conns[:4], ids, self.deadline, window=4 * self.s.concurrency, on_round=sample
            )
            seconds = done.t_end - t0
            cpu1, kids1 = daemon.cpu()
            load = meter.stop()
            client_cpu = own_cpu_s() - client0
            self.completed += n
        finally:
            for conn in conns:
                conn.close()
        rate = n / seconds
        finished = [
            t["finished"] for t in store_times(daemon.data_dir, ids).values() if t["finished"]
        ]
        db_span = max(finished) - wall0 if finished else None
        info = {
            "jobs": n,
            "submit_connections": len(conns),
            "slots": self.s.concurrency,
            "all_submitted_s": t_submitted,
            "all_complete_s": seconds,
            "jobs_per_s": rate,
            "last_finished_at_per_store_s": db_span,
            "failed_jobs": done.failed,
            "status_requests": done.status_requests,
            "late_jobs": done.late,
            "daemon_cpu_per_job_ms": 1000 * (cpu1 - cpu0) / n,
            "job_processes_cpu_per_job_ms": 1000 * (kids1 - kids0) / n,
            "client_cpu_s": client_cpu,
            "daemon_peak_rss_mb": peak[0] / MB,
            **load,
        }
        log(
            f"{n} jobs: all accepted after {t_submitted:.2f}s, all complete after {seconds:.2f}s"
            f" = {rate:.1f} jobs/s; daemon CPU {info['daemon_cpu_per_job_ms']:.1f} ms/job,"
            f" job processes {info['job_processes_cpu_per_job_ms']:.1f} ms/job, machine busy"
            f" {load['busy_cores']:.2f}/{CPUS} cores (other work {load['other_cores']:.2f}),"
            f" client CPU {client_cpu:.2f}s"
        )
        if db_span is not None:
            log(f"cross-check: the store's last finished_at is {db_span:.2f}s after 1st submit")
        return info

    async def latency(self, daemon: Daemon, slug: str) -> None:
        await self.measured("latency", lambda: self.latency_once(daemon, slug))

    async def latency_once(self, daemon: Daemon, slug: str) -> dict[str, Any]:
        n = self.s.latency_jobs
        conn = daemon.conn()
        times: list[float] = []
        submit_times: list[float] = []
        marks: list[tuple[str, float, float]] = []  # (job id, wall start, wall end)
        polls = 0
        failed = 0
        cpu0, _ = daemon.cpu()
        meter = self.daemon_meter(daemon)
        try:
            for _ in range(n):
                self.deadline.check("the latency test")
                wall0 = time.time()
                t0 = time.perf_counter()
                job_id = await submit(conn, slug)
                submit_times.append(time.perf_counter() - t0)
                limit = time.perf_counter() + 60
                while True:
                    wait_s = 30.0 if self.s.latency_long_poll else 0.0
                    complete, status = await job_status(conn, job_id, wait_s)
                    polls += 1
                    if complete:
                        break
                    if time.perf_counter() > limit:
                        raise BenchError(f"job {job_id} took over 60s")
                    await asyncio.sleep(self.s.latency_poll_s)
                times.append(time.perf_counter() - t0)
                marks.append((job_id, wall0, wall0 + times[-1]))
                failed += status != "completed"
        finally:
            conn.close()
        load = meter.stop()
        self.completed += len(times)
        median_ms = 1000 * statistics.median(times)
        p99_ms = 1000 * percentile(times, 99)
        info: dict[str, Any] = {
            "jobs": n,
            "median_ms": median_ms,
            "p99_ms": p99_ms,
            "min_ms": 1000 * min(times),
            "submit_median_ms": 1000 * statistics.median(submit_times),
            "submit_p99_ms": 1000 * percentile(submit_times, 99),
            "status_polls_per_job": polls / n,
            "daemon_cpu_per_job_ms": 1000 * (daemon.cpu()[0] - cpu0) / n,
            "failed_jobs": failed,
            **load,
        }
        info["breakdown_median_ms"] = breakdown = self.latency_breakdown(daemon, marks)
        if breakdown:
            log(
                "latency breakdown (medians, from the store): "
                + ", ".join(f"{k} {v:.1f} ms" for k, v in breakdown.items())
            )
        log(
            f"latency over {n} jobs: median {median_ms:.1f} ms, p99 {p99_ms:.1f} ms "
            f"(submit answered in {info['submit_median_ms']:.1f} ms median; "
            f"{info['status_polls_per_job']:.1f} polls and "
            f"{info['daemon_cpu_per_job_ms']:.1f} ms of daemon CPU per job; other work "
            f"{load['other_cores']:.2f} cores)"
        )
        return info

    def speed_rows(self) -> None:
        """Summary rows of throughput and latency, against the mean bare references."""
        tp = self.results.details.get("throughput")
        if tp is not None:
            bare_rate = self.bare("jobs_per_s")
            rate = float(tp["jobs_per_s"])
            ratio = rate / bare_rate if bare_rate else None
            self.row(
                Row(
                    f"throughput, {tp['jobs']} noop jobs (slots={tp['slots']})",
                    rate,
                    "jobs/s",
                    bare_rate,
                    "bare spawn",
                    ratio,
                    f"ratio >= {TARGET_THROUGHPUT_RATIO:.2f}",
                    None
                    if ratio is None
                    else ratio >= TARGET_THROUGHPUT_RATIO and not tp["failed_jobs"],
                    max(tp["other_cores"], self.bare_other("concurrent_other_cores") or 0.0),
                )
            )
        lat = self.results.details.get("latency")
        if lat is not None:
            median_ms, p99_ms = float(lat["median_ms"]), float(lat["p99_ms"])
            bare_median = self.bare("sequential_median_ms")
            bare_p99 = self.bare("sequential_p99_ms")
            other = max(lat["other_cores"], self.bare_other("sequential_other_cores") or 0.0)
            self.row(
                Row(
                    "submit->complete latency, median",
                    median_ms,
                    "ms",
                    bare_median,
                    "bare spawn",
                    None if not bare_median else median_ms / bare_median,
                    f"<= bare + {TARGET_LATENCY_OVERHEAD_MS:.0f} ms",
                    None
                    if bare_median is None
                    else median_ms <= bare_median + TARGET_LATENCY_OVERHEAD_MS
                    and not lat["failed_jobs"],
                    other,
                )
            )
            reaped = lat.get("breakdown_median_ms", {}).get("submit->reaped (daemon side)")
            if reaped is not None:
                self.row(
                    Row(
                        "submit->reaped (store), median",
                        float(reaped),
                        "ms",
                        bare_median,
                        "bare spawn",
                        None if not bare_median else float(reaped) / bare_median,
                        other_load=other,
                    )
                )
            self.row(
                Row(
                    "submit->complete latency, p99",
                    p99_ms,
                    "ms",
                    bare_p99,
                    "bare spawn",
                    None if not bare_p99 else p99_ms / bare_p99,
                    other_load=other,
                )
            )

    @staticmethod
    def latency_breakdown(
        daemon: Daemon, marks: Sequence[tuple[str, float, float]]
    ) -> dict[str, float]:
        """Median of each step of a job's life, from the store's timestamps (ms)."""
        stored = store_times(daemon.data_dir, [m[0] for m in marks])
        steps: dict[str, list[float]] = {
            "submit->row committed": [],
            "row->claimed": [],
            "claimed->spawned": [],
            "spawned->reaped (wrapper+job)": [],
            "reaped->seen complete": [],
            "submit->reaped (daemon side)": [],
        }
        for job_id, start, end in marks:
            t = stored.get(job_id)
            if not t or None in (t["created"], t["started"], t["finished"], t["wall_s"]):
                continue
            created, started, finished, wall_s = (
                float(t["created"] or 0),
                float(t["started"] or 0),
                float(t["finished"] or 0),
                float(t["wall_s"] or 0),
            )
            spawned = finished - wall_s
            steps["submit->row committed"].append(created - start)
            steps["row->claimed"].append(started - created)
            steps["claimed->spawned"].append(spawned - started)
            steps["spawned->reaped (wrapper+job)"].append(wall_s)
            steps["reaped->seen complete"].append(end - finished)
            steps["submit->reaped (daemon side)"].append(finished - start)
        return {k: 1000 * statistics.median(v) for k, v in steps.items() if v}

    async def memory(self, daemon: Daemon, slug: str, completed: int) -> None:
        target_jobs = self.s.rss_jobs
        checkpoints = [{"completed_jobs": completed, "rss_mb": daemon.rss_bytes() / MB}]
        conns = [daemon.conn() for _ in range(8)]
        failed = 0
        peak = daemon.rss_bytes()
        try:
            while completed < target_jobs:
                batch = min(RSS_BATCH, target_jobs - completed)
                ids = await self.deadline.bounded(submit_many(conns, slug, batch), "submitting")
                done = await wait_all(conns[:4], ids, self.deadline, window=4 * self.s.concurrency)
                completed += batch
                failed += done.failed
                rss = daemon.rss_bytes()
                peak = max(peak, rss)
                checkpoints.append({"completed_jobs": completed, "rss_mb": rss / MB})
                log(f"{completed} jobs completed: daemon RSS {rss / MB:.1f} MB")
        finally:
            for conn in conns:
                conn.close()
        rss_after = daemon.rss_bytes()
        self.results.details["memory"] = {
            "idle_rss_mb": self.rss_idle / MB,
            "rss_after_mb": rss_after / MB,
            "peak_rss_sampled_mb": max(peak, rss_after) / MB,
            "completed_jobs": completed,
            "failed_jobs": failed,
            "checkpoints": checkpoints,
        }
        if failed:
            self.results.errors.append(f"memory: {failed} jobs did not succeed")
        hello_rss = await self.hello_rss()
        self.row(
            Row(
                "daemon RSS, idle (registered script)",
                self.rss_idle / MB,
                "MB",
                hello_rss,
                "hello-world",
                None if not hello_rss else self.rss_idle / MB / hello_rss,
                f"<= {TARGET_RSS_MB:.0f} MB",
                self.rss_idle / MB <= TARGET_RSS_MB,
            )
        )
        self.row(
            Row(
                f"daemon RSS, after {completed} jobs",
                rss_after / MB,
                "MB",
                self.rss_idle / MB,
                "idle",
                rss_after / self.rss_idle,
                f"<= {TARGET_RSS_MB:.0f} MB",
                rss_after / MB <= TARGET_RSS_MB and not failed,
            )
        )
