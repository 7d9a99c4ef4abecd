"""bench/per_job_phases.py: py-spy samples of the daemon go to the right phase of a job."""

from __future__ import annotations

import concurrent.futures.thread
import inspect
from pathlib import Path

import pytest

from bench.per_job_phases import OTHER, PHASE_NAMES, attribute, breakdown_table

pytestmark = pytest.mark.engine_independent

ROOT = Path(__file__).resolve().parent.parent.parent
LOOP = (
    "_run_module_as_main (<frozen runpy>:198);main (jobferry/cli/__init__.py:74);"
    "BaseEventLoop._run_once (asyncio/base_events.py:1922);Handle._run (asyncio/events.py:80)"
)
WORKER = "Thread.run (threading.py:982);_worker (concurrent/futures/thread.py:{line})"


def _line_of(module: object, text: str) -> int:
    lines, first = inspect.getsourcelines(module)  # type: ignore[arg-type]
    return first + next(i for i, line in enumerate(lines) if text in line)


def _worker_line(text: str) -> int:
    return _line_of(concurrent.futures.thread._worker, text)


def _raw(tmp_path: Path, stacks: list[tuple[str, int]]) -> Path:
    path = tmp_path / "samples.raw"
    path.write_text("".join(f"{stack} {count}\n" for stack, count in stacks))
    return path


def test_a_pool_worker_waiting_for_work_is_idle_not_cpu(tmp_path: Path) -> None:
    waiting = WORKER.format(line=_worker_line("work_queue.get(block=True)"))
    running = WORKER.format(line=_worker_line("work_item.run()")) + (
        ";ExecutionService.claim_next (jobferry/services/execution.py:1)"
    )
    part = attribute(_raw(tmp_path, [(waiting, 90), (running, 10)]), ROOT)
    assert part.idle == 90
    assert part.on_cpu == 10
    assert part.samples["claim"] == 10


def test_the_end_of_a_job_is_end_even_though_it_writes_the_store(tmp_path: Path) -> None:
    end = (
        f"{LOOP};record_end (jobferry/daemon/endings.py:1);"
        "ExecutionService._write_finish (jobferry/services/execution.py:1);"
        "finish_job (jobferry/store/transitions.py:1);Session.execute (sqlalchemy/orm/session.py:1)"
    )
    claim = (
        f"{LOOP};Scheduler._rounds (jobferry/daemon/scheduler.py:1);"
        "claim_next_job (jobferry/store/transitions.py:1)"
    )
    part = attribute(_raw(tmp_path, [(end, 3), (claim, 2)]), ROOT)
    assert dict(part.samples) == {"end": 3, "claim": 2}


def test_a_submission_splits_into_http_store_writes_and_spawn(tmp_path: Path) -> None:
    handler = f"{LOOP};SubmitHandler.post (jobferry/api/wooey/jobs.py:1)"
    http = f"{handler};ApiMixin.send_json (jobferry/api/base.py:1)"
    store = (
        f"{handler};JobService._store (jobferry/services/jobs.py:1);"
        "insert_job (jobferry/store/records.py:1)"
    )
    spawn = (
        f"{handler};JobService._start_or_queue (jobferry/services/jobs.py:1);"
        "DirectStart.start (jobferry/daemon/dispatch.py:1);"
        "LocalRunner.submit (jobferry/runners/local.py:1)"
    )
    parse = f"{LOOP};HTTP1Connection._read_message (tornado/http1connection.py:1)"
    part = attribute(_raw(tmp_path, [(http, 1), (store, 2), (spawn, 4), (parse, 8)]), ROOT)
    assert dict(part.samples) == {"HTTP parse and auth": 9, "store writes": 2, "spawn": 4}


def test_unmatched_samples_are_other_and_named_by_their_innermost_jobferry_frame(
    tmp_path: Path,
) -> None:
    stack = (
        "Thread.run (threading.py:982);"
        "NewThing.work (jobferry/newpackage/thing.py:1);hexdigest (hashlib.py:1)"
    )
    part = attribute(_raw(tmp_path, [(stack, 5)]), ROOT)
    assert part.samples[OTHER] == 5
    assert part.unmatched == {"NewThing.work (jobferry/newpackage/thing.py)": 5}


def test_phase_shares_are_scaled_to_the_measured_cpu_per_job(tmp_path: Path) -> None:
    claim = f"{LOOP};Scheduler._rounds (jobferry/daemon/scheduler.py:1)"
    spawn = f"{LOOP};LocalRunner.submit (jobferry/runners/local.py:1)"
    part = attribute(_raw(tmp_path, [(claim, 1), (spawn, 3)]), ROOT)
    per_job = part.per_job_ms(8.0)
    assert per_job["claim"] == pytest.approx(2.0)
    assert per_job["spawn"] == pytest.approx(6.0)
    assert sum(per_job.values()) == pytest.approx(8.0)
    table = breakdown_table([("current", part, 8.0)])
    assert all(name in table for name in PHASE_NAMES)
