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

from bench.common.clients import store_times
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


#: The breakdown of a task's latency: (name, from moment, to moment). The moments come
#: from the client (submit, seen), the store (row committed, claimed, reaped) and the
#: task's FULL view (the task program's and its executor's start and end).
PHASES = (
    ("submit -> row committed", "submit", "row_committed"),
    ("row -> claimed", "row_committed", "claimed"),
    ("claimed -> task program started", "claimed", "program_start"),
    ("program started -> container started", "program_start", "container_start"),
    ("container run", "container_start", "container_end"),
    ("container ended -> program ended", "container_end", "program_end"),
    ("program ended -> reaped", "program_end", "reaped"),
    ("reaped -> seen COMPLETE", "reaped", "seen"),
)


def phase_medians(samples: list[dict[str, float]]) -> dict[str, float]:
    """Median milliseconds of each of PHASES over the tasks' moments (epoch seconds); a
    phase is left out where a task lacks one of its moments."""
    out: dict[str, float] = {}
    for name, start, end in PHASES:
        spans = [1000 * (m[end] - m[start]) for m in samples if start in m and end in m]
        if spans:
            out[name] = statistics.median(spans)
    return out


def time_task(
    session: requests.Session, url: str, poll_s: float, deadline: Deadline
) -> tuple[float, str, dict[str, float]]:
    """Seconds from the POST until the task is seen in a final state, its id, and the
    moments of its life the client and its FULL view (read afterwards) know (see PHASES).
    A task that does not complete is an error."""
    wall0 = time.time()
    t0 = time.perf_counter()
    answer = session.post(url + TASKS_PATH, json=ECHO, timeout=60)
    if answer.status_code != 200:
        raise BenchError(f"POST {TASKS_PATH}: {answer.status_code} {answer.text[:300]}")
    task_id = str(answer.json()["id"])
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
    moments = {"submit": wall0, "seen": wall0 + seconds, "status_polls": float(polls)}
    for name, text in (
        ("program_start", log_.get("start_time")),
        ("container_start", executor.get("start_time")),
        ("container_end", executor.get("end_time")),
        ("program_end", log_.get("end_time")),
    ):
        when = _when(text)
        if when is not None:
            moments[name] = when
    return seconds, task_id, moments


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
    timed: dict[str, dict[str, float]] = {}
    try:
        # Containers are not our children: their CPU cannot be told from other work's
        # during the run, so the machine's other work is read for 1 s before it, idle.
        idle = LoadMeter(lambda: own_cpu_s() + process_cpu_s(daemon.pid))
        time.sleep(1.0)
        other = idle.stop()["other_cores"]
        log(f"latency: other work before the run {other:.2f} cores")
        log("latency: warm-up (2 tasks, 2 bare runs, untimed)")
        for _ in range(2):
            task_ids.append(time_task(session, daemon.url, poll_s, deadline)[1])
            time_bare(label, poll_s, deadline)
        for index in range(args.tasks):
            for kind in ("bare", "tes") if index % 2 == 0 else ("tes", "bare"):
                if kind == "bare":
                    bare_s.append(time_bare(label, poll_s, deadline))
                else:
                    seconds, task_id, moments = time_task(session, daemon.url, poll_s, deadline)
                    task_ids.append(task_id)
                    tes_s.append(seconds)
                    timed[task_id] = moments
            log(
                f"latency {index + 1}/{args.tasks}: task {tes_s[-1] * 1000:.0f} ms, "
                f"bare {bare_s[-1] * 1000:.0f} ms"
            )
    finally:
        session.close()
        daemon.stop()
        remove_containers(label, task_ids)
    for task_id, times in store_times(daemon.data_dir, list(timed)).items():
        for moment, column in (("row_committed", "created"), ("claimed", "started"),
                               ("reaped", "finished")):  # fmt: skip
            if times.get(column) is not None:
                timed[task_id][moment] = float(times[column] or 0.0)
    polls = [m["status_polls"] for m in timed.values()]
    return {
        "task_ms": [s * 1000 for s in tes_s],
        "bare_ms": [s * 1000 for s in bare_s],
        "breakdown_median_ms": phase_medians(list(timed.values())),
        "status_polls_median": statistics.median(polls) if polls else None,
        "moments": timed,
        "other_cores": other,
    }
