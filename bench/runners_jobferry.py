"""The jobferry side of ``runners.py``: one daemon with the local, Docker and Slurm runners.

Its configuration (``daemon_config``: a destination per runner, the node name
unique to the run), and its measurements per runner: sequential jobs for the
submit->running latency (the job records its own start in ``started.txt``,
its work directory on the daemon's side; a breakdown from the store), and N
jobs over 8 connections for the throughput, waited for as in ``throughput.py``.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from bench.common.clients import (
    HttpConn,
    job_status,
    store_times,
    submit,
    submit_many,
    wait_all,
)
from bench.common.daemons import Daemon
from bench.common.report import CPUS, BenchError, log
from bench.common.stats import Deadline, summary_ms
from bench.runners_refs import IMAGE, JOB_LIMIT_S, JOB_MEMORY_MB, PARTITION, read_started

#: Long-poll of the job status (below the client connection's 30 s timeout).
LONG_POLL_S = 20.0


class Conn(HttpConn):
    """A keep-alive connection that survives the daemon's idle timeout (300 s).

    Slurm's throughput test leaves some connections idle for minutes; the server
    then closes them, and the next request on one would fail. A GET that fails
    because the connection was closed is sent again once on a new connection (a
    POST is not: it may have been processed).
    """

    async def request(
        self, method: str, path: str, body: bytes = b"", content_type: str | None = None
    ) -> tuple[int, bytes]:
        reused = self._writer is not None
        try:
            return await super().request(method, path, body, content_type)
        except (ConnectionError, asyncio.IncompleteReadError):
            if not reused or method != "GET":
                raise
            return await super().request(method, path, body, content_type)


def connect(daemon: Daemon) -> Conn:
    return Conn(daemon.host, daemon.port, {"Authorization": f"Bearer {daemon.key}"})


def daemon_config(runners: Sequence[str], node: str, slurm_poll_s: float) -> dict[str, Any]:
    destinations: dict[str, Any] = {"local": {"runner": "local"}}
    config: dict[str, Any] = {
        "logging": {"level": "WARNING"},
        "node": {"name": node, "cores": CPUS},
        "runners": {"local": {"slots": CPUS}},
        "destinations": destinations,
        "routing": {"default": "local"},
    }
    if "docker" in runners:
        config["runners"]["docker"] = {"enabled": True, "slots": CPUS}
        destinations["docker"] = {"runner": "docker", "image": IMAGE, "memory_mb": JOB_MEMORY_MB}
    if "slurm" in runners:
        # slots: the default (1000) -- the cluster limits itself.
        config["runners"]["slurm"] = {"enabled": True, "poll_interval_s": slurm_poll_s}
        destinations["slurm"] = {
            "runner": "slurm",
            "partition": PARTITION,
            "memory_mb": JOB_MEMORY_MB,
        }
    return config


def job_workdir(daemon: Daemon, job_id: str) -> Path:
    return daemon.data_dir.resolve() / "jobs" / job_id[:2] / job_id / "work"


def submit_body(destination: str) -> bytes:
    """The submission of a job of ``started.py`` to *destination*."""
    return urlencode({"job_name": "bench", "command": "", "destination": destination}).encode()


class JobferrySide:
    """Latency and throughput of each runner through the daemon."""

    def __init__(
        self, daemon: Daemon, slug: str, *, jobs: int, latency_jobs: int, deadline: Deadline
    ) -> None:
        self.daemon = daemon
        self.slug = slug
        self.jobs = jobs
        self.latency_jobs = latency_jobs
        self.deadline = deadline

    async def latency(self, runner: str) -> dict[str, Any]:
        daemon = self.daemon
        assert daemon is not None
        conn = connect(daemon)
        latencies: list[float] = []
        completes: list[float] = []
        marks: list[tuple[str, float]] = []
        failed = 0
        try:
            for _ in range(self.latency_jobs):
                self.deadline.check(f"the {runner} latency test")
                wall0 = time.time()
                job_id = await submit(conn, self.slug, submit_body(runner))
                limit = time.monotonic() + min(JOB_LIMIT_S[runner], self.deadline.remaining())
                while True:
                    complete, status = await job_status(conn, job_id, LONG_POLL_S)
                    if complete:
                        break
                    if time.monotonic() > limit:
                        raise BenchError(f"{runner} job {job_id} not complete in time")
                completes.append(time.time() - wall0)
                started = read_started(job_workdir(daemon, job_id))
                if status != "completed" or started is None:
                    failed += 1
                    log(f"{runner} job {job_id} ended {status}; start time {started}")
                    continue
                latencies.append(started - wall0)
                marks.append((job_id, wall0))
        finally:
            conn.close()
        if not latencies:
            raise BenchError(f"no {runner} job recorded its start")
        return {
            "jobs": self.latency_jobs,
            "failed": failed,
            "latency": summary_ms(latencies),
            "until_complete": summary_ms(completes),
            "breakdown_median_ms": self.breakdown(daemon, marks),
            "latencies_ms": [round(1000 * x, 2) for x in latencies],
        }

    @staticmethod
    def breakdown(daemon: Daemon, marks: Sequence[tuple[str, float]]) -> dict[str, float]:
        """Medians from the store: submit->row, row->claimed (started_at), claimed->command."""
        stored = store_times(daemon.data_dir, [m[0] for m in marks])
        steps: dict[str, list[float]] = {
            "submit->row committed": [],
            "row->claimed": [],
            "claimed->command running": [],
        }
        for job_id, wall0 in marks:
            t = stored.get(job_id)
            started = read_started(job_workdir(daemon, job_id))
            if not t or t["created"] is None or t["started"] is None or started is None:
                continue
            steps["submit->row committed"].append(t["created"] - wall0)
            steps["row->claimed"].append(t["started"] - t["created"])
            steps["claimed->command running"].append(started - t["started"])
        return {k: 1000 * statistics.median(v) for k, v in steps.items() if v}

    async def throughput(self, runner: str) -> dict[str, Any]:
        daemon = self.daemon
        assert daemon is not None
        n = self.jobs
        conns = [connect(daemon) for _ in range(8)]
        try:
            t0 = time.perf_counter()
            ids = await self.deadline.bounded(
                submit_many(conns, self.slug, n, submit_body(runner)), f"submitting {runner} jobs"
            )
            submitted = time.perf_counter() - t0
            done = await wait_all(conns[:4], ids, self.deadline, window=4 * CPUS)
        finally:
            for conn in conns:
                conn.close()
        seconds = done.t_end - t0
        missing = sum(1 for j in ids if read_started(job_workdir(daemon, j)) is None)
        return {
            "jobs": n,
            "seconds": seconds,
            "submitted_s": submitted,
            "jobs_per_s": n / seconds,
            "failed": max(done.failed, missing),
            "late_jobs": done.late,
            "status_requests": done.status_requests,
        }
