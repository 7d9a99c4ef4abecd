"""A TES task's requeued attempt, on a real store (no daemon): its log says why it ended
and where it ran, whichever requeue site put it back (``endings.requeue``), and a
runner's reason for the last attempt's end stays in that attempt's log.

The services come from ``container.build`` as in ``test_tes_service`` (whose helpers
are reused): ``build`` gives the execution and node services ``tes_end.TASK_ENDS``.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select, update

from jobferry.runners.base import RunState, RunStatus
from jobferry.services.container import Services
from jobferry.services.core import Principal
from jobferry.services.nodes import read_db_now
from jobferry.services.ports import Requeue
from jobferry.services.tes_end import TASK_ENDS, may_run_task
from jobferry.services.tes_plan import TES_TASK_PROGRAM, run_argv, state_path
from jobferry.store.models import Job, Node, NodeState, TesTask
from tests.unit.test_tes_service import make_services, task

pytestmark = [pytest.mark.timeout(60)]


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    built = make_services(tmp_path, {"enabled": True, "destination": "dock"})
    yield built
    built.core.close()


@pytest.fixture
def alice(services: Services) -> Principal:
    user, _ = services.auth.create_user("alice")
    return Principal(user.id, user.username, False)


def _ran(job_dir: Path, attempt: int, node: str, host: str) -> None:
    """Attempt *attempt*'s state file as its program left it: cut off while running."""
    path = state_path(job_dir, attempt)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"phase": "RUNNING", "start_time": "2026-12-03T11:00:00.000000Z", "end_time": None}
    where = {"metadata": {"node": node, "host": host}}
    path.write_text(json.dumps({"logs": [], "outputs": [], "system_logs": [], **body, **where}))


def _notes(services: Services, task_id: str) -> list[Any]:
    with services.core.sessions.read() as connection:
        notes = connection.execute(select(TesTask.notes).where(TesTask.job_id == task_id))
        return list(notes.scalar() or [])


def test_a_node_death_requeue_tags_attempt_1s_log_with_its_reason_and_node(
    services: Services, alice: Principal
) -> None:
    """The reaper (``NodeService.reap``) requeues the task of a dead node n1: attempt 1's
    log says why it ended and on which node and host it ran; attempt 2's says its own."""
    task_id = services.tes.create(alice, task(resources={"backend_parameters": {"x": "y"}}))
    execution = services.callbacks.execution
    first = execution.claim_next(["dock"], None).job
    assert first is not None
    job_dir = Path(first.spec.job_dir)
    _ran(job_dir, 1, "n1", "host-1")
    with services.core.sessions.begin() as session:  # the attempt is n1's, and n1 is silent
        then = read_db_now(session) - timedelta(seconds=600)
        session.add(Node(name="n1", state=NodeState.UP.value, heartbeat_at=then))
        session.execute(update(Job).where(Job.id == task_id).values(node="n1"))
    done = services.nodes.reap(adopt_runners=set())
    assert done.dead == ["n1"] and done.requeued == [task_id]

    queued = services.tes.get(alice, task_id, "FULL")
    (log,) = queued["logs"]
    reason = f"attempt 1 ended: requeued: node n1 died (attempt 1 of {_max(services)})"
    assert log["system_logs"][-1] == reason
    assert log["system_logs"][0].startswith("backend parameters ignored")  # task-wide
    assert not any("did not end" in line for line in log["system_logs"])
    assert log["metadata"] == {
        "destination": "dock",
        "attempt": "1",
        "node": "n1",
        "host": "host-1",
    }

    second = execution.claim_next(["dock"], None).job
    assert second is not None and second.attempt == 2
    _ran(job_dir, 2, services.core.node_name, "host-2")
    status = RunStatus(RunState.EXITED, exit_code=0, finished_at=time.time())
    execution.finish(second, status)
    shutil.rmtree(job_dir)  # the store keeps it all: retention removed the files
    ended = services.tes.get(alice, task_id, "FULL")
    one, two = ended["logs"]
    assert one == log
    assert two["metadata"]["node"] == services.core.node_name
    assert two["metadata"]["host"] == "host-2" and two["metadata"]["attempt"] == "2"
    assert not any("requeued" in line for line in two["system_logs"])


def _max(services: Services) -> int:
    return services.core.config.jobs.max_attempts


def test_a_runner_that_cannot_take_the_task_requeues_it_with_its_reason_in_that_attempt(
    services: Services, alice: Principal
) -> None:
    """``ExecutionService.requeue`` (the runner was unavailable): the attempt's program
    never began, its log still says why it ended and which node had claimed it."""
    task_id = services.tes.create(alice, task())
    execution = services.callbacks.execution
    first = execution.claim_next(["dock"], None).job
    assert first is not None
    execution.requeue(first, "requeued: runner local is unavailable")
    assert _notes(services, task_id) == [
        {
            "attempt": 1,
            "node": services.core.node_name,
            "log": "attempt 1 ended: requeued: runner local is unavailable",
        }
    ]
    second = execution.claim_next(["dock"], None).job
    assert second is not None
    execution.requeue(second, "requeued: never started")
    logs = services.tes.get(alice, task_id, "FULL")["logs"]
    assert [log["system_logs"] for log in logs] == [
        ["attempt 1 ended: requeued: runner local is unavailable"],
        ["attempt 2 ended: requeued: never started"],
    ]
    assert [log["metadata"]["node"] for log in logs] == [services.core.node_name] * 2


def test_a_requeued_job_that_is_no_task_costs_no_query_and_changes_no_task(
    services: Services, alice: Principal
) -> None:
    task_id = services.tes.create(alice, task())
    assert not may_run_task(["python3", "/srv/scripts/align.py"]) and not may_run_task([])
    assert may_run_task(["python3", str(TES_TASK_PROGRAM), "plan.json"])
    assert may_run_task(["python3", "/scratch/job/script/tes_task.py", "plan.json"])  # slurm's
    run = run_argv([sys.executable, str(TES_TASK_PROGRAM), "plan.json"])  # as spawned
    assert run[1:3] == ["-I", "-S"] and may_run_task(run)
    before = _notes(services, task_id)
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    why = Requeue("requeued: never started", "n1")
    event.listen(services.core.engine, "before_cursor_execute", count)
    try:
        with services.core.sessions.begin() as session:
            TASK_ENDS.requeued(session, "other", 1, ["true"], why)
            assert statements == []  # not the task program: nothing is read
            # The task program's argv but no task row (a stray copy): nothing is noted.
            TASK_ENDS.requeued(session, "other", 1, ["py", str(TES_TASK_PROGRAM)], why)
    finally:
        event.remove(services.core.engine, "before_cursor_execute", count)
    assert _notes(services, task_id) == before


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        (RunState.KILLED, "out of memory (limit 512 MiB)"),
        (RunState.KILLED, "walltime exceeded (60s)"),
    ],
)
def test_a_runners_reason_for_the_end_stays_in_the_last_attempts_log(
    services: Services, alice: Principal, state: RunState, reason: str
) -> None:
    """The runner ended the task program (out of memory, walltime): the task is a
    SYSTEM_ERROR whose last attempt's log names the runner's reason, also once the
    job's files are gone."""
    task_id = services.tes.create(alice, task())
    execution = services.callbacks.execution
    first = execution.claim_next(["dock"], None).job
    assert first is not None
    _ran(Path(first.spec.job_dir), 1, services.core.node_name, "host-1")
    execution.finish(first, RunStatus(state, reason=reason, finished_at=time.time()))
    shutil.rmtree(first.spec.job_dir)
    full = services.tes.get(alice, task_id, "FULL")
    assert full["state"] == "SYSTEM_ERROR"
    assert full["logs"][-1]["system_logs"][-1] == reason
