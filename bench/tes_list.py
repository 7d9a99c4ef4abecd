"""Part 3 of ``bench/tes.py``: ``GET /ga4gh/tes/v1/tasks`` with 100,000 tasks in the store.

A fresh data directory gets a schema, an admin and three users, and N TES tasks
(default 100,000) inserted with Core ``executemany`` straight into ``jobs`` and
``tes_tasks`` before any daemon starts, as ``bench/jobs_list.py`` seeds jobs: spread
over the four owners, three name families (``align-``, ``call-``, ``qc-``), four
``project`` tags and a ``run`` tag, 90 days, and the job states a task can be in
(mostly ended; queued and running ones sit on a destination and a node this daemon
does not own, and its local slots are 0, so nothing is claimed or recovered).

Then a real ``jobferry serve`` runs on it and each scenario (pages of 256, MINIMAL)
is requested sequentially over one keep-alive connection (warm-up first): median
and p99 of the round trip on loopback, next to ``GET /healthz`` measured the same way
on the same daemon. Target: p99 <= 50 ms for the gated scenarios.
"""

from __future__ import annotations

import random
import statistics
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import requests

from bench.common.daemons import Daemon
from bench.common.report import BenchError, log
from bench.common.stats import percentile, process_cpu_s
from bench.jobs_list import WARMUP, fresh_store, other_load, time_gets, wait_idle
from jobferry.services.tes_doc import validate_task
from jobferry.store.models import Base, new_id

TARGET_LIST_P99_MS = 50.0
IMAGE = "jobferry-test/python:1"
TASKS_PATH = "/ga4gh/tes/v1/tasks"
#: Every daemon of the benchmark logs warnings only.
LOGGING = {"level": "WARNING"}
PAGE = "view=MINIMAL&page_size=256"
NAMES = ("align", "call", "qc")
PROJECTS = ("p1", "p2", "p3", "p4")
#: (job state, weight, destination, node, exit code): ended tasks (COMPLETE,
#: SYSTEM_ERROR, CANCELED), or active ones on a destination and node not this daemon's.
STATES = [
    ("ok", 75, "dock", "bench-node", 0),
    ("error", 10, "dock", "bench-node", 2),
    ("deleted", 10, "dock", "bench-node", None),
    ("queued", 3, "elsewhere", None, None),
    ("running", 2, "elsewhere", "another-node", None),
]


@dataclass
class SeededTasks:
    admin_key: str
    user_keys: dict[str, str]
    tasks: int
    seconds: float


@dataclass
class ListMeasured:
    scenario: str
    path: str
    who: str
    tasks: int
    requests: int
    median_ms: float
    p99_ms: float
    max_ms: float
    reference_median_ms: float
    reference_p99_ms: float
    other_busy_cores: float
    #: The daemon's CPU per request (user + system), and the reference's.
    daemon_cpu_ms: float
    reference_cpu_ms: float
    passed: bool | None  # None: informational


def task_doc(name: str, tags: dict[str, str]) -> dict[str, Any]:
    """A stored task document: what ``validate_task`` keeps of a small submitted task."""
    return validate_task(
        {
            "name": name,
            "executors": [{"image": IMAGE, "command": ["echo", "hi"]}],
            "resources": {"cpu_cores": 1},
            "tags": tags,
        }
    )


def seed_tasks(data_dir: Path, count: int, rng: random.Random) -> SeededTasks:
    """The store of part 3, written before the daemon starts (see the module docstring)."""
    started = time.perf_counter()
    store = fresh_store(data_dir)
    core, keys, admin_key = store.core, store.keys, store.admin_key
    owners = [store.admin_id, *store.ids.values()]
    try:
        weights = [w for _, w, *_ in STATES]
        now = datetime.now(UTC)
        jobs_table = Base.metadata.tables["jobs"]
        tasks_table = Base.metadata.tables["tes_tasks"]
        batch = 5000
        with core.engine.begin() as conn:
            for first in range(0, count, batch):
                job_rows: list[dict[str, Any]] = []
                task_rows: list[dict[str, Any]] = []
                for index in range(first, min(first + batch, count)):
                    state, _, destination, node, exit_code = rng.choices(STATES, weights)[0]
                    owner = rng.choice(owners)
                    name = f"{rng.choice(NAMES)}-{index}"
                    tags = {"project": rng.choice(PROJECTS), "run": str(index % 100)}
                    doc = task_doc(name, tags)
                    created = now - timedelta(seconds=rng.uniform(60, 90 * 86400))
                    started_at = created + timedelta(seconds=rng.uniform(0.05, 30))
                    updated = started_at + timedelta(seconds=rng.uniform(0.5, 600))
                    ended = state in ("ok", "error", "deleted")
                    job_id = new_id()
                    job_dir = data_dir / "jobs" / job_id[:2] / job_id
                    job_rows.append(
                        {
                            "id": job_id,
                            "uuid": str(uuid.uuid4()),
                            "user_id": owner,
                            "script_version_id": None,
                            "name": name,
                            "command": "",
                            "argv": ["python3", "tes_task.py", f"{job_dir}/tes/plan.json"],
                            "params": {},
                            "state": state,
                            "state_reason": "exit code 2" if state == "error" else None,
                            "exit_code": exit_code,
                            "runner": "local",
                            "destination": destination,
                            "node": node,
                            "home_node": node or "another-node",
                            "attempt": 0 if state == "queued" else 1,
                            "cores": 1,
                            "job_dir": str(job_dir),
                            "created_at": created,
                            "updated_at": updated,
                            "started_at": None if state == "queued" else started_at,
                            "finished_at": updated if ended else None,
                            "wall_s": (updated - started_at).total_seconds() if ended else None,
                        }
                    )
                    task_rows.append(
                        {
                            "job_id": job_id,
                            "user_id": owner,
                            "name": name,
                            "doc": doc,
                            "tags": tags,
                            "created_at": created,
                        }
                    )
                conn.execute(jobs_table.insert(), job_rows)
                conn.execute(tasks_table.insert(), task_rows)
        with core.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
    finally:
        core.close()
    return SeededTasks(admin_key, keys, count, time.perf_counter() - started)


def tes_session(key: str) -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {key}"
    return session


def deep_token(session: requests.Session, url: str, query: str, pages: int) -> str:
    """The page token *pages* pages down the listing of *query* (following the tokens)."""
    token = ""
    for _ in range(pages):
        path = f"{url}{TASKS_PATH}?{query}" + (f"&page_token={token}" if token else "")
        answer = session.get(path, timeout=60)
        if answer.status_code != 200:
            raise BenchError(f"GET {path}: {answer.status_code} {answer.text[:200]}")
        token = answer.json().get("next_page_token") or ""
        if not token:
            raise BenchError(f"the listing of {query!r} ended before {pages} pages")
    return token


def list_scenarios(
    session: requests.Session, user_session: requests.Session, url: str, tasks: int
) -> list[tuple[str, str, str, bool]]:
    """(name, path, who, gated). The deep pages are found by following tokens (untimed):
    page 101 of all tasks and page 26 of one user's (nearer with fewer seeded tasks)."""
    admin_pages = max(1, min(100, tasks // 256 // 2))
    user_pages = max(1, min(25, tasks // 4 // 256 // 2))
    admin_deep = deep_token(session, url, PAGE, admin_pages)
    user_deep = deep_token(user_session, url, PAGE, user_pages)
    tag = urlencode({"tag_key": "project", "tag_value": "p2"})
    rare_tag = urlencode({"tag_key": "run", "tag_value": "7"})
    return [
        ("admin, newest 256", f"{TASKS_PATH}?{PAGE}", "admin", True),
        ("user, newest 256 of theirs", f"{TASKS_PATH}?{PAGE}", "ann", True),
        ("admin, name_prefix=align", f"{TASKS_PATH}?{PAGE}&name_prefix=align", "admin", True),
        ("user, name_prefix=align", f"{TASKS_PATH}?{PAGE}&name_prefix=align", "ann", True),
        ("admin, tag project=p2", f"{TASKS_PATH}?{PAGE}&{tag}", "admin", True),
        ("user, tag project=p2", f"{TASKS_PATH}?{PAGE}&{tag}", "ann", True),
        (f"admin, page {admin_pages + 1} (page_token)",
         f"{TASKS_PATH}?{PAGE}&page_token={admin_deep}", "admin", True),
        (f"user, page {user_pages + 1} (page_token)",
         f"{TASKS_PATH}?{PAGE}&page_token={user_deep}", "ann", True),
        ("admin, tag run=7 (1 %)", f"{TASKS_PATH}?{PAGE}&{rare_tag}", "admin", False),
        # Queued jobs and running ones whose task program has not begun: 5 %.
        ("admin, state=QUEUED (5 %)", f"{TASKS_PATH}?{PAGE}&state=QUEUED", "admin", False),
        ("admin, newest 256 BASIC", f"{TASKS_PATH}?view=BASIC&page_size=256", "admin", False),
    ]  # fmt: skip


def measure_list(
    daemon: Daemon, seeded: SeededTasks, count: int, idle_s: float = 0.0
) -> list[ListMeasured]:
    """Every scenario of part 3 on *daemon* (started on the seeded store); with *idle_s*,
    each (and the reference) waits up to that long for other work on the machine to stop."""
    sessions = {"admin": tes_session(seeded.admin_key), "ann": tes_session(seeded.user_keys["ann"])}
    try:
        if idle_s > 0:
            wait_idle(daemon, idle_s)
        cpu = process_cpu_s(daemon.pid)
        reference, _ = time_gets(sessions["admin"], daemon.url + "/healthz", count)
        ref_cpu = (process_cpu_s(daemon.pid) - cpu) * 1000.0 / (count + WARMUP)
        ref_median, ref_p99 = statistics.median(reference), percentile(reference, 99)
        log(f"reference GET /healthz: median {ref_median:.2f} ms, p99 {ref_p99:.2f} ms")
        results = []
        for name, path, who, gated in list_scenarios(
            sessions["admin"], sessions["ann"], daemon.url, seeded.tasks
        ):
            if idle_s > 0:
                wait_idle(daemon, idle_s)
            load = other_load(daemon)
            cpu = process_cpu_s(daemon.pid)
            # Informational scenarios (a slow filter) get fewer requests: the run stays short.
            requests_made = count if gated else max(20, count // 5)
            samples, last = time_gets(sessions[who], daemon.url + path, requests_made)
            cpu_ms = (process_cpu_s(daemon.pid) - cpu) * 1000.0 / (requests_made + WARMUP)
            busy = load.stop()["other_cores"]
            shown = len(last.json()["tasks"])
            median, p99 = statistics.median(samples), percentile(samples, 99)
            log(
                f"{name}: {shown} tasks, median {median:.2f} ms, p99 {p99:.2f} ms, "
                f"daemon CPU {cpu_ms:.2f} ms/request"
            )
            results.append(
                ListMeasured(
                    scenario=name,
                    path=path if len(path) < 90 else path[:87] + "...",
                    who=who,
                    tasks=shown,
                    requests=len(samples),
                    median_ms=median,
                    p99_ms=p99,
                    max_ms=max(samples),
                    reference_median_ms=ref_median,
                    reference_p99_ms=ref_p99,
                    other_busy_cores=busy,
                    daemon_cpu_ms=cpu_ms,
                    reference_cpu_ms=ref_cpu,
                    passed=(p99 <= TARGET_LIST_P99_MS) if gated else None,
                )
            )
        return results
    finally:
        for session in sessions.values():
            session.close()
