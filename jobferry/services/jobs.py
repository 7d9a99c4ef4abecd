"""Jobs: submission, reading, cancel, logs — the use cases both API faces share.

A submission is validated completely before anything is stored; then its
uploads are moved into the job's directory and the job row is inserted in one
transaction, so an invalid or interrupted submission leaves no job and no file.
Then the job is started at once in a free slot or queued, through the
``Dispatcher`` the service was given (``services.ports``): the service never
reaches for the daemon. The submission path is ``services.intake``; the steps
that need no service (the form, the script version, where uploads go) live in
``services.submission``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobferry.errors import (
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    RequestError,
    StoreUnavailableError,
)
from jobferry.runners.base import RunHandle
from jobferry.services.core import Core, Principal
from jobferry.services.disk import DiskGuard
from jobferry.services.intake import Intake
from jobferry.services.ports import NO_DISPATCH, Dispatcher
from jobferry.services.retention import require_files
from jobferry.services.submission import SubmitRequest
from jobferry.staging import confined
from jobferry.staging.forms import UploadedFile
from jobferry.store import transitions
from jobferry.store.models import (
    TERMINAL_STATES,
    Job,
    JobFile,
    JobState,
    Script,
    ScriptVersion,
    User,
)
from jobferry.store.records import JobStatus, job_status_inline, job_status_row

__all__ = ["JobService", "JobStatus", "JobView", "SubmitRequest"]

#: Most bytes of stdout/stderr returned inline in job details.
LOG_INLINE_BYTES = 1024 * 1024


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
        self.intake = Intake(core, dispatcher, self.disk)
        #: Checks commands against a script's parser (the Galaxy tools use it too).
        self.checker = self.intake.checker
        #: Resolves a script's version (the browser face's forms use it too).
        self.versions = self.intake.versions

    # --- submission (services.intake) ------------------------------------------------

    def submit(
        self, principal: Principal, request: SubmitRequest, uploads: Sequence[UploadedFile]
    ) -> str:
        """Validate and queue (or start) a job; return its id. Raises FormError,
        ScriptNotFoundError, ValidationError, UnsatisfiableError, TooManyRequestsError
        (every slot for checking long commands is taken), InsufficientStorageError
        (the disk guard). The caller still owns (and must discard) the uploads on error.
        Blocking: call it in a worker thread."""
        return self.intake.submit(principal, request, list(uploads))

    async def submit_async(
        self, principal: Principal, request: SubmitRequest, uploads: Sequence[UploadedFile]
    ) -> str:
        """``submit`` for the event loop: the usual submission is checked there and
        stored with the loop's batch, any other in a worker thread (``services.intake``)."""
        return await self.intake.submit_async(principal, request, list(uploads))

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
                row = job_status_inline(connection, job_id)
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
