"""Running jobs: claim, start, record the handle, finish with outputs, recover.

The daemon's scheduler calls these (through the executor); they own the
mapping from runner outcomes to job states and the collection of outputs.

A job's end is collected once (``collect_end``: outputs scanned, whether the disk
was full) and then recorded (``record_end``), which the daemon retries until the
store takes it: a store that is down, busy or out of disk space never loses an end.
A job that ended while its disk was full ends ``error`` with its true exit code
and that reason: what it wrote may be cut short.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Connection, bindparam, select
from sqlalchemy.orm import Session

from jobferry.config import DestinationConfig
from jobferry.errors import ConflictError
from jobferry.runners.base import RunHandle, RunSpec, RunStatus
from jobferry.runners.wrapper import read_result
from jobferry.services import endings
from jobferry.services.core import Core
from jobferry.services.endings import Ending, no_space_left, scan_outputs
from jobferry.services.endings import outcome as _outcome
from jobferry.services.logfields import job_fields
from jobferry.services.ports import JobEnded, no_job_ended
from jobferry.services.remote_paths import copy_script
from jobferry.services.run_spec import JobFacts, run_spec
from jobferry.services.telemetry import counts_store_errors
from jobferry.staging.paths import make_job_dir
from jobferry.store import transitions
from jobferry.store.dbapi import RawStatement
from jobferry.store.models import TERMINAL_STATES, Job, JobState, Node, new_id, utcnow
from jobferry.store.records import DRAINED, INSERT_OUTPUT, JOBS, STATE, JobEnd

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=2)
def _record_handle_sql(fenced_by_node: bool) -> RawStatement:
    """``record_handle``'s statement, built once and run on the DB-API cursor
    (``store.dbapi``): it runs for every job started."""
    return RawStatement(
        transitions.attempt_update(fenced_by_node)
        .values(
            handle=bindparam("new_handle"),
            external_id=bindparam("new_external_id"),
            updated_at=bindparam("now"),
        )
        # The state as written, in the same statement: one statement per start instead
        # of an UPDATE and a SELECT (SQLite >= 3.35 and PostgreSQL both return rows).
        .returning(JOBS.c.state)
    )


@dataclass(frozen=True)
class ClaimedJob:
    job_id: str
    attempt: int
    runner: str
    spec: RunSpec
    handle: RunHandle | None = None
    state: str = JobState.RUNNING.value
    #: The node that claimed (or adopted) it: later writes are fenced by it too. None
    #: for writers that are not a node (a wrapper's callback): fenced by attempt only.
    node: str | None = None


@dataclass(frozen=True)
class Claim:
    """One claim's outcome (``ExecutionService.claim_next``)."""

    #: The job claimed; None: nothing could be claimed now.
    job: ClaimedJob | None
    #: Whether queued jobs this node could run may still wait: more were left after
    #: the claimed job, or, with none claimed, the head job is reserved or a
    #: destination is at its ``max_concurrent``. A freed slot then claims again.
    backlog: bool


#: A claim that found nothing queued for it (or ran on a drained node).
NOTHING_TO_CLAIM = Claim(None, backlog=False)


class ExecutionService:
    def __init__(self, core: Core, *, base_url: str, on_end: JobEnded = no_job_ended) -> None:
        self.core, self.base_url, self.on_end = core, base_url, on_end  # ports.JobEnded

    def destination(self, job: JobFacts) -> DestinationConfig:
        """The job's destination as configured now (a removed one: its runner's defaults)."""
        found = self.core.config.destinations.get(job.destination)
        if found is not None and found.runner == job.runner:
            return found
        return DestinationConfig.model_construct(runner=job.runner)  # type: ignore[arg-type]

    def _home_url(self, job: JobFacts) -> str:
        """The URL a job's wrapper reports to: the node holding its directory."""
        if self.core.config.node.shared_filesystem or job.home_node in (
            None,
            self.core.node_name,
        ):
            return self.base_url
        with self.core.sessions.begin() as session:
            url = session.execute(select(Node.url).where(Node.name == job.home_node)).scalar()
        return str(url or self.base_url)

    def spec(self, job: JobFacts) -> RunSpec:
        """How to run *job*'s current attempt here (``services.run_spec``)."""
        return run_spec(self.core, job, self.destination(job), self._home_url(job))

    @counts_store_errors("claim")
    def claim_next(self, destinations: list[str], fit: transitions.NodeResources | None) -> Claim:
        """Claim one job (see ``transitions.claim_next_job``). ``NOTHING_TO_CLAIM``:
        nothing is queued for *destinations* on this node. No job but a backlog:
        nothing can be claimed now but jobs may be waiting (the head job is reserved
        and does not fit yet, or a destination is at its ``max_concurrent``, counted
        in the claim's own transaction). A claimed job comes with whether more were
        left. A drained node (its ``nodes.drained`` flag, set by an admin from
        anywhere) claims nothing."""
        self.core.secret  # noqa: B018 - load outside the claim's write transaction
        node = self.core.node_name
        limits = {
            name: dest.max_concurrent
            for name in destinations
            if (dest := self.core.config.destinations.get(name)) and dest.max_concurrent
        }
        home = None if self.core.config.node.shared_filesystem else node
        anywhere = [n for n, d in self.core.config.destinations.items() if d.staging == "remote"]
        with self.core.sessions.transaction() as conn:  # Core only: no ORM session
            if DRAINED.scalar(conn, {"node": node}):
                return NOTHING_TO_CLAIM
            held_back = False
            if limits:
                running = transitions.running_per_destination(conn, limits)
                full = {d for d, limit in limits.items() if running.get(d, 0) >= limit}
                held_back = bool(full)
                destinations = [d for d in destinations if d not in full]
            found = transitions.claim_next_job(
                conn,
                destinations=destinations,
                node=node,
                fit=fit,
                home=home,
                anywhere=anywhere,
            )
            job = found.job
            if job is None:
                return Claim(None, backlog=held_back or found.held_back)
            more = held_back or found.more  # None: the claim's read could not tell
            if more is None:
                more = transitions.more_queued(
                    conn, destinations=destinations, fit=fit, home=home, anywhere=anywhere
                )
        # Files after the commit: the claim's transaction (the single writer on SQLite,
        # a row lock on PostgreSQL) waits for no disk. A crash in between requeues the
        # job at the next start (claimed, no handle, never started); a failure (a full
        # disk) requeues it now, or it would wait, claimed, for the next start.
        try:
            make_job_dir(job.job_dir)  # not made at submission (no uploads)
            if job.runner != "local":
                copy_script(Path(job.job_dir), job.argv)
        except OSError as exc:
            with self.core.sessions.begin() as session:
                reason = f"requeued: its directory could not be made ({exc.strerror})"
                endings.requeue(self.on_end, session, job.id, job.attempt, job.argv, reason, node)
            raise
        claimed = ClaimedJob(job.id, job.attempt, job.runner, self.spec(job), node=node)
        self.core.telemetry.job_started(job.destination, job.created_at)
        return Claim(claimed, backlog=more)

    def claim(self, runner: str, limit: int) -> list[ClaimedJob]:
        self.core.secret  # noqa: B018 - load outside the claim's write transaction
        with self.core.sessions.begin() as session:
            jobs = transitions.claim_queued_jobs(
                session, runner=runner, node=self.core.node_name, limit=limit
            )
        for job in jobs:
            make_job_dir(Path(job.job_dir))
            self.core.telemetry.job_started(job.destination, job.created_at)
        node = self.core.node_name
        return [ClaimedJob(j.id, j.attempt, j.runner, self.spec(j), node=node) for j in jobs]

    def record_handle(self, claimed: ClaimedJob, handle: RunHandle) -> str:
        """Store the handle of a started job; return the job's state (it may be deleting).

        The write returns the state it left (``RETURNING``: one statement), so a
        cancel either sees the handle (and kills the process itself) or is seen
        here (and the caller kills it): it can never fall between the two.

        Raises:
            ConflictError: the attempt is no longer running or being cancelled (on
                this node).
        """
        params = {
            "job_id": claimed.job_id,
            "fence_attempt": claimed.attempt,
            "fence_node": claimed.node,
            "new_handle": handle.dumps(),
            "new_external_id": handle.external_id,
            "now": utcnow(),
        }
        with self.core.sessions.transaction() as conn:  # Core only: no ORM session
            written = _record_handle_sql(claimed.node is not None).first(conn, params)
            if written is None:  # not this attempt's (on this node) any more: say what it is
                state = STATE.scalar(conn, params)
                raise ConflictError(f"job {claimed.job_id} attempt {claimed.attempt} is {state}")
            return str(written[0])

    def fail_to_start(self, claimed: ClaimedJob, reason: str) -> None:
        self.core.telemetry.runner_error(claimed.runner, "submit_failed")
        self._finish(claimed, JobState.ERROR, reason, None, None, {})

    def requeue(self, claimed: ClaimedJob, reason: str) -> None:
        """Put a claimed job whose runner could not take it back in the queue."""
        self.core.telemetry.runner_error(claimed.runner, "unavailable")
        with self.core.sessions.begin() as session:
            endings.requeue_claimed(self.on_end, session, claimed, reason)

    def abandon(self, claimed: ClaimedJob, reason: str) -> str:
        """End a job this daemon cannot follow: error, or deleted if it was being cancelled."""
        state = JobState.DELETED if claimed.state == JobState.DELETING.value else JobState.ERROR
        if state is JobState.DELETED:
            reason = f"cancelled ({reason})"
        self._finish(claimed, state, reason, None, None, {})
        return state.value

    def finish(self, claimed: ClaimedJob, status: RunStatus) -> JobEnd:
        """Record how a run ended, with its outputs. Returns the end as recorded."""
        return self.record_end(claimed, self.collect_end(claimed, status))

    def collect_end(self, claimed: ClaimedJob, status: RunStatus) -> Ending:
        """What recording the end needs from disk: the outputs (scanned once, however
        often recording is retried) and whether the job's disk was full (the wrapper
        could not write its result at first, or hardly any space is left now)."""
        spec = claimed.spec
        disk_full = status.disk_full  # the runner read the result file already
        if disk_full is None:
            result = read_result(spec.result_path)
            disk_full = result is not None and result.disk_full
        disk_full = disk_full or no_space_left(spec.job_dir or spec.workdir)
        metrics = {
            "wall_s": status.metrics.wall_s,
            "cpu_user_s": status.metrics.cpu_user_s,
            "cpu_sys_s": status.metrics.cpu_sys_s,
            "peak_rss_kb": status.metrics.peak_rss_kb,
        }
        return Ending(status, scan_outputs(spec.workdir), disk_full, metrics)

    def record_end(self, claimed: ClaimedJob, ending: Ending) -> JobEnd:
        """Record a collected end. The state is read and written in one transaction (a
        cancel in between cannot be missed). Raises StoreUnavailableError (or
        StoreFullError) while the store cannot take it: nothing was written, retry."""
        status = ending.status
        finished = datetime.fromtimestamp(status.finished_at, UTC) if status.finished_at else None
        with self.core.sessions.transaction() as conn:  # Core only: no ORM session
            current = STATE.scalar(conn, {"job_id": claimed.job_id})
            state, reason = _outcome(
                status, cancelled=current == JobState.DELETING.value, disk_full=ending.disk_full
            )
            self._write_finish(
                conn,
                claimed,
                state,
                reason,
                status.exit_code,
                finished,
                ending.metrics,
                ending.outputs,
            )
        wall_s = ending.metrics.get("wall_s")
        self.core.telemetry.job_ended(
            claimed.spec.destination,
            claimed.runner,
            state.value,
            reason,
            None if wall_s is None else float(wall_s),
        )
        return JobEnd(state.value, status.exit_code, reason)

    def _finish(
        self,
        claimed: ClaimedJob,
        state: JobState,
        reason: str | None,
        exit_code: int | None,
        finished_at: datetime | None,
        metrics: dict[str, float | int | None],
        outputs: list[tuple[str, int, str]] | None = None,
    ) -> None:
        with self.core.sessions.begin() as session:
            self._write_finish(
                session, claimed, state, reason, exit_code, finished_at, metrics, outputs
            )
        self.core.telemetry.job_ended(
            claimed.spec.destination, claimed.runner, state.value, reason, None
        )

    def _write_finish(
        self,
        session: Session | Connection,
        claimed: ClaimedJob,
        state: JobState,
        reason: str | None,
        exit_code: int | None,
        finished_at: datetime | None,
        metrics: dict[str, float | int | None],
        outputs: list[tuple[str, int, str]] | None,
    ) -> None:
        transitions.finish_job(
            session,
            claimed.job_id,
            claimed.attempt,
            state,
            on_node=claimed.node,
            reason=reason,
            exit_code=exit_code,
            finished_at=finished_at or utcnow(),
            metrics=metrics,
        )
        self.on_end(session, claimed, state, exit_code)
        if outputs:
            now = utcnow()
            conn = session if isinstance(session, Connection) else session.connection()
            INSERT_OUTPUT.many(
                conn,
                [
                    {
                        "id": new_id(),
                        "job_id": claimed.job_id,
                        "kind": "output",
                        "name": name,
                        "param": None,
                        "size": size,
                        "sha256": digest,
                        "created_at": now,
                    }
                    for name, size, digest in outputs
                ],
            )

    def in_flight(self) -> list[ClaimedJob]:
        """This node's running or being-cancelled jobs (for re-attaching at start-up).

        A job whose stored handle cannot be read is ended (error) here: nothing
        could ever re-attach to it.
        """
        found: list[ClaimedJob] = []
        unreadable: list[ClaimedJob] = []
        node = self.core.node_name
        with self.core.sessions.begin() as session:
            for j in transitions.jobs_in_flight(session, node=node):
                claimed = ClaimedJob(j.id, j.attempt, j.runner, self.spec(j), None, j.state, node)
                if not j.handle:
                    found.append(claimed)
                    continue
                try:
                    handle = RunHandle.loads(j.handle)
                except (KeyError, TypeError, ValueError):
                    unreadable.append(claimed)
                    continue
                found.append(dataclasses.replace(claimed, handle=handle))
        for claimed in unreadable:
            logger.error(
                "job %s has an unreadable run handle; ending it",
                claimed.job_id,
                extra=job_fields(
                    claimed.job_id, claimed.attempt, self.core.node_name, claimed.spec.destination
                ),
            )
            self.abandon(claimed, "its run handle is unreadable; the job was lost")
        return found

    def ended(self, job_ids: set[str]) -> set[str]:
        """Those of *job_ids* that are terminal or unknown to the store."""
        with self.core.sessions.begin() as session:
            rows = session.execute(select(Job.id, Job.state).where(Job.id.in_(job_ids))).all()
        terminal = {s.value for s in TERMINAL_STATES}
        active = {job_id for job_id, state in rows if state not in terminal}
        return job_ids - active

    def recover_unstarted(self, claimed: ClaimedJob) -> str:
        """A claimed job with no handle: requeue it if its process never began, else error."""
        if claimed.state == JobState.DELETING.value:
            self._finish(claimed, JobState.DELETED, "cancelled", None, None, {})
            return JobState.DELETED.value
        if os.path.exists(claimed.spec.stdout_path):
            self._finish(
                claimed,
                JobState.ERROR,
                "the daemon stopped while starting the job; its outcome is unknown",
                None,
                None,
                {},
            )
            return JobState.ERROR.value
        with self.core.sessions.begin() as session:
            endings.requeue_claimed(self.on_end, session, claimed, "requeued: never started")
        return JobState.QUEUED.value

    def owners(self, job_ids: set[str]) -> dict[str, tuple[str | None, int, str]]:
        """(node, attempt, state) of each of *job_ids* the store still has."""
        if not job_ids:
            return {}
        with self.core.sessions.begin() as session:
            rows = session.execute(
                select(Job.id, Job.node, Job.attempt, Job.state).where(Job.id.in_(job_ids))
            ).all()
        return {job_id: (node, attempt, state) for job_id, node, attempt, state in rows}
