"""The references of ``per_job.py``: a bare asyncio spawn loop and HyperQueue.

* **bare**: the same ``python noop.py`` spawned from an asyncio loop in this
  process, ``slots`` at a time (throughput), or one after the other (latency).
* **HyperQueue**: PyPI ``hyperqueue`` in its own virtualenv, made once under
  ``~/.cache/jobferry-bench/hq-venv`` (``JOBFERRY_BENCH_CACHE`` moves it). The
  wheel ships the Rust server and worker inside its Python module, so its
  local cluster (``LocalCluster``: one server and one worker with ``slots``
  cores) runs in a child process of this benchmark (``HQ_RUN``), started for
  each round and stopped by its pid. The figure is one job of N tasks, each
  the same command, output discarded (``/dev/null``), from the submit to the
  end of ``wait_for_jobs``; the cluster's start is not timed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import venv
from pathlib import Path
from typing import Any

from bench.common.report import BenchError, log
from bench.common.stats import Deadline, LoadMeter, children_cpu_s, own_cpu_s
from bench.throughput_refs import spawn_many, spawn_sequential

HQ_VERSION = "0.27.0"
CACHE = Path(os.environ.get("JOBFERRY_BENCH_CACHE", Path.home() / ".cache" / "jobferry-bench"))
HQ_VENV = CACHE / "hq-venv"

#: Runs in the HyperQueue virtualenv: argv N CORES WORKDIR COMMAND...; prints JSON.
HQ_RUN = """
import json, sys, time
from pathlib import Path
from hyperqueue import Job
from hyperqueue.cluster import LocalCluster, WorkerConfig
n, cores, workdir, command = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:]
config = WorkerConfig(cores=cores)
with LocalCluster(server_dir=str(workdir / "hq-server"), worker_config=config) as cl:
    client = cl.client()
    warm = Job(workdir)
    warm.program(command, stdout="/dev/null", stderr="/dev/null")
    client.wait_for_jobs([client.submit(warm)])
    job = Job(workdir)
    for _ in range(n):
        job.program(command, stdout="/dev/null", stderr="/dev/null")
    t0 = time.time()
    ok = client.wait_for_jobs([client.submit(job)], raise_on_error=False)
    waited = time.time() - t0
print(json.dumps({"t0": t0, "waited_s": waited, "ok": ok}), flush=True)
"""


def hq_python() -> Path:
    """The HyperQueue virtualenv's interpreter, made (once) if missing."""
    python = HQ_VENV / "bin" / "python"
    check = (
        f"import sys, importlib.metadata as m; sys.exit(m.version('hyperqueue') != {HQ_VERSION!r})"
    )
    probe = [str(python), "-c", check]
    if python.exists() and subprocess.run(probe, capture_output=True, timeout=60).returncode == 0:
        return python
    log(f"making the HyperQueue virtualenv in {HQ_VENV} (hyperqueue=={HQ_VERSION})")
    HQ_VENV.parent.mkdir(parents=True, exist_ok=True)
    venv.create(HQ_VENV, with_pip=True, clear=True)
    install = [str(python), "-m", "pip", "install", "--quiet", f"hyperqueue=={HQ_VERSION}"]
    result = subprocess.run(install, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise BenchError(f"cannot install hyperqueue: {result.stderr[-500:]}")
    return python


class ChildWatch:
    """When the children of process *pid* were alive: ``/proc/PID/task/*/children``."""

    def __init__(self, pid: int, interval_s: float = 0.01) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.seen: list[tuple[float, list[str]]] = []  # (wall time, child pids), non-empty
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        tasks = Path(f"/proc/{self.pid}/task")
        while not self._stop.wait(self.interval_s):
            kids: list[str] = []
            try:
                for task in tasks.iterdir():
                    with contextlib.suppress(OSError):
                        kids += (task / "children").read_text().split()
            except OSError:
                return  # the process is gone
            if kids:
                self.seen.append((time.time(), kids))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def after(self, t0: float) -> tuple[float | None, int]:
        """(the last moment a child was alive after *t0*, distinct children seen after *t0*)."""
        later = [(t, kids) for t, kids in self.seen if t >= t0]
        if not later:
            return None, 0
        return later[-1][0], len({kid for _, kids in later for kid in kids})


class Refs:
    """The bare loop and HyperQueue running *argv* (``python noop.py``)."""

    def __init__(self, argv: list[str], slots: int, workdir: Path) -> None:
        self.argv = argv
        self.slots = slots
        self.workdir = workdir
        self.cwd = workdir / "spawn-cwd"
        self.cwd.mkdir(exist_ok=True)
        self.hq: Path | None = None

    async def bare_jobs(self, n: int, deadline: Deadline) -> dict[str, Any]:
        meter = LoadMeter(lambda: own_cpu_s() + children_cpu_s())
        own0 = own_cpu_s()
        seconds, failures = await spawn_many(self.argv, n, self.slots, str(self.cwd), deadline)
        own = own_cpu_s() - own0
        if failures:
            raise BenchError(f"{failures} bare runs failed")
        return {
            "jobs": n,
            "seconds": seconds,
            "jobs_per_s": n / seconds,
            "spawner_cpu_ms_per_job": 1000 * own / n,
            **meter.stop(),
        }

    async def bare_latency(self, n: int, deadline: Deadline) -> list[float]:
        return await spawn_sequential(self.argv, n, str(self.cwd), deadline)

    async def hq_jobs(self, n: int, deadline: Deadline) -> dict[str, Any]:
        if self.hq is None:
            self.hq = await asyncio.to_thread(hq_python)
        workdir = self.workdir / f"hq-{time.monotonic_ns()}"
        workdir.mkdir()
        argv = [str(self.hq), "-c", HQ_RUN, str(n), str(self.slots), str(workdir), *self.argv]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=workdir,
            env={**os.environ, "PYTHONPATH": ""},
        )
        meter = LoadMeter(lambda: own_cpu_s() + children_cpu_s())
        watch = ChildWatch(proc.pid)
        try:
            out, err = await deadline.bounded(proc.communicate(), "HyperQueue", 300)
        finally:
            watch.stop()
            if proc.returncode is None:
                proc.kill()  # by its pid (asyncio's handle), the cluster is its threads
                await proc.wait()
        load = meter.stop()  # the whole child: start, warm-up, run (other work only)
        if proc.returncode != 0:
            raise BenchError(f"HyperQueue run failed: {err.decode(errors='replace')[-800:]}")
        answer = json.loads(out.decode().strip().splitlines()[-1])
        if not answer["ok"]:
            raise BenchError("HyperQueue: some tasks failed")
        t0 = float(answer["t0"])
        last, seen = watch.after(t0)
        if last is None or seen < 0.9 * n:
            raise BenchError(f"HyperQueue: saw {seen} of {n} task processes")
        seconds = last - t0
        return {
            "jobs": n,
            "seconds": seconds,
            "jobs_per_s": n / seconds,
            "wait_for_jobs_s": answer["waited_s"],
            "task_processes_seen": seen,
            **load,
        }


def interpreter() -> str:
    """The jobs' interpreter: the daemon's (this one)."""
    return sys.executable
