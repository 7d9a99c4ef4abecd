"""The Galaxy face's job and dataset reads (and its cancel), as face-neutral records.

What is Galaxy's *behaviour* stays here: which jobs ``GET /api/jobs`` lists
and to whom (its filters, order and page), what cancelling a finished job
means, that every id is 16 lowercase hex characters, that a job file is read
back as a dataset by its owner or an admin. Galaxy's JSON (``model_class``,
state names, field sets) is built from the records returned here by
``jobferry.api.galaxy`` (``jobs_json``, ``datasets_json``).
Listing reads plain columns (no ORM objects): it is the endpoint clients poll.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Select, false, or_, select
from sqlalchemy.orm import Session

from jobferry.errors import (
    AdminRequiredError,
    ConflictError,
    MalformedIdError,
    NotFoundError,
    RequestError,
)
from jobferry.services.core import Core, Principal
from jobferry.services.jobs import JobService, JobView
from jobferry.services.records import (
    DatasetRecord,
    FileRecord,
    JobDetail,
    JobMetrics,
    JobPlacement,
    JobSummary,
    tool_version,
)
from jobferry.services.retention import require_files
from jobferry.services.states import FINISHED_STATES
from jobferry.staging import confined
from jobferry.store.models import Base, Job, JobFile, JobState, Script, ScriptVersion, User

logger = logging.getLogger(__name__)

#: Every id on the Galaxy face (jobs, datasets, users): 16 lowercase hex characters.
ID_PATTERN = re.compile(r"[0-9a-f]{16}")

#: ``view=`` values of ``GET /api/jobs``.
JOB_VIEWS = frozenset({"collection", "admin_job_list"})


def check_id(value: str, what: str = "resource") -> str:
    """*value* if it is a well-formed id, else MalformedIdError (400 / 400009)."""
    if not ID_PATTERN.fullmatch(value or ""):
        raise MalformedIdError(f"Invalid id ({value[:40]!r}) for {what}: malformed.")
    return value


def file_record(job_file: JobFile) -> FileRecord:
    return FileRecord(
        id=job_file.id,
        job_id=job_file.job_id,
        kind=job_file.kind,
        name=job_file.name,
        param=job_file.param,
        size=job_file.size,
        sha256=job_file.sha256,
        created_at=job_file.created_at,
    )


def metrics_of(job: Job) -> JobMetrics:
    return JobMetrics(
        started_at=job.started_at,
        finished_at=job.finished_at,
        cores=job.cores,
        wall_s=job.wall_s,
        cpu_user_s=job.cpu_user_s,
        cpu_sys_s=job.cpu_sys_s,
        peak_rss_kb=job.peak_rss_kb,
    )


@dataclass(frozen=True)
class JobQuery:
    """The filters, order and page of ``GET /api/jobs`` (already parsed)."""

    states: tuple[str, ...] = ()
    tool_ids: tuple[str, ...] = ()
    tool_id_like: tuple[str, ...] = ()
    history_id: str | None = None
    date_min: datetime | None = None
    date_max: datetime | None = None
    user_id: str | None = None
    user_details: bool = False
    view: str = "collection"
    order_by: str = "update_time"
    limit: int = 500
    offset: int = 0
    #: A filter on something this daemon has none of (workflow_id, invocation_id, ...).
    matches_nothing: bool = False


#: Core tables: the listing reads plain rows (no ORM entities), it is what clients poll.
JOBS = Base.metadata.tables["jobs"]
VERSIONS = Base.metadata.tables["script_versions"]
SCRIPTS = Base.metadata.tables["scripts"]
USERS = Base.metadata.tables["users"]

#: The columns a job summary is made of.
_SUMMARY_COLUMNS = (
    JOBS.c.id,
    JOBS.c.state,
    JOBS.c.exit_code,
    JOBS.c.created_at,
    JOBS.c.updated_at,
    JOBS.c.history_id,
    JOBS.c.user_id,
    SCRIPTS.c.slug,
    VERSIONS.c.version,
    VERSIONS.c.iteration,
)
_ADMIN_COLUMNS = (
    JOBS.c.external_id,
    JOBS.c.argv,
    JOBS.c.runner,
    JOBS.c.node,
    JOBS.c.state_reason,
)


def _build_summary_select(admin_columns: bool, with_email: bool) -> Select[Any]:
    columns: list[Any] = list(_SUMMARY_COLUMNS)
    if admin_columns:
        columns.extend(_ADMIN_COLUMNS)
    if with_email:
        columns.append(USERS.c.email)
    joined = JOBS.outerjoin(VERSIONS, VERSIONS.c.id == JOBS.c.script_version_id).outerjoin(
        SCRIPTS, SCRIPTS.c.id == VERSIONS.c.script_id
    )
    if with_email:
        joined = joined.join(USERS, USERS.c.id == JOBS.c.user_id)
    return select(*columns).select_from(joined)


#: The four summary statements, built once (building one costs more than running it).
_SUMMARY_SELECTS = {
    (admin, email): _build_summary_select(admin, email)
    for admin in (False, True)
    for email in (False, True)
}


def _summary_select(admin_columns: bool, with_email: bool) -> Select[Any]:
    return _SUMMARY_SELECTS[(admin_columns, with_email)]


def _summary(row: Any, *, admin: bool, email: bool, admin_view: bool = False) -> JobSummary:
    return JobSummary(
        id=row.id,
        state=row.state,
        exit_code=row.exit_code,
        created_at=row.created_at,
        updated_at=row.updated_at,
        history_id=row.history_id,
        user_id=row.user_id,
        tool_id=row.slug,
        tool_version=tool_version(row.version, row.iteration),
        admin=admin,
        external_id=row.external_id if admin else None,
        argv=tuple(row.argv or ()) if admin else (),
        runner=row.runner if admin_view else None,
        node=row.node if admin_view else None,
        state_reason=row.state_reason if admin_view else None,
        email_read=email,
        email=row.email if email else None,
    )


class GalaxyService:
    """Reads (and the cancel) of the Galaxy jobs and datasets API."""

    def __init__(self, core: Core, jobs: JobService) -> None:
        self.core = core
        self.jobs = jobs

    # --- listing ----------------------------------------------------------------------

    def list_jobs(self, principal: Principal, query: JobQuery) -> list[JobSummary]:
        """``GET /api/jobs``: an admin sees everyone's jobs, anyone else their own."""
        admin = principal.is_admin
        if not admin:
            if query.user_details:
                raise AdminRequiredError("Only admins can index the jobs with user details enabled")
            if query.view == "admin_job_list":
                raise AdminRequiredError("Only admins can use the admin_job_list view")
            if query.user_id is not None and query.user_id != principal.user_id:
                raise AdminRequiredError("Only admins can index the jobs of others")
        if query.matches_nothing:
            return []
        admin_view = query.view == "admin_job_list"
        email = admin and (query.user_details or admin_view)
        # The page is chosen on the jobs table alone (an index walk, offset included),
        # then only its rows are joined to their script and user.
        page = select(JOBS.c.id)
        if not admin:
            page = page.where(JOBS.c.user_id == principal.user_id)
        elif query.user_id is not None:
            page = page.where(JOBS.c.user_id == query.user_id)
        if query.states:
            page = page.where(JOBS.c.state.in_(sorted(set(query.states))))
        if query.tool_ids or query.tool_id_like:
            versions = self._versions_of_tools(query.tool_ids, query.tool_id_like)
            if not versions:
                return []
            page = page.where(JOBS.c.script_version_id.in_(versions))
        if query.history_id is not None:
            page = page.where(JOBS.c.history_id == query.history_id)
        if query.date_min is not None:
            page = page.where(JOBS.c.updated_at >= query.date_min)
        if query.date_max is not None:
            page = page.where(JOBS.c.updated_at <= query.date_max)
        column = JOBS.c.created_at if query.order_by == "create_time" else JOBS.c.updated_at
        order = (column.desc(), JOBS.c.id.desc())
        page = page.order_by(*order).limit(query.limit).offset(query.offset)
        stmt = (
            _summary_select(admin, email)
            .where(JOBS.c.id.in_(page.scalar_subquery()))
            .order_by(*order)
        )
        with self.core.sessions.begin() as session:
            rows = session.execute(stmt).all()
        return [_summary(r, admin=admin, email=email, admin_view=admin_view) for r in rows]

    def _versions_of_tools(self, exact: Sequence[str], like: Sequence[str]) -> list[str]:
        """Ids of every version of the scripts whose slug is in *exact* or matches *like*."""
        conditions: list[Any] = []
        if exact:
            conditions.append(Script.slug.in_(sorted(set(exact))))
        # ILIKE: case-insensitive on both engines (SQLite's LIKE is; PostgreSQL's is not).
        conditions.extend(Script.slug.ilike(pattern) for pattern in like)
        stmt = (
            select(ScriptVersion.id)
            .join(Script, Script.id == ScriptVersion.script_id)
            .where(or_(false(), *conditions))
        )
        with self.core.sessions.begin() as session:
            return list(session.execute(stmt).scalars())

    def summaries(self, principal: Principal, job_ids: Sequence[str]) -> list[JobSummary]:
        """Job summaries of jobs the caller may see, in the order of *job_ids*."""
        if not job_ids:
            return []
        stmt = _summary_select(principal.is_admin, False).where(JOBS.c.id.in_(list(job_ids)))
        if not principal.is_admin:
            stmt = stmt.where(JOBS.c.user_id == principal.user_id)
        with self.core.sessions.begin() as session:
            rows = {r.id: r for r in session.execute(stmt).all()}
        return [
            _summary(rows[i], admin=principal.is_admin, email=False) for i in job_ids if i in rows
        ]

    # --- one job ----------------------------------------------------------------------

    def visible_job(self, principal: Principal, job_id: str) -> JobView:
        """The job, if the caller may see it (their own; any for an admin); else 404."""
        check_id(job_id, "job")
        try:
            return self.jobs.get(principal, job_id)  # another user's job: not found too
        except NotFoundError:
            raise NotFoundError("No such job found.") from None

    def _tool_of(self, session: Session, job: Job) -> tuple[str | None, str | None]:
        if job.script_version_id is None:
            return None, None
        row = session.execute(
            select(ScriptVersion.version, ScriptVersion.iteration, Script.slug)
            .join(Script, Script.id == ScriptVersion.script_id)
            .where(ScriptVersion.id == job.script_version_id)
        ).first()
        if row is None:
            return None, None
        return row.slug, tool_version(row.version, row.iteration)

    def show_job(self, principal: Principal, job_id: str, *, full: bool = False) -> JobDetail:
        """``GET /api/jobs/{id}``: one job, with ``full`` its logs (and, for an admin, its
        owner's email)."""
        return self._detail(principal, self.visible_job(principal, job_id), full=full)

    def _detail(self, principal: Principal, view: JobView, *, full: bool) -> JobDetail:
        job = view.job
        admin = principal.is_admin
        with self.core.sessions.begin() as session:
            slug, version = self._tool_of(session, job)
            email = None
            if admin and full:
                email = session.execute(select(User.email).where(User.id == job.user_id)).scalar()
        summary = JobSummary(
            id=job.id,
            state=job.state,
            exit_code=job.exit_code,
            created_at=job.created_at,
            updated_at=job.updated_at,
            history_id=job.history_id,
            user_id=job.user_id,
            tool_id=slug,
            tool_version=version,
            admin=admin,
            external_id=job.external_id if admin else None,
            argv=tuple(job.argv or ()) if admin else (),
            email_read=admin and full,
            email=email,
        )
        stdout = stderr = ""
        if full:
            stdout = self.jobs.read_log(view, "stdout") or ""
            stderr = self.jobs.read_log(view, "stderr") or ""
        return JobDetail(
            summary=summary,
            params=dict(job.params or {}),
            files=[file_record(f) for f in view.files],
            metrics=metrics_of(job),
            full=full,
            stdout=stdout,
            stderr=stderr,
            files_expired=view.files_expired,
        )

    def job_files(self, principal: Principal, job_id: str) -> list[FileRecord]:
        """The files of a job (``/inputs``, ``/outputs``, ``/common_problems``)."""
        return [file_record(f) for f in self.visible_job(principal, job_id).files]

    def metrics(self, principal: Principal, job_id: str) -> JobMetrics | None:
        """``/metrics``: for admins; None for others (Galaxy hides them too)."""
        view = self.visible_job(principal, job_id)
        return metrics_of(view.job) if principal.is_admin else None

    def placement(self, principal: Principal, job_id: str) -> JobPlacement:
        """``/destination_params``: where and with what the job runs (admins only)."""
        if not principal.is_admin:
            raise AdminRequiredError()
        job = self.visible_job(principal, job_id).job
        return JobPlacement(
            runner=job.runner,
            external_id=job.external_id,
            node=job.node,
            destination=job.destination,
            cores=job.cores,
            memory_mb=job.memory_mb,
            gpus=job.gpus,
            walltime_s=job.walltime_s,
        )

    def cancel(self, principal: Principal, job_id: str) -> bool:
        """``DELETE /api/jobs/{id}``: True if this call stopped the job, False if it had
        already finished (a job being cancelled gets its kill re-sent, still False)."""
        job = self.visible_job(principal, job_id).job
        if job.state in FINISHED_STATES:
            if job.state == JobState.DELETING.value:
                self.jobs.cancel(principal, job_id)
            return False
        try:
            state = self.jobs.cancel(principal, job_id)
        except ConflictError:
            return False  # it ended meanwhile
        return state in (JobState.DELETING.value, JobState.DELETED.value)

    # --- datasets ---------------------------------------------------------------------

    def _visible_file(self, principal: Principal, dataset_id: str) -> tuple[JobFile, Job]:
        check_id(dataset_id, "dataset")
        with self.core.sessions.begin() as session:
            row = session.execute(
                select(JobFile, Job)
                .join(Job, Job.id == JobFile.job_id)
                .where(JobFile.id == dataset_id)
            ).first()
        if row is None:
            raise NotFoundError("No such dataset found.")
        job_file, job = row
        if not principal.is_admin and job.user_id != principal.user_id:
            # Not 403: that would tell the caller the id exists (ids could be probed).
            raise NotFoundError("No such dataset found.")
        return job_file, job

    def datasets(self, principal: Principal, dataset_ids: Sequence[str]) -> list[FileRecord]:
        """Job files by id for reuse as inputs: each the caller's own (any for an admin)."""
        return [file_record(self._visible_file(principal, i)[0]) for i in dataset_ids]

    def dataset_file(self, job_file: FileRecord, job_dir: str | None = None) -> Path:
        """Where a job file lies, confined to its job's directory (GoneError if its files
        expired; given *job_dir*, the caller checked that)."""
        if job_dir is None:
            with self.core.sessions.begin() as session:
                job_dir, expired_at = session.execute(
                    select(Job.job_dir, Job.files_expired_at).where(Job.id == job_file.job_id)
                ).one()
            require_files(job_file.job_id, expired_at)
        base = Path(job_dir) / ("work" if job_file.kind == "output" else "inputs")
        try:
            return confined.locate_file(base, job_file.name)
        except (NotFoundError, RequestError):
            raise NotFoundError("The dataset's file is no longer available.") from None

    def show_dataset(self, principal: Principal, dataset_id: str) -> DatasetRecord:
        """``GET /api/datasets/{id}``: a job file, to be shown as a history dataset."""
        job_file, job = self._visible_file(principal, dataset_id)
        return DatasetRecord(
            file=file_record(job_file),
            history_id=job.history_id,
            files_expired=job.files_expired_at is not None,
        )

    def dataset_path(self, principal: Principal, dataset_id: str) -> tuple[Path, FileRecord]:
        """The file behind ``GET /api/datasets/{id}/display`` (owner or admin)."""
        job_file, job = self._visible_file(principal, dataset_id)
        require_files(job.id, job.files_expired_at)  # 410, on any node
        self.core.require_files_here(job.home_node)
        record = file_record(job_file)
        return self.dataset_file(record, job.job_dir), record
