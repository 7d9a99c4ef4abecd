"""One source tree's daemon in ``per_job.py``: CPU per job, status polls, idle, latency, profile.

A ``TreeDaemon`` is a ``jobferry serve`` (2 local slots, default configuration
otherwise) running one checkout's code. Every figure is the daemon process's
own CPU (psutil, user+sys; its children, the jobs, are not counted) over a
measured stretch of work, divided by the work done:

* ``run_jobs``: N trivial jobs submitted over 16 connections, then waited for
  with the status long-poll (``?wait=``) on the last jobs only (sparse
  polling: jobs are claimed oldest first). Daemon CPU per job and jobs/s (first
  submit to the last job seen complete); every job is then checked once (not
  counted) so that a failure is not missed.
* ``poll_cost``: daemon CPU per ``GET .../status/`` of a finished job (the
  threads' scheduler time, ns resolution).
* ``idle_cpu``: daemon CPU per second with no work at all.
* ``latency``: sequential jobs, submit then long-poll until complete.
* ``profiled_run``: ``run_jobs`` under py-spy (see ``per_job_phases``); its
  figures are not the run's CPU figures (the sampler shares the two cores).
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench.common.clients import HttpConn, job_status, run_pool, submit, submit_many
from bench.common.daemons import JOB_SCRIPTS, Daemon, daemon_env
from bench.common.report import BenchError, log
from bench.common.stats import Deadline, LoadMeter, own_cpu_s, percentile
from bench.per_job_phases import Breakdown, Sampler, attribute

#: The trivial job: argparse, no arguments, exits.
NOOP = JOB_SCRIPTS / "noop.py"
#: Client connections for submissions and status polls.
CONNECTIONS = 16
#: The long-poll's wait (s) in the status route: under the client's 30 s timeout.
LONG_POLL_S = 20.0


@dataclass
class Profile:
    """A profiled run: its phase breakdowns and how its daemon CPU per job splits."""

    threads: Breakdown  # every thread's samples, idle ones dropped
    gil: Breakdown  # the GIL holder's samples
    cpu_ms_per_job: float
    user_ms_per_job: float
    system_ms_per_job: float
    loop_thread_ms_per_job: float
    other_threads_ms_per_job: float


@dataclass
class Tree:
    """A checkout of jobferry measured in this run ("current" is this one)."""

    label: str
    path: Path


class TreeDaemon:
    """The daemon of one tree, started once for the run; its noop script registered."""

    def __init__(self, tree: Tree, workdir: Path, slots: int, noop: Path) -> None:
        self.tree = tree
        config = {"runners": {"local": {"slots": slots}}}
        self.daemon = Daemon(f"daemon-{tree.label}", workdir, config, tree=tree.path)
        self.noop = noop
        self.slug = ""
        self.slots = slots
        self.last_job = ""

    async def start(self, deadline: Deadline) -> None:
        await asyncio.to_thread(check_imports_from, self.tree.path)
        await self.daemon.start_async(min(60.0, deadline.remaining()))
        self.slug = await asyncio.to_thread(self.daemon.register, self.noop)
        where = f"{self.daemon.url} ({self.tree.path})"
        log(f"{self.tree.label}: daemon pid {self.daemon.pid} at {where}")

    def cpu_s(self) -> float:
        return self.daemon.cpu()[0]

    def host_cpu_s(self, jobs: bool = False) -> float:
        """CPU seconds of the daemon's job hosts (``runners/jobhost.py``: they start and
        record its local jobs, the work a shell wrapper per job did before; none in a
        tree without them); with *jobs*, also of the jobs they reaped."""
        total = 0.0
        try:
            children = psutil.Process(self.daemon.pid).children()
        except psutil.Error:
            return 0.0
        for child in children:
            try:
                if any(arg.endswith("jobhost.py") for arg in child.cmdline()):
                    times = child.cpu_times()
                    total += times.user + times.system
                    if jobs:
                        total += times.children_user + times.children_system
            except psutil.Error:
                pass
        return total

    def conns(self, count: int) -> list[HttpConn]:
        return [self.daemon.conn() for _ in range(count)]

    async def wait_done(self, conn: HttpConn, job_id: str, deadline: Deadline) -> str:
        """Long-poll *job_id* until it is complete; its status."""
        while True:
            deadline.check(f"waiting for job {job_id}")
            complete, status = await job_status(conn, job_id, LONG_POLL_S)
            if complete:
                return status

    async def run_jobs(
        self, n: int, deadline: Deadline, measured: Callable[[], Awaitable[None]] | None = None
    ) -> dict[str, Any]:
        """N jobs over 16 connections, sparse long-polling; CPU per job and jobs/s.

        *measured* is awaited at the end of the measured stretch, before every job is
        checked once (the profiler stops there)."""
        conns = self.conns(CONNECTIONS)
        try:
            # Ours: this process, the daemon, its job host and its reaped children (jobs).
            meter = LoadMeter(lambda: own_cpu_s() + sum(self.daemon.cpu()) + self.host_cpu_s(True))
            cpu0, host0 = self.cpu_s(), self.host_cpu_s()
            t0 = time.perf_counter()
            ids = await deadline.bounded(submit_many(conns, self.slug, n), "submitting")
            submitted_s = time.perf_counter() - t0
            # Oldest first: once the last job and those that may run beside it are
            # complete, all are (checked below).
            tail = ids[-(4 * self.slots) :]
            statuses = await asyncio.gather(
                *(
                    self.wait_done(conn, job, deadline)
                    for conn, job in zip(conns, tail, strict=False)
                )
            )
            seconds = time.perf_counter() - t0
            cpu = self.cpu_s() - cpu0
            host = self.host_cpu_s() - host0  # a host started meanwhile: its start too
            load = meter.stop()
            if measured is not None:
                await measured()
            failed = sum(s != "completed" for s in statuses)
            rest = [j for j in ids if j not in set(tail)]

            async def check(conn: HttpConn, index: int) -> str:
                return await self.wait_done(conn, rest[index], deadline)

            failed += sum(s != "completed" for s in await run_pool(conns, len(rest), check))
        finally:
            for conn in conns:
                conn.close()
        self.last_job = ids[-1]
        return {
            "jobs": n,
            "seconds": seconds,
            "submitted_s": submitted_s,
            "jobs_per_s": n / seconds,
            "cpu_ms_per_job": 1000 * cpu / n,
            "host_cpu_ms_per_job": 1000 * host / n,
            "failed": failed,
            **load,
        }

    async def poll_cost(self, n: int, deadline: Deadline) -> dict[str, Any]:
        """Daemon CPU per status poll of a finished job (16 connections)."""
        if not self.last_job:
            await self.run_jobs(4 * self.slots, deadline)  # a finished job to poll
        conns = self.conns(CONNECTIONS)

        async def poll(conn: HttpConn, _index: int) -> bool:
            complete, _ = await job_status(conn, self.last_job)
            return complete

        try:
            await run_pool(conns, 2 * CONNECTIONS, poll)  # connections open, warm
            meter = LoadMeter(lambda: own_cpu_s() + self.cpu_s())
            cpu0 = thread_cpu_s(self.daemon.pid)  # ns resolution: psutil's ticks are 10 ms
            t0 = time.perf_counter()
            answers = await deadline.bounded(run_pool(conns, n, poll), "status polls")
            seconds = time.perf_counter() - t0
            cpu = thread_cpu_s(self.daemon.pid) - cpu0
        finally:
            for conn in conns:
                conn.close()
        if not all(answers):
            raise BenchError("a finished job's status said it was not complete")
        return {
            "polls": n,
            "polls_per_s": n / seconds,
            "cpu_ms_per_poll": 1000 * cpu / n,
            **meter.stop(),
        }

    async def idle_cpu(self, seconds: float) -> dict[str, Any]:
        """Daemon CPU per second while nothing is asked of it (scheduler ns, not ticks)."""
        await asyncio.sleep(1.0)  # let the last requests' after-work end
        cpu0, t0 = thread_cpu_s(self.daemon.pid), time.perf_counter()
        await asyncio.sleep(seconds)
        elapsed = time.perf_counter() - t0
        cpu = thread_cpu_s(self.daemon.pid) - cpu0
        return {"seconds": elapsed, "cpu_ms_per_s": 1000 * cpu / elapsed}

    async def latency(self, n: int, deadline: Deadline) -> list[float]:
        """Submit → seen complete (long-poll) of *n* sequential jobs, seconds."""
        conn = self.daemon.conn()
        times: list[float] = []
        try:
            for _ in range(n):
                t0 = time.perf_counter()
                job_id = await submit(conn, self.slug)
                status = await self.wait_done(conn, job_id, deadline)
                times.append(time.perf_counter() - t0)
                if status != "completed":
                    raise BenchError(f"latency job {job_id} ended {status}")
        finally:
            conn.close()
        return times

    async def profiled_run(self, n: int, out: Path, deadline: Deadline) -> Profile:
        """``run_jobs`` under two py-spy samplers at once: every thread (idle samples
        dropped by ``attribute``) and the GIL holder only; the daemon's CPU per job, split
        into user and system time, and into the event loop's thread and the others."""
        gil_out = out.with_name(out.stem + "-gil.raw")
        samplers = [
            await asyncio.to_thread(Sampler, self.daemon.pid, out),
            await asyncio.to_thread(Sampler, self.daemon.pid, gil_out, gil=True),
        ]
        proc = psutil.Process(self.daemon.pid)
        marks: list[tuple[Any, dict[int, float]]] = []

        async def stop() -> None:
            if len(marks) < 2:
                marks.append((proc.cpu_times(), threads_cpu_s(self.daemon.pid)))
            for sampler in samplers:
                await asyncio.to_thread(sampler.stop)

        try:
            await asyncio.sleep(1.0)  # py-spy attached
            marks.append((proc.cpu_times(), threads_cpu_s(self.daemon.pid)))
            info = await self.run_jobs(n, deadline, stop)
        finally:
            await stop()
        if info["failed"]:
            raise BenchError(f"{info['failed']} profiled jobs did not succeed")
        (t0, th0), (t1, th1) = marks[0], marks[1]
        loop = th1.get(self.daemon.pid, 0.0) - th0.get(self.daemon.pid, 0.0)
        threads = sum(th1.values()) - sum(th0.values())
        return Profile(
            threads=await asyncio.to_thread(attribute, out, self.tree.path),
            gil=await asyncio.to_thread(attribute, gil_out, self.tree.path),
            cpu_ms_per_job=float(info["cpu_ms_per_job"]),
            user_ms_per_job=1000 * (t1.user - t0.user) / n,
            system_ms_per_job=1000 * (t1.system - t0.system) / n,
            loop_thread_ms_per_job=1000 * loop / n,
            other_threads_ms_per_job=1000 * (threads - loop) / n,
        )

    def stop(self) -> None:
        self.daemon.stop()


def check_imports_from(tree: Path) -> None:
    """The daemon's interpreter, with the daemon's environment, imports *tree*'s jobferry
    (an editable install of another checkout must not win over ``PYTHONPATH``)."""
    probe = [sys.executable, "-c", "import jobferry; print(jobferry.__file__)"]
    out = subprocess.run(
        probe, capture_output=True, text=True, timeout=60, env=daemon_env(tree), cwd=tree
    )
    found = Path(out.stdout.strip()).resolve()
    if out.returncode != 0 or not found.is_relative_to(tree.resolve()):
        raise BenchError(f"a daemon for {tree} would import {found or out.stderr.strip()}")


def threads_cpu_s(pid: int) -> dict[int, float]:
    """On-CPU seconds of each live thread of *pid* (schedstat: nanoseconds' resolution)."""
    out: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            out[int(task.name)] = int((task / "schedstat").read_text().split()[0]) / 1e9
    return out


def thread_cpu_s(pid: int) -> float:
    """On-CPU seconds of *pid*'s live threads, in nanoseconds' resolution (schedstat).

    psutil's user+sys come in clock ticks (10 ms): too coarse for an idle process."""
    return sum(threads_cpu_s(pid).values())


def median_ms(values_s: list[float]) -> float:
    return 1000 * statistics.median(values_s)


def p99_ms(values_s: list[float]) -> float:
    return 1000 * percentile(values_s, 99)
