"""Every job state change, as conditional UPDATEs whose row count is checked.

This is the only module that writes ``jobs.state``. A change names the states
it may start from; when no row matches (the job moved on, or is terminal) it
raises ConflictError, so terminal states never change and a stale writer
cannot overwrite a newer attempt (writes after a claim are fenced by attempt).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from jobferry.errors import ConflictError
from jobferry.store.models import ACTIVE_STATES, TERMINAL_STATES, Job, JobState, utcnow


def transition_job(
    session: Session,
    job_id: str,
    from_states: Iterable[JobState],
    to_state: JobState,
    *,
    attempt: int | None = None,
    **values: Any,
) -> None:
    """Move one job from one of *from_states* to *to_state*, setting *values*.

    With *attempt*, the update only applies to that attempt (fencing).
    Raises ConflictError when the job is not in an allowed state.
    """
    allowed = [s.value for s in from_states if s not in TERMINAL_STATES]
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.state.in_(allowed))
        .values(state=to_state.value, updated_at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    )
    if attempt is not None:
        stmt = stmt.where(Job.attempt == attempt)
    result = session.execute(stmt)
    if result.rowcount != 1:  # type: ignore[attr-defined]
        current = session.execute(select(Job.state).where(Job.id == job_id)).scalar()
        raise ConflictError(
            f"job {job_id} is {current or 'unknown'}; it cannot become {to_state.value}",
            job_id=job_id,
            state=current,
        )


def update_running_job(session: Session, job_id: str, attempt: int, **values: Any) -> None:
    """Record facts about a running attempt (handle, external id) without changing state."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempt == attempt, Job.state == JobState.RUNNING.value)
        .values(updated_at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise ConflictError(f"job {job_id} attempt {attempt} is no longer running")


def claim_queued_jobs(
    session: Session, *, runner: str, node: str, limit: int, now: datetime | None = None
) -> Sequence[Job]:
    """Claim up to *limit* queued jobs for *runner* on *node*, best priority then oldest.

    One statement; each claimed job's attempt is incremented. On SQLite it is a
    conditional UPDATE (SQLite serialises writers, so two claimers can never take
    the same row). On PostgreSQL the candidates are picked in a CTE with
    ``FOR UPDATE SKIP LOCKED``: concurrent claimers (other daemons, other threads)
    skip the rows another one is taking instead of queueing behind it, and the
    CTE keeps the planner from re-evaluating the LIMIT per row (the "optimisation
    fence" Oban relies on), so a claim never takes more than *limit* jobs.
    """
    if limit <= 0:
        return []
    now = now or utcnow()
    picked = (
        select(Job.id)
        .where(Job.state == JobState.QUEUED.value, Job.runner == runner)
        .order_by(Job.priority.desc(), Job.created_at, Job.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        fenced = picked.with_for_update(skip_locked=True).cte("claim_candidates")
        candidates = select(fenced.c.id).scalar_subquery()
    else:
        candidates = picked.scalar_subquery()
    stmt = (
        update(Job)
        .where(Job.id.in_(candidates), Job.state == JobState.QUEUED.value)
        .values(
            state=JobState.RUNNING.value,
            node=node,
            attempt=Job.attempt + 1,
            started_at=now,
            updated_at=now,
        )
        .returning(Job)
        .execution_options(synchronize_session=False)
    )
    jobs = list(session.execute(stmt).scalars().all())
    jobs.sort(key=lambda j: (-j.priority, j.created_at, j.id))
    return jobs


def requeue_job(session: Session, job_id: str, attempt: int, reason: str) -> None:
    """Put a claimed job that never started back in the queue (fenced by attempt)."""
    transition_job(
        session,
        job_id,
        [JobState.RUNNING],
        JobState.QUEUED,
        attempt=attempt,
        node=None,
        started_at=None,
        handle=None,
        external_id=None,
        state_reason=reason,
    )


def finish_job(
    session: Session,
    job_id: str,
    attempt: int,
    state: JobState,
    *,
    reason: str | None,
    exit_code: int | None,
    finished_at: datetime,
    metrics: dict[str, Any],
) -> None:
    """End a running (or being-cancelled) attempt in a terminal *state*."""
    assert state in TERMINAL_STATES
    transition_job(
        session,
        job_id,
        [JobState.RUNNING, JobState.DELETING],
        state,
        attempt=attempt,
        state_reason=reason,
        exit_code=exit_code,
        finished_at=finished_at,
        **metrics,
    )


def mark_cancelled(session: Session, job_id: str) -> JobState:
    """Cancel a job: a queued one becomes deleted at once, a running one deleting.

    Returns the new state. Raises ConflictError for terminal jobs.
    """
    state = session.execute(select(Job.state).where(Job.id == job_id)).scalar()
    if state in (JobState.NEW.value, JobState.QUEUED.value):
        transition_job(
            session,
            job_id,
            [JobState.NEW, JobState.QUEUED],
            JobState.DELETED,
            state_reason="cancelled before it started",
            finished_at=utcnow(),
        )
        return JobState.DELETED
    transition_job(session, job_id, [JobState.RUNNING], JobState.DELETING, state_reason="cancelled")
    return JobState.DELETING


def jobs_in_flight(session: Session, *, node: str) -> Sequence[Job]:
    """Jobs this node had running or being cancelled (for recovery after a restart)."""
    stmt = select(Job).where(
        Job.node == node, Job.state.in_([JobState.RUNNING.value, JobState.DELETING.value])
    )
    return session.execute(stmt).scalars().all()


def is_active(state: str) -> bool:
    return state in {s.value for s in ACTIVE_STATES}
