"""Part 1 of ``bench/tes.py``: submit -> COMPLETE of an ``echo hi`` task on Docker.

N sequential tasks (``POST /ga4gh/tes/v1/tasks``, then ``GET /tasks/{id}?view=MINIMAL``
every ``--poll-ms`` until a final state) alternate with the bare ``docker run --rm
jobferry-test/python:1 echo hi`` (``--pull never``, and a label to find its container
should the run be interrupted), spawned and polled for its exit the same way. The
daemon runs the task program through its local runner on a Docker destination of the
same local image. Each task's FULL view, read afterwards (untimed), gives a breakdown:
submit -> task program started (claim, spawn, interpreter), -> container started,
the container's run, -> program ended, -> seen COMPLETE by the client.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

from bench.common.daemons import Daemon
from bench.common.report import CPUS, BenchError, log
from bench.common.stats import Deadline, LoadMeter, own_cpu_s, process_cpu_s
from bench.tes_list import IMAGE, LOGGING, TASKS_PATH

FINAL = frozenset({"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED", "PREEMPTED"})
ECHO = {"name": "bench-echo", "executors": [{"image": IMAGE, "command": ["echo", "hi"]}]}


def docker_missing() -> str | None:
    """Why Docker tasks cannot run here (None: they can). Never pulls."""
    for argv in (["docker", "info"], ["docker", "image", "inspect", IMAGE]):
        try:
            done = subprocess.run(argv, capture_output=True, timeout=60, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"{' '.join(argv)}: {exc}"
        if done.returncode != 0:
            return f"{' '.join(argv)}: {done.stderr.decode(errors='replace').strip()[:200]}"
    return None


def _when(text: object) -> float | None:
    """Epoch seconds of an RFC 3339 time of a task's log (None if absent)."""
    return datetime.fromisoformat(str(text)).timestamp() if text else None


def time_task(
    session: requests.Session, url: str, poll_s: float, deadline: Deadline, created: list[str]
) -> tuple[float, dict[str, float]]:
    """Seconds from the POST until the task is seen in a final state, and where they went
    (from its FULL view, read afterwards; its id is added to *created*). A task that does
    not complete is an error."""
    wall0 = time.time()
    t0 = time.perf_counter()
    answer = session.post(url + TASKS_PATH, json=ECHO, timeout=60)
    if answer.status_code != 200:
        raise BenchError(f"POST {TASKS_PATH}: {answer.status_code} {answer.text[:300]}")
    task_id = str(answer.json()["id"])
    created.append(task_id)
    polls = 0
    while True:
        polls += 1
        got = session.get(f"{url}{TASKS_PATH}/{task_id}?view=MINIMAL", timeout=60)
        if got.status_code != 200:
            raise BenchError(f"GET task {task_id}: {got.status_code} {got.text[:300]}")
        state = got.json()["state"]
        if state in FINAL:
            break
        deadline.check(f"waiting for task {task_id} ({state})")
        time.sleep(poll_s)
    seconds = time.perf_counter() - t0
    full = session.get(f"{url}{TASKS_PATH}/{task_id}?view=FULL", timeout=60).json()
    if state != "COMPLETE":
        raise BenchError(f"task {task_id} ended {state}: {json.dumps(full)[:800]}")
    log_ = (full.get("logs") or [{}])[0]
    executor = (log_.get("logs") or [{}])[0]
    start, end = _when(log_.get("start_time")), _when(log_.get("end_time"))
    ex_start, ex_end = _when(executor.get("start_time")), _when(executor.get("end_time"))
    parts: dict[str, float] = {}
    if None not in (start, end, ex_start, ex_end):
        assert start and end and ex_start and ex_end
        parts.update(
            submit_to_program_start_ms=(start - wall0) * 1000,
            program_start_to_container_ms=(ex_start - start) * 1000,
            container_run_ms=(ex_end - ex_start) * 1000,
            container_end_to_program_end_ms=(end - ex_end) * 1000,
            program_end_to_seen_ms=(wall0 + seconds - end) * 1000,
        )
    parts["status_polls"] = float(polls)
    return seconds, parts


def time_bare(label: str, poll_s: float, deadline: Deadline) -> float:
    """Seconds of ``docker run --rm IMAGE echo hi``, its exit polled every *poll_s* (the
    label finds its container at the end, should it outlive an interruption)."""
    argv = ["docker", "run", "--rm", "--pull", "never", "--label", label, IMAGE, "echo", "hi"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while proc.poll() is None:
            deadline.check("a bare docker run")
            time.sleep(poll_s)
        seconds = time.perf_counter() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.stderr is not None
    error = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if proc.returncode != 0:
        raise BenchError(f"docker run exited {proc.returncode}: {error.strip()[:300]}")
    return seconds


def remove_containers(label: str, task_ids: list[str]) -> None:
    """Containers left by an interrupted run: the bare ones (*label*) and our tasks' (the
    task program names them ``jobferry-<task id>-<attempt>-<executor>``)."""
    ours = {f"jobferry-{task_id}-1-0" for task_id in task_ids}
    listed = subprocess.run(
        ["docker", "ps", "-a", "--format", "{{.Names}}\t{{.Labels}}"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    names = [
        line.split("\t")[0]
        for line in listed.stdout.splitlines()
        if line.split("\t")[0] in ours or label in line
    ]
    if names:
        subprocess.run(["docker", "rm", "-f", *names], capture_output=True, timeout=60, check=False)


def latency_part(run_dir: Path, args: argparse.Namespace, deadline: Deadline) -> dict[str, Any]:
    """Part 1: N sequential tasks and N bare runs, alternating (see the module docstring)."""
    config = {
        "logging": LOGGING,
        "node": {"cores": CPUS},
        "runners": {"local": {"slots": CPUS}, "docker": {"enabled": True, "slots": CPUS}},
        "destinations": {
            "local": {"runner": "local"},
            "dock": {"runner": "docker", "image": IMAGE},
        },
        "routing": {"default": "local"},
        "tes": {"enabled": True, "destination": "dock"},
    }
    daemon = Daemon("latency", run_dir, config).start()
    label = f"jobferry-bench=tes-{os.getpid()}"
    poll_s = args.poll_ms / 1000.0
    task_ids: list[str] = []
    session = daemon.session()
    tes_s: list[float] = []
    bare_s: list[float] = []
    parts: list[dict[str, float]] = []
    try:
        # Containers are not our children: their CPU cannot be told from other work's
        # during the run, so the machine's other work is read for 1 s before it, idle.
        idle = LoadMeter(lambda: own_cpu_s() + process_cpu_s(daemon.pid))
        time.sleep(1.0)
        other = idle.stop()["other_cores"]
        log(f"latency: other work before the run {other:.2f} cores")
        log("latency: warm-up (2 tasks, 2 bare runs, untimed)")
        for _ in range(2):
            time_task(session, daemon.url, poll_s, deadline, task_ids)
            time_bare(label, poll_s, deadline)
        for index in range(args.tasks):
            for kind in ("bare", "tes") if index % 2 == 0 else ("tes", "bare"):
                if kind == "bare":
                    bare_s.append(time_bare(label, poll_s, deadline))
                else:
                    seconds, breakdown = time_task(session, daemon.url, poll_s, deadline, task_ids)
                    tes_s.append(seconds)
                    parts.append(breakdown)
            log(
                f"latency {index + 1}/{args.tasks}: task {tes_s[-1] * 1000:.0f} ms, "
                f"bare {bare_s[-1] * 1000:.0f} ms"
            )
    finally:
        session.close()
        daemon.stop()
        remove_containers(label, task_ids)
    keys = list(dict.fromkeys(k for p in parts for k in p))  # the breakdown's order
    breakdown = {k: statistics.median([p[k] for p in parts if k in p]) for k in keys}
    return {
        "task_ms": [s * 1000 for s in tes_s],
        "bare_ms": [s * 1000 for s in bare_s],
        "breakdown_median": breakdown,
        "other_cores": other,
    }
