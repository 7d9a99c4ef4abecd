"""Jobs: submission, reading, cancel, logs — the use cases both API faces share.

A submission is validated completely before anything is stored; then its
uploads are moved into the job's directory and the job row is inserted in one
transaction, so an invalid or interrupted submission leaves no job and no file.
Then the job is started at once in a free slot or queued, through the
``Dispatcher`` the service was given (``services.ports``): the service never
reaches for the daemon. The steps that need no service (the form, the script
version, where uploads go) live in ``services.submission``.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobferry.argspec.bounded import CommandChecker, CommandLimits
from jobferry.argspec.tokens import arg_budget
from jobferry.errors import (
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    RequestError,
    StoreUnavailableError,
    UnsatisfiableError,
)
from jobferry.runners.base import RunHandle
from jobferry.services.core import Core, Principal
from jobferry.services.disk import DiskGuard
from jobferry.services.logfields import job_fields
from jobferry.services.nodes import fits_a_live_node
from jobferry.services.ports import NO_DISPATCH, Dispatcher
from jobferry.services.retention import require_files
from jobferry.services.routing import Placement, ResourceRequest, check_fits
from jobferry.services.submission import (
    PlannedUploads,
    ResolvedVersion,
    ScriptVersions,
    check_form,
)
from jobferry.staging import confined
from jobferry.staging.forms import UploadedFile
from jobferry.staging.paths import make_job_dir
from jobferry.store import transitions
from jobferry.store.models import (
    TERMINAL_STATES,
    Job,
    JobFile,
    JobState,
    Script,
    ScriptVersion,
    User,
    new_id,
    utcnow,
)
from jobferry.store.records import GroupInserter, JobStatus, job_status_row

logger = logging.getLogger(__name__)

#: Most bytes of stdout/stderr returned inline in job details.
LOG_INLINE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class SubmitRequest:
    """A job submission as a face received it."""

    slug: str
    job_name: str | None
    job_description: str | None = None
    command: str = ""
    version: str | None = None
    iteration: str | None = None
    history_id: str | None = None
    #: Optional destination and resources the client asked for.
    resources: ResourceRequest = ResourceRequest()
    #: The Galaxy tool id when submitted through ``POST /api/tools`` (routing rules).
    tool_id: str | None = None


@dataclass(frozen=True)
class JobView:
    """A job and its files, read in one unit of work."""

    job: Job
    username: str
    script_slug: str | None
    files: Sequence[JobFile]

    @property
    def is_terminal(self) -> bool:
        return self.job.state in {s.value for s in TERMINAL_STATES}

    @property
    def files_expired(self) -> bool:
        """Retention deleted the job's directory: its files answer 410 Gone."""
        return self.job.files_expired_at is not None


class JobService:
    def __init__(
        self, core: Core, dispatcher: Dispatcher[Any] = NO_DISPATCH, disk: DiskGuard | None = None
    ) -> None:
        """*dispatcher* starts a submission's job at once in a free slot, or is told
        it was queued (``services.ports``: the daemon's scheduler, or nobody); *disk*
        refuses submissions while the data directory's disk is low (507)."""
        self.core = core
        self.disk = disk or DiskGuard(core)
        self.dispatcher = dispatcher
        self.versions = ScriptVersions(core)
        self._inserter = GroupInserter(core.sessions)
        scripts = core.config.scripts
        # A third of the worker threads at most wait on long commands' checks.
        workers = core.config.database.pool_size + 2
        self.checker = CommandChecker(
            CommandLimits(
                max_tokens=scripts.max_command_tokens,
                timeout_s=scripts.command_check_timeout_s,
                slots=max(1, workers // 3),
            )
        )

    # --- submission ------------------------------------------------------------------

    def submit(
        self, principal: Principal, request: SubmitRequest, uploads: Sequence[UploadedFile]
    ) -> str:
        """Validate and queue (or start) a job; return its id. Raises FormError,
        ScriptNotFoundError, ValidationError, UnsatisfiableError, TooManyRequestsError
        (every slot for checking long commands is taken), InsufficientStorageError
        (the disk guard). The caller still owns (and must discard) the uploads on error."""
        self.disk.require("new submissions")
        # Validate: the form, the script version, where it goes, the command.
        name, iteration = check_form(request.job_name, request.iteration)
        version = self.versions.resolve(request.slug, request.version or None, iteration)
        placement = self._place(principal, request, version)
        job_id = new_id()
        planned = PlannedUploads.of(self.core.job_dir(job_id), uploads)
        job, param_of = self._job_row(job_id, principal, request, name, version, placement, planned)
        # A free slot and nothing waiting (the dispatcher's call): the job is stored
        # already claimed by this node and started by this thread, saving a claim round.
        reservation = self._reserve(placement, job)
        # Store: the uploads moved in and the job inserted, or neither.
        row = self._store(job, planned, param_of, reservation)
        logger.info(
            "job %s submitted by user %s: script %s, %s, %d file(s)",
            job_id,
            principal.user_id,
            request.slug,
            placement.destination,
            len(planned.placed),
            extra=job_fields(
                job_id, row.get("attempt", 0), self.core.node_name, placement.destination
            ),
        )
        self._start_or_queue(row, reservation)
        return job_id

    def _place(
        self, principal: Principal, request: SubmitRequest, version: ResolvedVersion
    ) -> Placement:
        """Where the job goes (routing rules, the client's request). Raises
        UnsatisfiableError when no node sharing the store could ever run it."""
        placement = self.core.router.place(
            request.resources,
            slug=request.slug,
            group=version.group,
            username=principal.username,
            tool_id=request.tool_id,
        )
        try:
            check_fits(placement, self.core.capacity_for(placement.runner))
        except UnsatisfiableError:
            # Too large for this node: another node sharing the store may hold it.
            r = placement.resources
            if placement.runner not in ("local", "docker") or not fits_a_live_node(
                self.core, r.cores, r.memory_mb, r.gpus
            ):
                raise
        return placement

    def _job_row(
        self,
        job_id: str,
        principal: Principal,
        request: SubmitRequest,
        name: str,
        version: ResolvedVersion,
        placement: Placement,
        planned: PlannedUploads,
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """The job's row, its command checked and built into argv (ValidationError,
        TooManyRequestsError); and which script parameter each upload's path went to."""
        interpreter = self.core.config.interpreter
        built = self.checker.check(
            version.spec,
            request.command or "",
            planned.by_field,
            arg_budget=arg_budget([interpreter, version.path]),
        )
        param_of = {path: dest for dest, paths in built.input_files.items() for path in paths}
        r = placement.resources
        job: dict[str, Any] = {
            "id": job_id,
            "uuid": str(uuid.uuid4()),
            "user_id": principal.user_id,
            "script_version_id": version.id,
            "name": name,
            "description": request.job_description,
            "command": request.command or "",
            "argv": [interpreter, version.path, *built.args],
            "params": built.values,
            "home_node": self.core.node_name,
            "runner": placement.runner,
            "destination": placement.destination,
            "cores": r.cores,
            "memory_mb": r.memory_mb,
            "gpus": r.gpus,
            "walltime_s": r.walltime_s,
            "job_dir": str(planned.job_dir),
            "history_id": request.history_id,
        }
        return job, param_of

    def _reserve(self, placement: Placement, job: dict[str, Any]) -> Any:
        """A slot to start the job in at once, if the dispatcher has one free (None:
        the job is queued); with one, *job* becomes claimed by this node."""
        r = placement.resources
        reservation = self.dispatcher.reserve(placement.destination, r.cores, r.memory_mb, r.gpus)
        if reservation is not None:  # started now: no queue wait
            self.core.telemetry.job_started(placement.destination, None)
            now = utcnow()
            job.update(
                state=JobState.RUNNING.value,
                node=self.core.node_name,
                attempt=1,
                started_at=now,
                created_at=now,
                updated_at=now,
            )
        return reservation

    def _store(
        self,
        job: dict[str, Any],
        planned: PlannedUploads,
        param_of: dict[str, str],
        reservation: Any,
    ) -> dict[str, Any]:
        """Move the uploads into the job's directory and insert the job with its input
        files; return its row. On any failure nothing is left (and the reservation is
        given back)."""
        try:
            if planned.placed or reservation is not None:
                # Else made when the job is claimed (or its files written).
                make_job_dir(planned.job_dir)
            planned.move_in()
            return self._inserter.insert(job, planned.file_rows(param_of))
        except BaseException:
            shutil.rmtree(planned.job_dir, ignore_errors=True)
            if reservation is not None:
                self.dispatcher.release(reservation)
            raise

    def _start_or_queue(self, row: dict[str, Any], reservation: Any) -> None:
        """Start the stored job in its reserved slot, or tell the dispatcher it queued."""
        if reservation is not None:
            if row["state"] == JobState.RUNNING.value:
                self.dispatcher.start(reservation, Job(**row))
                return
            self.dispatcher.release(reservation)  # queued after all: this node was drained
        self.dispatcher.queued()

    # --- reading ---------------------------------------------------------------------

    def get(self, principal: Principal, job_id: str) -> JobView:
        """A job the principal may see. Raises NotFoundError.

        Another user's job is "not found" too (admins see every job): a 403 would
        tell a caller that the id exists, so ids could be probed.
        """
        with self.core.sessions.begin() as session:
            view = self._view(session, job_id)
        if not principal.is_admin and view.job.user_id != principal.user_id:
            raise NotFoundError(f"no job with id {job_id!r}")
        return view

    def status(self, principal: Principal, job_id: str) -> JobStatus:
        """Just the state of a job the principal may see (cheap: polled often).
        Blocking: call it in a worker thread (``status_now`` is the loop's)."""
        if not job_id or len(job_id) > 64:
            raise NotFoundError(f"no job with id {job_id!r}")
        with self.core.sessions.read() as connection:
            row = job_status_row(connection, job_id)
        return self._visible(principal, job_id, row)

    def status_now(self, principal: Principal, job_id: str) -> JobStatus | None:
        """``status`` read on the calling thread (the event loop) when the store allows
        it without waiting (SQLite: ``SessionFactory.reads_inline``, a few tens of
        microseconds, less than a hop to a worker thread); None when it does not
        (PostgreSQL, or SQLite busy for a moment): then call ``status`` in a worker."""
        if not job_id or len(job_id) > 64:
            raise NotFoundError(f"no job with id {job_id!r}")
        sessions = self.core.sessions
        if not sessions.reads_inline:
            return None
        try:
            with sessions.read_inline() as connection:
                row = job_status_row(connection, job_id)
        except StoreUnavailableError:
            return None
        return self._visible(principal, job_id, row)

    @staticmethod
    def _visible(principal: Principal, job_id: str, row: JobStatus | None) -> JobStatus:
        if row is None:
            raise NotFoundError(f"no job with id {job_id!r}")
        if not principal.is_admin and row.user_id != principal.user_id:
            raise NotFoundError(f"no job with id {job_id!r}")  # as in get(): no probing
        return row

    def _view(self, session: Session, job_id: str) -> JobView:
        if not job_id or len(job_id) > 64:
            raise NotFoundError(f"no job with id {job_id!r}")
        row = session.execute(
            select(Job, User.username, Script.slug)
            .join(User, User.id == Job.user_id)
            .outerjoin(ScriptVersion, ScriptVersion.id == Job.script_version_id)
            .outerjoin(Script, Script.id == ScriptVersion.script_id)
            .where(Job.id == job_id)
        ).first()
        if row is None:
            raise NotFoundError(f"no job with id {job_id!r}")
        files = (
            session.execute(
                select(JobFile).where(JobFile.job_id == job_id).order_by(JobFile.kind, JobFile.name)
            )
            .scalars()
            .all()
        )
        return JobView(job=row[0], username=row[1], script_slug=row[2], files=files)

    def list_jobs(
        self,
        principal: Principal,
        *,
        states: Sequence[str] = (),
        username: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[tuple[Job, str]]:
        """Jobs newest first; a non-admin sees only their own."""
        stmt = select(Job, User.username).join(User, User.id == Job.user_id)
        if not principal.is_admin:
            stmt = stmt.where(Job.user_id == principal.user_id)
        if username is not None:
            stmt = stmt.where(User.username == username)
        if states:
            stmt = stmt.where(Job.state.in_(list(states)))
        stmt = stmt.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)
        with self.core.sessions.begin() as session:
            return [(job, uname) for job, uname in session.execute(stmt).all()]

    def read_log(self, view: JobView, stream: str, limit: int = LOG_INLINE_BYTES) -> str | None:
        """The job's stdout or stderr (the last *limit* bytes), or None if it never ran
        (or its files expired)."""
        if view.files_expired:
            return None
        self.core.require_files_here(view.job.home_node)
        path = Path(view.job.job_dir) / stream
        try:
            with open(path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if size > limit:
                    handle.seek(size - limit)
                data = handle.read(limit)
        except FileNotFoundError:
            return None
        return data.decode("utf-8", "replace")

    def output_path(self, principal: Principal, job_id: str, file_id: str) -> tuple[Path, JobFile]:
        """Where a job file lies on disk, for a download. Confined to the job's directory.

        *file_id* is the file's id, or an output's name (its path relative to the job's
        outputs): Wooey's asset links name the file, and so do people reading the details.
        A name only resolves among the job's recorded outputs, never to another path.
        """
        view = self.get(principal, job_id)
        found = next((f for f in view.files if f.id == file_id), None)
        if found is None:
            found = next((f for f in view.files if f.kind == "output" and f.name == file_id), None)
        if found is None:
            raise NotFoundError(f"job {job_id} has no file {file_id[:200]!r}")
        require_files(job_id, view.job.files_expired_at)  # 410, on any node
        self.core.require_files_here(view.job.home_node)
        base = Path(view.job.job_dir) / ("work" if found.kind == "output" else "inputs")
        try:
            return confined.locate_file(base, found.name), found
        except (NotFoundError, RequestError):
            raise NotFoundError("the file is no longer available") from None

    # --- cancel ----------------------------------------------------------------------

    def cancel(self, principal: Principal, job_id: str) -> str:
        """Cancel a job: queued → deleted; running → deleting, its process tree stopped.

        Returns the job's state afterwards. Idempotent on an already cancelled job;
        raises ConflictError on a job that already ended otherwise.
        """
        view = self.get(principal, job_id)
        job = view.job
        if job.state == JobState.DELETED.value:
            return job.state
        if job.state == JobState.DELETING.value:
            # Cancelling again re-sends the kill: an earlier one may have been cut off.
            if job.handle:
                handle = RunHandle.loads(job.handle)
                self.core.runner(handle.runner).cancel(handle, reason="cancelled")
            return job.state
        if job.state in (JobState.OK.value, JobState.ERROR.value):
            raise ConflictError(f"job {job_id} has already ended ({job.state})")
        with self.core.sessions.begin() as session:
            new_state = transitions.mark_cancelled(session, job_id)
            handle_text = session.execute(select(Job.handle).where(Job.id == job_id)).scalar()
        if new_state is JobState.DELETING and handle_text:
            handle = RunHandle.loads(handle_text)
            self.core.runner(handle.runner).cancel(handle, reason="cancelled")
        return new_state.value

    def job_key(self, principal: Principal, job_id: str) -> str:
        if not principal.is_admin:
            raise PermissionDeniedError("Only admins may read job keys.")
        self.get(principal, job_id)
        return self.core.job_key(job_id)

    def input_args(self, job: Job) -> dict[str, Any]:
        return {"argv": list(job.argv), "params": dict(job.params)}
