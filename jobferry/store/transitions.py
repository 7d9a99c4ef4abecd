"""Every job state change, as conditional UPDATEs whose row count is checked.

This is the only module that writes ``jobs.state``. A change names the states
it may start from; when no row matches (the job moved on, or is terminal) it
raises ConflictError, so terminal states never change and a stale writer
cannot overwrite a newer attempt (writes after a claim are fenced by attempt).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Connection, Update, bindparam, func, or_, select, update
from sqlalchemy.orm import Session

from jobferry.errors import ConflictError
from jobferry.store import fair_claim
from jobferry.store.dbapi import RawStatement
from jobferry.store.models import TERMINAL_STATES, Job, JobState, utcnow
from jobferry.store.notify import notify_queued
from jobferry.store.records import HOLDING, JOBS, STATE, in_fixed
from jobferry.store.records import running_per_destination as running_per_destination


def transition_job(
    session: Session,
    job_id: str,
    from_states: Iterable[JobState],
    to_state: JobState,
    *,
    attempt: int | None = None,
    on_node: str | None = None,
    **values: Any,
) -> None:
    """Move one job from one of *from_states* to *to_state*, setting *values*.

    With *attempt* (and *on_node*), the update only applies to that attempt (on that
    node): fencing, so a node declared dead cannot overwrite a newer attempt.
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
    if on_node is not None:
        stmt = stmt.where(Job.node == on_node)
    result = session.execute(stmt)
    if result.rowcount != 1:  # type: ignore[attr-defined]
        current = session.execute(select(Job.state).where(Job.id == job_id)).scalar()
        raise ConflictError(
            f"job {job_id} is {current or 'unknown'}; it cannot become {to_state.value}",
            job_id=job_id,
            state=current,
        )


def update_running_job(
    session: Session, job_id: str, attempt: int, *, on_node: str | None = None, **values: Any
) -> None:
    """Record facts about a running attempt (handle, external id) without changing state."""
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.attempt == attempt, Job.state == JobState.RUNNING.value)
        .values(updated_at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    )
    if on_node is not None:
        stmt = stmt.where(Job.node == on_node)
    result = session.execute(stmt)
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


def requeue_job(
    session: Session, job_id: str, attempt: int, reason: str, *, on_node: str | None = None
) -> None:
    """Put a claimed job back in the queue (fenced by attempt, and node if given); the
    next claim counts a new attempt."""
    transition_job(
        session,
        job_id,
        [JobState.RUNNING],
        JobState.QUEUED,
        attempt=attempt,
        on_node=on_node,
        node=None,
        started_at=None,
        handle=None,
        external_id=None,
        state_reason=reason,
    )
    notify_queued(session)


#: The columns a job's end sets besides its state (``finish_job``).
FINISH_METRICS = ("wall_s", "cpu_user_s", "cpu_sys_s", "peak_rss_kb")


def attempt_update(fenced_by_node: bool) -> Update:
    """An UPDATE of one job's running (or being-cancelled) attempt, fenced by attempt,
    and by node if *fenced_by_node*: parameters ``job_id``, ``fence_attempt`` and
    ``fence_node``. For statements built once (``functools.lru_cache``)."""
    c = JOBS.c
    stmt = update(JOBS).where(
        c.id == bindparam("job_id"),
        in_fixed(c.state, HOLDING),
        c.attempt == bindparam("fence_attempt"),
    )
    if fenced_by_node:
        stmt = stmt.where(c.node == bindparam("fence_node"))
    return stmt


@functools.lru_cache(maxsize=2)
def _finish_sql(fenced_by_node: bool) -> RawStatement:
    """``finish_job``'s statement, built once and run on the DB-API cursor
    (``store.dbapi``): it runs at the end of every job."""
    return RawStatement(
        attempt_update(fenced_by_node).values(
            state=bindparam("to_state"),
            updated_at=bindparam("now"),
            state_reason=bindparam("reason"),
            exit_code=bindparam("code"),
            finished_at=bindparam("finished"),
            **{name: bindparam(f"metric_{name}") for name in FINISH_METRICS},
        )
    )


def finish_job(
    session: Session | Connection,
    job_id: str,
    attempt: int,
    state: JobState,
    *,
    reason: str | None,
    exit_code: int | None,
    finished_at: datetime,
    metrics: dict[str, Any],
    on_node: str | None = None,
) -> None:
    """End a running (or being-cancelled) attempt in a terminal *state* (in *session*'s
    transaction, or on a Core connection's: ``SessionFactory.transaction``).

    *metrics* may set the ``FINISH_METRICS`` columns (missing ones become NULL).
    Raises ConflictError when the attempt is no longer running (on *on_node*).
    """
    assert state in TERMINAL_STATES
    unknown = set(metrics) - set(FINISH_METRICS)
    if unknown:
        raise ValueError(f"not a job metric: {sorted(unknown)}")
    params: dict[str, Any] = {
        "job_id": job_id,
        "fence_attempt": attempt,
        "fence_node": on_node,
        "to_state": state.value,
        "now": utcnow(),
        "reason": reason,
        "code": exit_code,
        "finished": finished_at,
        **{f"metric_{name}": metrics.get(name) for name in FINISH_METRICS},
    }
    conn = _connection(session)
    if _finish_sql(on_node is not None).rowcount(conn, params) != 1:
        current = STATE.scalar(conn, params)
        raise ConflictError(
            f"job {job_id} is {current or 'unknown'}; it cannot become {state.value}",
            job_id=job_id,
            state=current,
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
    stmt = select(Job).where(Job.node == node, Job.state.in_(HOLDING))
    return session.execute(stmt).scalars().all()


def adopt_job(session: Session, job_id: str, *, attempt: int, from_node: str, to_node: str) -> bool:
    """Move a running attempt (state, attempt and handle kept) from a dead node to
    *to_node* (a Slurm job outlives the node that submitted it). False if it moved on."""
    result = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.node == from_node,
            Job.attempt == attempt,
            Job.state.in_(HOLDING),
        )
        .values(node=to_node, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class NodeResources:
    """The node's cores, memory and GPUs a claim must fit in: ``total`` (could the job
    ever run here?) and ``free`` (does it fit now?). None for destinations that use
    no node resources (Slurm)."""

    total_cores: int
    total_memory_mb: int
    total_gpus: int
    free_cores: int
    free_memory_mb: int
    free_gpus: int


@dataclass(frozen=True, slots=True)
class ClaimedRow:
    """What starting a claimed job needs of its row (attempt incremented): a plain
    record, as an ORM ``Job`` for every claim cost more than the claim's statements."""

    id: str
    attempt: int
    runner: str
    destination: str
    job_dir: str
    argv: list[Any]
    cores: int
    gpus: int
    memory_mb: int | None
    walltime_s: float | None
    home_node: str | None
    created_at: datetime
    runner_options: dict[str, Any] | None  # a TES task's Slurm partition, qos


Names = tuple[str, ...]
_CLAIMED_COLUMNS = tuple(ClaimedRow.__dataclass_fields__)  # the claim's RETURNING


@dataclass(frozen=True)
class NextJob:
    """What ``claim_next_job`` found: the job it claimed, or why it claimed none."""

    #: The claimed job (its attempt incremented).
    job: ClaimedRow | None = None
    #: Nothing was claimed, yet a job waits: the head job is reserved (it does not
    #: fit what is free now). False with no job: nothing is queued for the claim.
    held_back: bool = False
    #: With a job: whether another is queued behind it (SQLite: ``fair_claim`` sees);
    #: None: not known (PostgreSQL locks what it reads, one row): ask ``more_queued``.
    more: bool | None = None


#: ``claim_next_job`` found nothing queued for it.
NOTHING_QUEUED = NextJob()
#: ``claim_next_job`` claimed nothing: the head job is reserved until it fits.
HEAD_RESERVED = NextJob(held_back=True)


class _ClaimSql(NamedTuple):
    """A claim's statements, each run on the DB-API cursor (``store.dbapi``)."""

    candidate: RawStatement
    claim: RawStatement
    more: RawStatement
    peeks: bool  # SQLite: the candidate is read by ``walk``, which tells ``NextJob.more``
    walk: fair_claim.Walk


@functools.lru_cache(maxsize=256)
def _claim_sql(
    dialect: str, destinations: tuple[str, ...], fitted: bool, homed: bool, anywhere: Names
) -> _ClaimSql:
    """The claim's statements for one shape of claim, built once.

    A claim runs for every job on its way from submission to running, so its
    statements are built once per shape (the values differ only in bound
    parameters) instead of for every claim: building them cost more than running
    them. Core statements on the table, not the ORM entity, for the same reason,
    and run straight on the DB-API cursor (``store.dbapi``): SQLAlchemy's execution
    of a built statement still cost three times the statement itself.
    """
    c = JOBS.c
    memory = func.coalesce(c.memory_mb, 0)
    conditions: list[Any] = [c.state == JobState.QUEUED.value]
    if homed:
        # No shared filesystem: a job runs where its directory is, unless its
        # destination moves its files over HTTP (staging: remote).
        conditions.append(
            or_(
                c.home_node == bindparam("home"),
                c.home_node.is_(None),
                in_fixed(c.destination, anywhere),
            )
        )
    if fitted:
        conditions += [
            c.cores <= bindparam("total_cores"),
            memory <= bindparam("total_memory_mb"),
            c.gpus <= bindparam("total_gpus"),
        ]
    walk = fair_claim.walk_sql(conditions)  # SQLite's candidate (``store.fair_claim``)
    conditions.append(in_fixed(c.destination, destinations))
    # Fair share between users: within a priority, the user with the fewest jobs
    # running now goes first (round-robin as jobs start), then the oldest job.
    running = (
        select(c.user_id.label("user_id"), func.count().label("n"))
        .where(in_fixed(c.state, HOLDING))
        .group_by(c.user_id)
        .subquery("running_per_user")
    )
    candidate = (
        select(c.id, c.cores, memory, c.gpus)
        .outerjoin(running, running.c.user_id == c.user_id)
        .where(*conditions)
        .order_by(c.priority.desc(), func.coalesce(running.c.n, 0), c.created_at, c.id)
    )
    peeks = dialect != "postgresql"  # SQLite: ``walk`` reads the candidate instead
    candidate = candidate.limit(1).with_for_update(of=JOBS, skip_locked=True)
    claim = (
        update(JOBS)
        .where(c.id == bindparam("job_id"), c.state == JobState.QUEUED.value)
        .values(
            state=JobState.RUNNING.value,
            node=bindparam("claim_node"),
            attempt=c.attempt + 1,
            started_at=bindparam("claim_now"),
            updated_at=bindparam("claim_now"),
        )
        .returning(*(c[name] for name in _CLAIMED_COLUMNS))
    )
    more = select(c.id).where(*conditions).limit(1)
    return _ClaimSql(RawStatement(candidate), RawStatement(claim), RawStatement(more), peeks, walk)


def _connection(session: Session | Connection) -> Connection:
    return session if isinstance(session, Connection) else session.connection()


def _claim_statements(
    conn: Connection,
    destinations: Sequence[str],
    fit: NodeResources | None,
    home: str | None,
    anywhere: Sequence[str],
) -> _ClaimSql:
    dialect = conn.dialect.name
    shape = (tuple(destinations), fit is not None, home is not None, tuple(anywhere))
    return _claim_sql(dialect, *shape)


def _claim_params(fit: NodeResources | None, home: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {"home": home}
    if fit is not None:
        params.update(
            total_cores=fit.total_cores,
            total_memory_mb=fit.total_memory_mb,
            total_gpus=fit.total_gpus,
        )
    return params


def claim_next_job(
    session: Session | Connection,
    *,
    destinations: Sequence[str],
    node: str,
    fit: NodeResources | None = None,
    home: str | None = None,
    anywhere: Sequence[str] = (),
    now: datetime | None = None,
) -> NextJob:
    """Claim the next queued job of *destinations* for *node*: best priority, then the
    user with the fewest running jobs (fair share), then oldest.

    With *fit*, only jobs that could ever run on this node are considered, and
    the head job among them is *reserved*: if it does not fit what is free now,
    nothing is claimed (``HEAD_RESERVED``), so a stream of small jobs cannot
    starve a large one (the node drains until the large one fits). Returns the
    claimed job (``NextJob.job``: a ``ClaimedRow``, its attempt incremented; on
    SQLite with ``NextJob.more``), or ``NOTHING_QUEUED``. On PostgreSQL the
    candidate row is locked with ``FOR UPDATE SKIP LOCKED`` so concurrent claimers
    skip it; on SQLite writers are serialised and ``fair_claim`` reads the candidate.
    Either way the claim is a conditional UPDATE whose row count is checked. With
    *home* (nodes share no filesystem), only jobs whose
    directory is on *home* are taken, or jobs of the *anywhere* destinations
    (remote staging).
    """
    if not destinations:
        return NOTHING_QUEUED
    conn = _connection(session)
    sql = _claim_statements(conn, destinations, fit, home, anywhere)
    params = _claim_params(fit, home)
    claim = {"claim_node": node, "claim_now": now or utcnow()}
    for _ in range(5):  # a candidate taken between our read and our update: try the next
        more: bool | None = None
        if sql.peeks:
            found = fair_claim.candidate(conn, sql.walk, destinations, params)
            if found is None:
                return NOTHING_QUEUED
            job_id, cores, memory_mb, gpus, more = found
        else:
            rows = sql.candidate.all(conn, params)
            if not rows:
                return NOTHING_QUEUED
            job_id, cores, memory_mb, gpus = rows[0]
        if fit is not None and (
            cores > fit.free_cores or memory_mb > fit.free_memory_mb or gpus > fit.free_gpus
        ):
            return HEAD_RESERVED
        claimed = sql.claim.first(conn, {**claim, "job_id": job_id})
        if claimed is not None:
            return NextJob(ClaimedRow(*claimed), more=more)
    return NOTHING_QUEUED


def more_queued(
    session: Session | Connection,
    *,
    destinations: Sequence[str],
    fit: NodeResources | None = None,
    home: str | None = None,
    anywhere: Sequence[str] = (),
) -> bool:
    """Whether a queued job of *destinations* that this node could run is left (after a
    claim in the same transaction). Reads the claim index only and locks nothing."""
    if not destinations:
        return False
    conn = _connection(session)
    sql = _claim_statements(conn, destinations, fit, home, anywhere)
    return sql.more.first(conn, _claim_params(fit, home)) is not None
