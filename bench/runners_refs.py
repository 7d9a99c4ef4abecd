"""The bare references of ``runners.py``: each runner's command without the daemon.

Local: ``python started.py`` spawned from asyncio; Docker: ``docker run --rm``
with the daemon's container settings; Slurm: ``sbatch --wrap`` with the
daemon's sbatch options, polled with ``squeue`` until gone. Each runs in a
fresh directory holding a copy of the job script, which records when it
started; latency = that start - the moment before the spawn. The processes
started here (``Children``) are killed by pid if still alive at the end, and
the containers and Slurm jobs of the run (named with its tag, or labelled with
the daemon's node) are removed by ``cleanup_services``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from bench.common.daemons import job_env
from bench.common.report import BENCH_DIR, CPUS, BenchError, log
from bench.common.stats import Deadline, summary_ms

JOB_SCRIPT = BENCH_DIR / "started.py"
STARTED_FILE = "started.txt"
IMAGE = "jobferry-test/python:1"
PARTITION = "debug"
#: Memory of a Docker or Slurm job (small, so Slurm runs jobs side by side).
JOB_MEMORY_MB = 32
#: The Docker runner's pids limit (the bare `docker run` gets the same).
DOCKER_PIDS_LIMIT = 4096
#: Longest wait for one job in the latency tests, per runner (s).
JOB_LIMIT_S = {"local": 60.0, "docker": 120.0, "slurm": 300.0}


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


class BareRefs:
    """The bare latency and throughput measurements of every runner."""

    def __init__(
        self,
        *,
        jobs: int,
        latency_jobs: int,
        slurm_poll_s: float,
        deadline: Deadline,
        tag: str,
        ref_dir: Path,
        python: str,
    ) -> None:
        self.jobs = jobs
        self.latency_jobs = latency_jobs
        self.slurm_poll_s = slurm_poll_s
        self.deadline = deadline
        self.tag = tag  # names our containers and Slurm jobs
        self.ref_dir = ref_dir
        self.ref_dir.mkdir()
        self.python = python  # the daemon's interpreter, so its local jobs' too

    def ref_workdir(self, name: str) -> Path:
        """A fresh directory for a reference run, holding a copy of the job script.

        World-writable: the container's job runs as nobody, like the daemon's.
        """
        directory = self.ref_dir / name
        directory.mkdir(parents=True)
        shutil.copy(JOB_SCRIPT, directory / JOB_SCRIPT.name)
        directory.chmod(0o777)
        return directory

    def fns(
        self, runner: str
    ) -> tuple[Callable[[], Awaitable[dict[str, Any]]], Callable[[], Awaitable[dict[str, Any]]]]:
        """*runner*'s bare (latency, throughput) measurements."""
        return {
            "local": (self.bare_latency_local, self.bare_throughput_local),
            "docker": (self.bare_latency_docker, self.bare_throughput_docker),
            "slurm": (self.bare_latency_slurm, self.bare_throughput_slurm),
        }[runner]

    async def sequential(
        self, name: str, label: str, one: Callable[[Path], Awaitable[bool]]
    ) -> dict[str, Any]:
        """Run *one(dir)* latency_jobs times, each in a fresh directory, one after the other."""
        latencies: list[float] = []
        completes: list[float] = []
        failed = 0
        for i in range(self.latency_jobs):
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
            "runs": self.latency_jobs,
            "failed": failed,
            "latency": summary_ms(latencies),
            "until_complete": summary_ms(completes),
            "latencies_ms": [round(1000 * x, 2) for x in latencies],
        }

    async def concurrent(
        self, name: str, label: str, concurrency: int, one: Callable[[Path], Awaitable[bool]]
    ) -> dict[str, Any]:
        """Run *one(dir)* jobs times, *concurrency* at a time; the runs per second."""
        n = self.jobs
        dirs = [self.ref_workdir(f"{name}-throughput-{i}") for i in range(n)]
        t0 = time.perf_counter()
        failed = await self.each(dirs, concurrency, one, f"the bare {name} runs")
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

    async def each(
        self,
        dirs: Sequence[Path],
        concurrency: int,
        one: Callable[[Path], Awaitable[bool]],
        what: str,
    ) -> int:
        """Run *one(dir)* for every directory, *concurrency* at a time; the failures."""
        cursor = failed = 0

        async def worker() -> None:
            nonlocal cursor, failed
            while cursor < len(dirs):
                directory = dirs[cursor]
                cursor += 1
                if not await one(directory):
                    failed += 1

        await self.deadline.bounded(asyncio.gather(*(worker() for _ in range(concurrency))), what)
        return failed

    # local: the same interpreter and script as the daemon's local jobs

    async def local_one(self, directory: Path) -> bool:
        argv = [self.python, str(directory / JOB_SCRIPT.name)]
        code, _, _ = await Children.run(argv, cwd=str(directory), env=job_env(str(directory)))
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
            await asyncio.sleep(self.slurm_poll_s)
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
        n = self.jobs
        name = f"{self.tag}-throughput"
        dirs = [self.ref_workdir(f"slurm-throughput-{i}") for i in range(n)]

        async def submit(directory: Path) -> bool:
            await self.sbatch(directory, name)
            return True

        t0 = time.perf_counter()
        await self.each(dirs, CPUS, submit, "the sbatch calls")
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


def cleanup_services(runners: Sequence[str], runnable: Sequence[str], tag: str, node: str) -> None:
    """Remove the containers and Slurm jobs this run created (its tag, or the daemon's node)."""
    if "docker" in runners and "docker" in runnable:
        ids: set[str] = set()
        for label in (f"jobferry-bench={tag}", f"jobferry.node={node}"):
            out = run_sync(["docker", "ps", "-aq", "--filter", f"label={label}"])
            ids.update(out.stdout.split())
        if ids:
            log(f"removing {len(ids)} containers of this run")
            run_sync(["docker", "rm", "-f", *sorted(ids)], timeout_s=120)
    if "slurm" in runners and "slurm" in runnable:
        out = run_sync(["squeue", "-h", "-o", "%i|%j|%k"])
        ours = []
        for line in out.stdout.splitlines():
            job, _, rest = line.partition("|")
            name, _, comment = rest.partition("|")
            if name.startswith(tag) or comment.strip() == f"jobferry node {node}":
                ours.append(job.strip())
        if ours:
            log(f"cancelling {len(ours)} Slurm jobs of this run")
            run_sync(["scancel", *ours], timeout_s=60)
