"""A TES task's end, kept: its final TES state and its attempts' logs, in ``tes_tasks``.

While a task runs, ``GET /tasks/{id}`` reads its attempts' state files (the task
program rewrites its attempt's file after every step, so an executor's log shows as
soon as it ends). Those files live in the job's directory, which retention removes
and which a node without the shared file system cannot read. So when the job's end
is recorded, ``record_task_end`` (the ``ports.JobEnded`` the composition roots give
``ExecutionService``) writes the TES state the task ended in and every attempt's
state file into the task's row, in the transaction that records the end: there is
no moment when the job has ended but its task has not, and a store that refuses the
end refuses both (the daemon retries them together).

Every job end passes here: a job that is no TES task costs one ``stat`` of its
``tes`` directory (the plan's, made at create time). The files are small: executor
outputs are tails (``tes_plan.TAIL_BYTES``), output file logs are capped
(``tes_plan.MAX_KEPT_OUTPUTS``).

An attempt that is requeued (its node died, its runner could not take it) ends too,
and its task log must say why, though its program never wrote it (it was killed, or
never began) and the job's ``state_reason`` is overwritten by the next attempt:
``TaskEnds.requeued`` appends a note tagged with the attempt to ``tes_tasks.notes``
in the requeue's transaction (``{"attempt": N, "node": ..., "log": ...}``; plain
strings there are task-wide, ``tes_views.attempt_notes``). Every requeue passes here:
a job whose argv is not the task program's costs nothing more.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Table, select, update
from sqlalchemy.orm import Session

from jobferry.services import tes_plan
from jobferry.services.ports import EndedAttempt, Requeue
from jobferry.services.tes_doc import task_state
from jobferry.store.models import JobState, TesTask

_TASKS: Table = TesTask.__table__  # type: ignore[assignment]


def task_dir(claimed: EndedAttempt) -> Path | None:
    """The job's directory (a wrapper's callback knows only its work directory)."""
    spec = claimed.spec
    if spec.job_dir:
        return Path(spec.job_dir)
    return Path(spec.workdir).parent if spec.workdir else None


def record_task_end(
    session: Session | Connection, claimed: EndedAttempt, state: JobState, exit_code: int | None
) -> None:
    """Keep a TES task's final state and logs with its job's end (``ports.JobEnded``);
    nothing for any other job."""
    job_dir = task_dir(claimed)
    if job_dir is None or not (job_dir / tes_plan.TES_DIR).is_dir():
        return
    files = tes_plan.attempt_files(job_dir, claimed.attempt)
    last = files[-1] if files else None
    final = task_state(state.value, exit_code, last.get("phase") if last else None)
    session.execute(
        update(_TASKS)
        .where(_TASKS.c.job_id == claimed.job_id)
        .values(final_state=final, final_logs=files)
    )


def may_run_task(argv: Sequence[Any]) -> bool:
    """Whether *argv* may be a TES task's: the task program as stored (``tes_plan.
    runs_task``), as run (``tes_plan.run_argv``: options first, maybe its bytecode
    ``tes_task.cpython-3XY.pyc``) or a job's copy of it (a slurm destination's argv,
    ``services.run_spec``). A cheap filter: ``tes_tasks``' row is the truth."""
    stem = tes_plan.TES_TASK_PROGRAM.stem + "."
    return any(Path(str(word)).name.startswith(stem) for word in argv[1:4])


def record_requeue(session: Session, job_id: str, attempt: int, why: Requeue) -> None:
    """Tag a note with the requeued attempt: why it ended and on which node."""
    notes = session.execute(select(_TASKS.c.notes).where(_TASKS.c.job_id == job_id)).scalar()
    if notes is None:
        return  # not a TES task after all
    entry = {"attempt": attempt, "log": f"attempt {attempt} ended: {why.reason}"}
    if why.node:
        entry["node"] = why.node
    stmt = update(_TASKS).where(_TASKS.c.job_id == job_id).values(notes=[*notes, entry])
    session.execute(stmt)


class TaskEnds:
    """The ``ports.JobEnded`` the composition roots give ``ExecutionService`` and
    ``NodeService``: a task's end (``record_task_end``) and its attempts' requeues."""

    def __call__(
        self,
        session: Session | Connection,
        claimed: EndedAttempt,
        state: JobState,
        exit_code: int | None,
    ) -> None:
        record_task_end(session, claimed, state, exit_code)

    def requeued(
        self, session: Session, job_id: str, attempt: int, argv: Sequence[Any], why: Requeue
    ) -> None:
        if may_run_task(argv):
            record_requeue(session, job_id, attempt, why)


TASK_ENDS = TaskEnds()
