"""Nodes: the daemons sharing one store. Registration, heartbeat, drain, and the reaper.

Every daemon is a node (``nodes`` row, keyed by ``node.name``). At start it
registers (``incarnation + 1``, state ``up``, ``drained`` kept as an admin left
it); every ``node.heartbeat_s`` it writes ``heartbeat_at`` with the **database's**
clock (never its own, so skewed hosts agree) and what it has left; a clean stop
leaves it ``stopped``.

The reaper runs on every node's heartbeat round, one node at a time (PostgreSQL:
``pg_try_advisory_xact_lock`` held by the reaping transaction; SQLite serialises
writers anyway). It declares nodes silent for ``node.dead_after_s`` **dead**, then
recovers the in-flight jobs of dead nodes: local and Docker jobs are requeued as a
new attempt (up to ``jobs.max_attempts``, then they end ``error``), jobs being
cancelled end ``deleted``, Slurm jobs (which outlive the node that submitted them)
are adopted by the reaper. Every write is conditional on the job still being in
that state, on that node, at that attempt, so it can never undo a newer change.

Database times are naive UTC (``models.UTCDateTime``): ``timezone('utc', now())`` on
PostgreSQL, ``strftime(..., 'now')`` (UTC) on SQLite, in the column's text format.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, insert, select, type_coerce, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from jobferry.errors import AdminRequiredError, ConflictError, NotFoundError
from jobferry.services import endings
from jobferry.services.core import Core, Principal
from jobferry.services.logfields import job_fields
from jobferry.services.ports import JobEnded, no_job_ended
from jobferry.store import transitions
from jobferry.store.engine import is_postgres
from jobferry.store.models import Job, JobState, Node, NodeState, UTCDateTime, utcnow

logger = logging.getLogger(__name__)

#: Key of the PostgreSQL advisory lock whose holder reaps this round ("jobferry" in hex-ish).
REAPER_LOCK_KEY = 0x6A6F6266_65727279 & 0x7FFFFFFFFFFFFFFF
#: Runners whose jobs outlive the node that started them: adopted, never requeued.
ADOPTED_RUNNERS = frozenset({"slurm"})
#: Node states whose heartbeat is watched (the others were declared or said so).
LIVE_STATES = (NodeState.UP.value, NodeState.DRAINING.value)


def db_now(bind: Session) -> ColumnElement[datetime]:
    """The database's current time as naive UTC, as a SQL expression of the column's type."""
    if is_postgres(bind):
        expr: ColumnElement[Any] = func.timezone("utc", func.now())
    else:
        expr = func.strftime("%Y-%m-%d %H:%M:%f000", "now")
    return type_coerce(expr, UTCDateTime())


def read_db_now(session: Session) -> datetime:
    """The database's current time (aware UTC)."""
    value = session.execute(select(db_now(session))).scalar_one()
    assert isinstance(value, datetime)
    return value


@dataclass(frozen=True)
class NodeUsage:
    """What a node has left for local and Docker jobs, and how many jobs it follows
    (published in its row at each heartbeat)."""

    cores: int
    memory_mb: int
    gpus: int
    running_jobs: int


@dataclass(frozen=True)
class HeartbeatReport:
    """What a heartbeat learned about this node's own row."""

    drained: bool = False
    #: Another node had declared this one dead (now it is up again).
    was_dead: bool = False
    #: A newer start of a daemon with this node name owns the row: this one must stop.
    superseded_by_pid: int | None = None
    superseded: bool = False
    #: The row had gone (deleted by hand): registered again, with this incarnation.
    reregistered: int | None = None


@dataclass
class Reaped:
    """What one reaper round did."""

    dead: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    #: False when another node held the reaper lock (this round was skipped).
    ran: bool = True

    def __bool__(self) -> bool:
        return bool(self.dead or self.requeued or self.failed or self.deleted or self.adopted)


def _age_s(heartbeat_at: datetime | None, now: datetime) -> float | None:
    if heartbeat_at is None:
        return None
    return round(max(0.0, (now - heartbeat_at).total_seconds()), 3)


class NodeService:
    def __init__(self, core: Core, *, on_end: JobEnded = no_job_ended) -> None:
        # on_end: the face's record of why a dead node's attempt ended (its requeue).
        self.core, self.on_end = core, on_end
        self._url = ""

    @property
    def name(self) -> str:
        return self.core.node_name

    # --- this node's own row --------------------------------------------------------------

    def register(self, *, url: str, free: NodeUsage | None = None) -> int:
        """Upsert this node's row as a new start (state up); return its incarnation."""
        self._url = url = url or self._url
        cap = self.core.node_capacity
        node_cfg = self.core.config.node
        cores, memory, gpus = cap.cores or 1, cap.memory_mb or 0, cap.gpus or 0
        free = free or NodeUsage(cores, memory, gpus, 0)
        values: dict[str, Any] = {
            "url": node_cfg.url or url,
            "labels": dict(node_cfg.labels),
            "cores_total": cores,
            "memory_mb_total": memory,
            "gpus_total": gpus,
            "cores_free": free.cores,
            "memory_mb_free": free.memory_mb,
            "gpus_free": free.gpus,
            "running_jobs": free.running_jobs,
            "pid": os.getpid(),
        }
        for _ in range(3):  # two first starts racing for the insert: the loser updates
            try:
                with self.core.sessions.begin() as session:
                    now = db_now(session)
                    row = session.execute(
                        select(Node.incarnation, Node.drained)
                        .where(Node.name == self.name)
                        .with_for_update()
                    ).first()
                    if row is None:
                        session.execute(
                            insert(Node).values(
                                name=self.name,
                                state=NodeState.UP.value,
                                drained=False,
                                incarnation=1,
                                started_at=now,
                                heartbeat_at=now,
                                **values,
                            )
                        )
                        return 1
                    incarnation = int(row.incarnation) + 1
                    state = NodeState.DRAINING if row.drained else NodeState.UP
                    session.execute(
                        update(Node)
                        .where(Node.name == self.name)
                        .values(
                            state=state.value,
                            incarnation=incarnation,
                            started_at=now,
                            heartbeat_at=now,
                            **values,
                        )
                    )
                    return incarnation
            except IntegrityError:
                continue
        raise ConflictError(f"could not register node {self.name}")

    def heartbeat(self, incarnation: int, free: NodeUsage) -> HeartbeatReport:
        """Write this node's heartbeat (database clock) and free resources.

        The row is read under a row lock first, so a reaper that declares this node
        dead either commits before (and is seen here: ``was_dead``) or re-checks the
        fresh heartbeat after and declares nothing.
        """
        with self.core.sessions.begin() as session:
            row = session.execute(
                select(Node.state, Node.drained, Node.incarnation, Node.pid)
                .where(Node.name == self.name)
                .with_for_update()
            ).first()
            if row is None:  # deleted behind our back: register again
                pass
            elif int(row.incarnation) != incarnation:
                return HeartbeatReport(superseded=True, superseded_by_pid=row.pid)
            else:
                drained = bool(row.drained)
                state = NodeState.DRAINING if drained else NodeState.UP
                session.execute(
                    update(Node)
                    .where(Node.name == self.name, Node.incarnation == incarnation)
                    .values(
                        state=state.value,
                        heartbeat_at=db_now(session),
                        cores_free=free.cores,
                        memory_mb_free=free.memory_mb,
                        gpus_free=free.gpus,
                        running_jobs=free.running_jobs,
                    )
                )
                return HeartbeatReport(drained=drained, was_dead=row.state == NodeState.DEAD.value)
        return HeartbeatReport(reregistered=self.register(url="", free=free))

    def stopped(self, incarnation: int) -> None:
        """A clean stop: state ``stopped`` (its jobs keep running; the next start re-attaches)."""
        with self.core.sessions.begin() as session:
            session.execute(
                update(Node)
                .where(Node.name == self.name, Node.incarnation == incarnation)
                .values(state=NodeState.STOPPED.value, running_jobs=0)
            )

    # --- the reaper -----------------------------------------------------------------------

    def reap(self, *, adopt_runners: frozenset[str] | set[str]) -> Reaped:
        """Declare silent nodes dead and recover the in-flight jobs of dead nodes.

        Only one node reaps at a time (on PostgreSQL the others skip the round).
        Slurm jobs are adopted only by a node that has a runner for them
        (*adopt_runners*); others leave them for a node that has.
        """
        node_cfg = self.core.config.node
        max_attempts = self.core.config.jobs.max_attempts
        done = Reaped()
        with self.core.sessions.begin() as session:
            if is_postgres(session):
                got = session.execute(select(func.pg_try_advisory_xact_lock(REAPER_LOCK_KEY)))
                if not got.scalar():
                    done.ran = False
                    return done
            now = read_db_now(session)
            cutoff = now - timedelta(seconds=node_cfg.dead_after_s)
            done.dead = list(
                session.execute(
                    update(Node)
                    .where(
                        Node.name != self.name,
                        Node.state.in_(LIVE_STATES),
                        Node.heartbeat_at.is_not(None),
                        Node.heartbeat_at < cutoff,
                    )
                    .values(state=NodeState.DEAD.value, running_jobs=0)
                    .returning(Node.name)
                    .execution_options(synchronize_session=False)
                ).scalars()
            )
            dead_nodes = select(Node.name).where(
                Node.state == NodeState.DEAD.value, Node.name != self.name
            )
            jobs = session.execute(
                select(Job.id, Job.node, Job.attempt, Job.state, Job.runner, Job.argv)
                .where(
                    Job.node.in_(dead_nodes),
                    Job.state.in_([JobState.RUNNING.value, JobState.DELETING.value]),
                )
                .order_by(Job.id)
            ).all()
            for job_id, node, attempt, state, runner, argv in jobs:
                assert node is not None
                try:
                    self._recover_job(
                        session,
                        done,
                        (job_id, node, attempt, state, runner, argv),
                        max_attempts,
                        adopt_runners,
                    )
                except ConflictError as exc:  # it moved on meanwhile: nothing to recover
                    logger.debug(
                        "reaper: job %s: %s",
                        job_id,
                        exc.message,
                        extra=job_fields(job_id, attempt, self.core.node_name, None),
                    )
        return done

    def _recover_job(
        self,
        session: Session,
        done: Reaped,
        job: tuple[str, str, int, str, str, list[Any]],
        max_attempts: int,
        adopt_runners: frozenset[str] | set[str],
    ) -> None:
        job_id, node, attempt, state, runner, argv = job
        if state == JobState.DELETING.value:
            transitions.transition_job(
                session,
                job_id,
                [JobState.DELETING],
                JobState.DELETED,
                attempt=attempt,
                on_node=node,
                state_reason=f"cancelled (node {node} died)",
                finished_at=utcnow(),
            )
            done.deleted.append(job_id)
        elif runner in ADOPTED_RUNNERS:
            if runner not in adopt_runners:
                return
            if transitions.adopt_job(
                session, job_id, attempt=attempt, from_node=node, to_node=self.name
            ):
                done.adopted.append(job_id)
        elif attempt < max_attempts:
            reason = f"requeued: node {node} died (attempt {attempt} of {max_attempts})"
            endings.requeue(self.on_end, session, job_id, attempt, argv, reason, node)
            done.requeued.append(job_id)
        else:
            transitions.transition_job(
                session,
                job_id,
                [JobState.RUNNING],
                JobState.ERROR,
                attempt=attempt,
                on_node=node,
                state_reason=f"node {node} died (attempt {attempt} of {max_attempts})",
                finished_at=utcnow(),
            )
            done.failed.append(job_id)

    # --- reading and draining (admins) --------------------------------------------------

    def _view(self, node: Node, now: datetime) -> dict[str, Any]:
        age = _age_s(node.heartbeat_at, now)
        alive = (
            node.state in LIVE_STATES
            and age is not None
            and age <= self.core.config.node.dead_after_s
        )
        return {
            "name": node.name,
            "url": node.url,
            "labels": dict(node.labels or {}),
            "state": node.state,
            "drained": bool(node.drained),
            "alive": alive,
            "total": {
                "cores": node.cores_total,
                "memory_mb": node.memory_mb_total,
                "gpus": node.gpus_total,
            },
            "free": {
                "cores": node.cores_free,
                "memory_mb": node.memory_mb_free,
                "gpus": node.gpus_free,
            },
            "running_jobs": node.running_jobs,
            "incarnation": node.incarnation,
            "pid": node.pid,
            "started_at": node.started_at.isoformat() if node.started_at else None,
            "heartbeat_at": node.heartbeat_at.isoformat() if node.heartbeat_at else None,
            "heartbeat_age_s": age,
        }

    @staticmethod
    def _require_admin(principal: Principal) -> None:
        if not principal.is_admin:
            raise AdminRequiredError("Only admins can see and drain nodes.")

    def list_nodes(self, principal: Principal) -> list[dict[str, Any]]:
        self._require_admin(principal)
        with self.core.sessions.begin() as session:
            now = read_db_now(session)
            nodes = session.execute(select(Node).order_by(Node.name)).scalars().all()
            return [self._view(n, now) for n in nodes]

    def get(self, principal: Principal, name: str) -> dict[str, Any]:
        self._require_admin(principal)
        with self.core.sessions.begin() as session:
            now = read_db_now(session)
            node = session.get(Node, name)
            if node is None:
                raise NotFoundError(f"no node named {name!r}")
            return self._view(node, now)

    def set_drained(self, principal: Principal, name: str, drained: bool) -> dict[str, Any]:
        """Drain (claims nothing new, finishes what runs) or undrain a node."""
        self._require_admin(principal)
        with self.core.sessions.begin() as session:
            values: dict[str, Any] = {"drained": drained}
            result = session.execute(
                update(Node)
                .where(Node.name == name)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                raise NotFoundError(f"no node named {name!r}")
            live = NodeState.UP.value if drained else NodeState.DRAINING.value
            session.execute(
                update(Node)
                .where(Node.name == name, Node.state == live)
                .values(state=NodeState.DRAINING.value if drained else NodeState.UP.value)
                .execution_options(synchronize_session=False)
            )
        how = "drained" if drained else "undrained"
        logger.info("node %s %s by %s", name, how, principal.username)
        return self.get(principal, name)


def fits_a_live_node(core: Core, cores: int, memory_mb: int | None, gpus: int) -> bool:
    """Whether some live node (up or draining, heartbeat fresh) could ever hold a local or
    Docker job of this size: admission of a job this node could not hold but another can."""
    with core.sessions.begin() as session:
        cutoff = read_db_now(session) - timedelta(seconds=core.config.node.dead_after_s)
        found = session.execute(
            select(Node.name)
            .where(
                Node.state.in_(LIVE_STATES),
                Node.heartbeat_at >= cutoff,
                Node.cores_total >= cores,
                Node.memory_mb_total >= (memory_mb or 0),
                Node.gpus_total >= gpus,
            )
            .limit(1)
        ).first()
    return found is not None
