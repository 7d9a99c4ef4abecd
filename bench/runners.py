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

Reuses the daemon, HTTP client and helpers of bench/throughput.py. Every wait
is bounded; the daemon and every process started here are stopped by pid at the
end, and the containers and Slurm jobs this run created are removed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psutil

if __package__:
    from bench import throughput as tp
else:  # run as a script: bench/ is sys.path[0]
    import throughput as tp

BENCH_DIR = Path(__file__).resolve().parent
JOB_SCRIPT = BENCH_DIR / "started.py"
STARTED_FILE = "started.txt"
CPUS = tp.CPUS
RUNNERS = ("local", "docker", "slurm")
IMAGE = "jobferry-test/python:1"
PARTITION = "debug"
#: Memory of a Docker or Slurm job (small, so Slurm runs jobs side by side).
JOB_MEMORY_MB = 32
#: The Docker runner's pids limit (the bare `docker run` gets the same).
DOCKER_PIDS_LIMIT = 4096
#: Longest wait for one job in the latency tests, per runner (s).
JOB_LIMIT_S = {"local": 60.0, "docker": 120.0, "slurm": 300.0}
#: Long-poll of the job status (below the client connection's 30 s timeout).
LONG_POLL_S = 20.0
FORM_TYPE = tp.FORM_TYPE
log = tp.log


class BenchError(tp.BenchError):
    pass


# --- small helpers --------------------------------------------------------------------------------


class Children:
    """Processes this benchmark spawned for references (docker, sbatch, squeue, python).

    They are awaited normally; whatever is still alive at the end (a timeout,
    Ctrl-C) is killed by its pid.
    """

    procs: dict[int, asyncio.subprocess.Process] = {}

    @classmethod
    async def run(
        cls,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        capture: bool = False,
        timeout_s: float = 120.0,
    ) -> tuple[int, str, str]:
        """Run *argv*; (exit status, stdout, stderr) — the output only if *capture*."""
        pipe = subprocess.PIPE if capture else subprocess.DEVNULL
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=pipe, stderr=pipe, cwd=cwd, env=env
        )
        cls.procs[proc.pid] = proc
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
        except TimeoutError:
            raise BenchError(f"{argv[0]} did not end in {timeout_s:.0f}s") from None
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            cls.procs.pop(proc.pid, None)
        text = (out or b"").decode(errors="replace"), (err or b"").decode(errors="replace")
        return int(proc.returncode or 0), text[0], text[1]

    @classmethod
    def kill_all(cls) -> None:
        for pid in list(cls.procs):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        cls.procs.clear()


def run_sync(argv: Sequence[str], timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
    """A short blocking command (service checks and cleanup); never raises on failure."""
    try:
        return subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return subprocess.CompletedProcess(list(argv), 127, "", str(exc))


def read_started(directory: Path) -> float | None:
    try:
        return float((directory / STARTED_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def summary_stats(values_s: Sequence[float]) -> dict[str, float]:
    """Median, p99, min and max of seconds, in ms."""
    return {
        "median_ms": 1000 * statistics.median(values_s),
        "p99_ms": 1000 * tp.percentile(values_s, 99),
        "min_ms": 1000 * min(values_s),
        "max_ms": 1000 * max(values_s),
    }


def service_problem(runner: str) -> str | None:
    """Why *runner*'s service cannot be used here (None: it answers)."""
    if runner == "local":
        return None
    if runner == "docker":
        if shutil.which("docker") is None:
            return "the docker CLI is not installed"
        if run_sync(["docker", "info", "--format", "{{.ServerVersion}}"]).returncode != 0:
            return "dockerd does not answer (docker info failed)"
        if run_sync(["docker", "image", "inspect", IMAGE]).returncode != 0:
            return f"the image {IMAGE} is not present locally"
        return None
    if runner == "slurm":
        for tool in ("sbatch", "squeue", "scancel", "scontrol"):
            if shutil.which(tool) is None:
                return f"{tool} is not installed"
        if run_sync(["scontrol", "ping"]).returncode != 0:
            return "slurmctld does not answer (scontrol ping failed)"
        if not run_sync(["sinfo", "-h", "-p", PARTITION, "-o", "%P"]).stdout.strip():
            return f"the partition {PARTITION} does not exist"
        return None
    return f"unknown runner {runner!r}"


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


def table(rows: Sequence[Row]) -> str:
    header = ("runner", "figure", "jobferry", "bare", "ratio", "jobferry-bare", "other work")
    lines = []
    for r in rows:
        lines.append(
            (
                r.runner,
                r.figure,
                tp.fmt(r.jobferry, r.unit),
                f"{tp.fmt(r.bare, r.unit)} ({r.bare_label})" if r.bare is not None else "n/a",
                "-" if r.ratio is None else f"{r.ratio:.2f}",
                "-" if r.delta is None else tp.fmt(r.delta, r.unit),
                "-" if r.background_cores is None else f"{r.background_cores:.2f} cores",
            )
        )
    widths = [max(len(str(x[i])) for x in [header, *lines]) for i in range(len(header))]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    out.append("  ".join("-" * w for w in widths))
    out.extend(
        "  ".join(c.ljust(w) for c, w in zip(x, widths, strict=True)).rstrip() for x in lines
    )
    return "\n".join(out)


# --- the daemon side ------------------------------------------------------------------------------


class Conn(tp.HttpConn):
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


def connect(daemon: tp.Daemon) -> Conn:
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


def job_workdir(daemon: tp.Daemon, job_id: str) -> Path:
    return daemon.data_dir.resolve() / "jobs" / job_id[:2] / job_id / "work"


async def submit(conn: tp.HttpConn, slug: str, destination: str) -> str:
    body = urlencode({"job_name": "bench", "command": "", "destination": destination}).encode()
    status, answer = await conn.request("POST", f"/api/scripts/v1/{slug}/submit/", body, FORM_TYPE)
    if status != 200:
        raise BenchError(f"submit answered {status}: {answer[:300]!r}")
    data = json.loads(answer)
    if not data.get("valid"):
        raise BenchError(f"submit refused: {answer[:300]!r}")
    return str(data["job_id"])


async def submit_many(
    conns: Sequence[tp.HttpConn], slug: str, destination: str, count: int
) -> list[str]:
    order: list[str] = []

    async def one(conn: tp.HttpConn, _index: int) -> str:
        job_id = await submit(conn, slug, destination)
        order.append(job_id)
        return job_id

    await tp.run_pool(conns, count, one)
    return order


# --- the benchmark --------------------------------------------------------------------------------


class Bench:
    def __init__(self, settings: Settings, workdir: Path, stamp: str) -> None:
        self.s = settings
        self.workdir = workdir
        self.stamp = stamp
        self.tag = f"jobferry-bench-{stamp}-{os.getpid()}"  # names our containers and Slurm jobs
        self.node = self.tag  # the daemon's node name: labels its containers and Slurm jobs
        self.deadline = tp.Deadline(settings.time_limit_s)
        self.results = Results()
        self.python = sys.executable  # the daemon's interpreter, so its local jobs' too
        self.ref_dir = workdir / "refs"
        self.ref_dir.mkdir()
        self.daemon: tp.Daemon | None = None
        self.slug = ""
        self.runnable: list[str] = []

    def ref_workdir(self, name: str) -> Path:
        """A fresh directory for a reference run, holding a copy of the job script.

        World-writable: the container's job runs as nobody, like the daemon's.
        """
        directory = self.ref_dir / name
        directory.mkdir(parents=True)
        shutil.copy(JOB_SCRIPT, directory / JOB_SCRIPT.name)
        directory.chmod(0o777)
        return directory

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
        daemon = self.daemon = tp.Daemon("daemon", self.workdir, config)
        await daemon.start(self.deadline)
        self.slug = await daemon.register(JOB_SCRIPT)
        log(f"daemon pid {daemon.pid} at {daemon.url}; script {self.slug}; node {self.node}")
        for runner in self.runnable:
            log(f"== {runner}")
            try:
                await self.runner_part(runner)
            except tp.BenchError as exc:
                log(f"!! {runner} failed: {exc}")
                self.results.errors.append(f"{runner}: {exc}")
            except Exception as exc:
                log(f"!! {runner} failed: {type(exc).__name__}: {exc}")
                self.results.errors.append(f"{runner}: {type(exc).__name__}: {exc}")
            finally:
                await asyncio.to_thread(self.cleanup_services, [runner])

    # -- one runner

    async def runner_part(self, runner: str) -> None:
        details: dict[str, Any] = self.results.details.setdefault(runner, {})
        details["before"] = before = await self.machine_state(runner)
        background = float(before["background_busy_cores"])
        bare_latency = self.bare_latency_fn(runner)
        bare_throughput = self.bare_throughput_fn(runner)

        log(f"{runner}: bare latency, {self.s.latency_jobs} sequential runs")
        details["bare_latency"] = b_lat = await self.metered(bare_latency)
        self.log_latency(f"{runner} bare", b_lat)
        log(f"{runner}: jobferry latency, {self.s.latency_jobs} sequential jobs")
        details["jobferry_latency"] = j_lat = await self.metered(lambda: self.latency(runner))
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
        details["jobferry_throughput"] = j_tp = await self.metered(lambda: self.throughput(runner))
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
        busy = tp.machine_busy()
        info = await run()
        info["busy_cores"] = busy()
        return info

    async def machine_state(self, runner: str) -> dict[str, Any]:
        """Background load (1 s while this benchmark is idle) and the service's other work."""
        busy = tp.machine_busy()
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
        if state["background_busy_cores"] > tp.IDLE_CORES or any(
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

    # -- jobferry

    async def latency(self, runner: str) -> dict[str, Any]:
        daemon = self.daemon
        assert daemon is not None
        conn = connect(daemon)
        latencies: list[float] = []
        completes: list[float] = []
        marks: list[tuple[str, float]] = []
        failed = 0
        try:
            for _ in range(self.s.latency_jobs):
                self.deadline.check(f"the {runner} latency test")
                wall0 = time.time()
                job_id = await submit(conn, self.slug, runner)
                limit = time.monotonic() + min(JOB_LIMIT_S[runner], self.deadline.remaining())
                while True:
                    complete, status = await tp.job_status(conn, job_id, LONG_POLL_S)
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
            "jobs": self.s.latency_jobs,
            "failed": failed,
            "latency": summary_stats(latencies),
            "until_complete": summary_stats(completes),
            "breakdown_median_ms": self.breakdown(daemon, marks),
            "latencies_ms": [round(1000 * x, 2) for x in latencies],
        }

    @staticmethod
    def breakdown(daemon: tp.Daemon, marks: Sequence[tuple[str, float]]) -> dict[str, float]:
        """Medians from the store: submit->row, row->claimed (started_at), claimed->command."""
        stored = tp.store_times(daemon, [m[0] for m in marks])
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
        n = self.s.jobs
        conns = [connect(daemon) for _ in range(8)]
        try:
            t0 = time.perf_counter()
            ids = await self.deadline.bounded(
                submit_many(conns, self.slug, runner, n), f"submitting {runner} jobs"
            )
            submitted = time.perf_counter() - t0
            done = await tp.wait_all(conns[:4], ids, self.deadline, window=4 * CPUS)
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

    # -- bare references

    def bare_latency_fn(self, runner: str) -> Callable[[], Awaitable[dict[str, Any]]]:
        return {
            "local": self.bare_latency_local,
            "docker": self.bare_latency_docker,
            "slurm": self.bare_latency_slurm,
        }[runner]

    def bare_throughput_fn(self, runner: str) -> Callable[[], Awaitable[dict[str, Any]]]:
        return {
            "local": self.bare_throughput_local,
            "docker": self.bare_throughput_docker,
            "slurm": self.bare_throughput_slurm,
        }[runner]

    async def sequential(
        self, name: str, label: str, one: Callable[[Path], Awaitable[bool]]
    ) -> dict[str, Any]:
        """Run *one(dir)* latency_jobs times, each in a fresh directory, one after the other."""
        latencies: list[float] = []
        completes: list[float] = []
        failed = 0
        for i in range(self.s.latency_jobs):
            self.deadline.check(f"the {name} reference")
            directory = self.ref_workdir(f"{name}-latency-{i}")
            wall0 = time.time()
            ok = await one(directory)
            completes.append(time.time() - wall0)
            started = read_started(directory)
            if not ok or started is None:
                failed += 1
                continue
            latencies.append(started - wall0)
        if not latencies:
            raise BenchError(f"no bare {name} run recorded its start")
        return {
            "label": label,
            "runs": self.s.latency_jobs,
            "failed": failed,
            "latency": summary_stats(latencies),
            "until_complete": summary_stats(completes),
            "latencies_ms": [round(1000 * x, 2) for x in latencies],
        }

    async def concurrent(
        self, name: str, label: str, concurrency: int, one: Callable[[Path], Awaitable[bool]]
    ) -> dict[str, Any]:
        """Run *one(dir)* jobs times, *concurrency* at a time; the runs per second."""
        n = self.s.jobs
        dirs = [self.ref_workdir(f"{name}-throughput-{i}") for i in range(n)]
        cursor = failed = 0

        async def worker() -> None:
            nonlocal cursor, failed
            while cursor < n:
                directory = dirs[cursor]
                cursor += 1
                if not await one(directory):
                    failed += 1

        t0 = time.perf_counter()
        await self.deadline.bounded(
            asyncio.gather(*(worker() for _ in range(concurrency))), f"the bare {name} runs"
        )
        seconds = time.perf_counter() - t0
        missing = sum(1 for d in dirs if read_started(d) is None)
        return {
            "label": label,
            "jobs": n,
            "concurrency": concurrency,
            "seconds": seconds,
            "jobs_per_s": n / seconds,
            "failed": max(failed, missing),
        }

    # local: the same interpreter and script as the daemon's local jobs

    async def local_one(self, directory: Path) -> bool:
        argv = [self.python, str(directory / JOB_SCRIPT.name)]
        code, _, _ = await Children.run(argv, cwd=str(directory), env=tp.job_env(str(directory)))
        return code == 0

    async def bare_latency_local(self) -> dict[str, Any]:
        return await self.sequential("local", "spawn", self.local_one)

    async def bare_throughput_local(self) -> dict[str, Any]:
        return await self.concurrent("local", f"spawn, c={CPUS}", CPUS, self.local_one)

    # docker: docker run with the daemon's container settings

    def docker_argv(self, directory: Path) -> list[str]:
        d = str(directory)
        return [
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--pids-limit",
            str(DOCKER_PIDS_LIMIT),
            "--cpus",
            "1",
            "--memory",
            f"{JOB_MEMORY_MB}m",
            "--memory-swap",
            f"{JOB_MEMORY_MB}m",
            "--user",
            "65534:65534" if os.geteuid() == 0 else f"{os.geteuid()}:{os.getegid()}",
            "--label",
            f"jobferry-bench={self.tag}",
            "--mount",
            f"type=bind,source={d},target={d}",
            "--workdir",
            d,
            IMAGE,
            "python3",
            f"{d}/{JOB_SCRIPT.name}",
        ]

    async def docker_one(self, directory: Path) -> bool:
        code, _, err = await Children.run(
            self.docker_argv(directory), capture=True, timeout_s=JOB_LIMIT_S["docker"]
        )
        if code != 0:
            log(f"docker run failed ({code}): {err.strip()[-300:]}")
        return code == 0

    async def bare_latency_docker(self) -> dict[str, Any]:
        return await self.sequential("docker", "docker run", self.docker_one)

    async def bare_throughput_docker(self) -> dict[str, Any]:
        return await self.concurrent("docker", f"docker run, c={CPUS}", CPUS, self.docker_one)

    # slurm: sbatch --wrap with the daemon's sbatch options, polled with squeue

    def sbatch_argv(self, directory: Path, name: str) -> list[str]:
        return [
            "sbatch",
            "--parsable",
            f"--job-name={name}",
            "--nodes=1",
            "--ntasks=1",
            "--cpus-per-task=1",
            "--output=/dev/null",
            "--error=/dev/null",
            f"--chdir={directory}",
            "--export=NONE",
            "--no-requeue",
            f"--mem={JOB_MEMORY_MB}M",
            f"--partition={PARTITION}",
            "--wrap",
            f"python3 {JOB_SCRIPT.name}",
        ]

    async def sbatch(self, directory: Path, name: str) -> str:
        code, out, err = await Children.run(
            self.sbatch_argv(directory, name), capture=True, timeout_s=60
        )
        if code != 0:
            raise BenchError(f"sbatch failed ({code}): {err.strip()[-300:]}")
        return out.strip().split(";")[0]

    async def squeue_names(self, name: str) -> list[str] | None:
        """Ids of the Slurm jobs still known by *name*; None if squeue failed."""
        code, out, _ = await Children.run(
            ["squeue", "-h", f"--name={name}", "-o", "%i"], capture=True, timeout_s=60
        )
        return out.split() if code == 0 else None

    async def wait_slurm_gone(self, name: str, limit_s: float) -> None:
        limit = time.monotonic() + min(limit_s, self.deadline.remaining())
        while True:
            await asyncio.sleep(self.s.slurm_poll_s)
            remaining = await self.squeue_names(name)
            if remaining == []:
                return
            if time.monotonic() > limit:
                raise BenchError(f"Slurm jobs {name} not gone after {limit_s:.0f}s")

    async def slurm_one(self, directory: Path) -> bool:
        name = f"{self.tag}-{directory.name}"
        await self.sbatch(directory, name)
        await self.wait_slurm_gone(name, JOB_LIMIT_S["slurm"])
        return True

    async def bare_latency_slurm(self) -> dict[str, Any]:
        return await self.sequential("slurm", "sbatch --wrap", self.slurm_one)

    async def bare_throughput_slurm(self) -> dict[str, Any]:
        """All sbatch calls (CPUS at a time, as the daemon's executor may), then squeue polls."""
        n = self.s.jobs
        name = f"{self.tag}-throughput"
        dirs = [self.ref_workdir(f"slurm-throughput-{i}") for i in range(n)]
        cursor = 0

        async def worker() -> None:
            nonlocal cursor
            while cursor < n:
                directory = dirs[cursor]
                cursor += 1
                await self.sbatch(directory, name)

        t0 = time.perf_counter()
        await self.deadline.bounded(
            asyncio.gather(*(worker() for _ in range(CPUS))), "the sbatch calls"
        )
        submitted = time.perf_counter() - t0
        await self.wait_slurm_gone(name, self.deadline.remaining())
        seconds = time.perf_counter() - t0
        missing = sum(1 for d in dirs if read_started(d) is None)
        return {
            "label": f"sbatch --wrap, c={CPUS}",
            "jobs": n,
            "concurrency": CPUS,
            "submitted_s": submitted,
            "seconds": seconds,
            "jobs_per_s": n / seconds,
            "failed": missing,
        }

    # -- cleanup of what this run created in the services

    def cleanup_services(self, runners: Sequence[str]) -> None:
        if "docker" in runners and "docker" in self.runnable:
            ids: set[str] = set()
            for label in (f"jobferry-bench={self.tag}", f"jobferry.node={self.node}"):
                out = run_sync(["docker", "ps", "-aq", "--filter", f"label={label}"])
                ids.update(out.stdout.split())
            if ids:
                log(f"removing {len(ids)} containers of this run")
                run_sync(["docker", "rm", "-f", *sorted(ids)], timeout_s=120)
        if "slurm" in runners and "slurm" in self.runnable:
            out = run_sync(["squeue", "-h", "-o", "%i|%j|%k"])
            ours = []
            for line in out.stdout.splitlines():
                job, _, rest = line.partition("|")
                name, _, comment = rest.partition("|")
                if name.startswith(self.tag) or comment.strip() == f"jobferry node {self.node}":
                    ours.append(job.strip())
            if ours:
                log(f"cancelling {len(ours)} Slurm jobs of this run")
                run_sync(["scancel", *ours], timeout_s=60)


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


def write_json(bench: Bench, settings: Settings, stamp: str, seconds: float) -> Path:
    tp.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = tp.RESULTS_DIR / f"runners-{stamp}.json"
    data = {
        "timestamp": stamp,
        "duration_s": seconds,
        "machine": {
            "cpus": CPUS,
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "executable": sys.executable,
            "memory_mb": psutil.virtual_memory().total / tp.MB,
            "loadavg_at_end": os.getloadavg(),
        },
        "git": tp.git_state(),
        "settings": asdict(settings),
        "skipped": bench.results.skipped,
        "summary": [asdict(row) for row in bench.results.rows],
        "details": bench.results.details,
        "errors": bench.results.errors,
    }
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)

    def on_sigterm(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    workdir = Path(tempfile.mkdtemp(prefix="jobferry-bench-runners-"))
    workdir.chmod(0o755)  # containers run as nobody and mount directories below it
    t0 = time.monotonic()
    log(
        f"jobferry per-runner benchmark: {CPUS} CPUs, runners {','.join(settings.runners)},"
        f" {settings.jobs} jobs, {settings.latency_jobs} latency jobs, data in {workdir},"
        f" load average {os.getloadavg()[0]:.2f}"
    )
    bench = Bench(settings, workdir, stamp)
    interrupted = False
    try:
        asyncio.run(bench.run())
    except KeyboardInterrupt:
        interrupted = True
        bench.results.errors.append("interrupted")
        log("interrupted")
    except tp.BenchError as exc:
        bench.results.errors.append(str(exc))
        log(f"!! {exc}")
    finally:
        Children.kill_all()
        tp.Managed.stop_all()
        bench.cleanup_services(RUNNERS)
        if settings.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    seconds = time.monotonic() - t0
    print()
    print(
        f"Summary ({CPUS} CPUs, {seconds:.0f}s run, {settings.jobs} jobs,"
        f" {settings.latency_jobs} latency jobs{', quick' if settings.quick else ''}):"
    )
    print(table(bench.results.rows))
    for runner, why in bench.results.skipped.items():
        print(f"SKIPPED {runner}: {why}")
    for error in bench.results.errors:
        print(f"ERROR: {error}")
    path = write_json(bench, settings, stamp, seconds)
    print(f"\nresults: {path}")
    if interrupted:
        return 130
    return 1 if bench.results.errors else 0


if __name__ == "__main__":
    sys.exit(main())
