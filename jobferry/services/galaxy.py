"""Jobs and datasets in Galaxy's shapes (galaxy-contract.md §3): the Galaxy face's reads.

Internal job states are Galaxy's own vocabulary, so they pass through as they
are. A job's files are Galaxy's datasets (``src: "hda"``), identified by the
job file's id. Timestamps are naive UTC ISO 8601 with microseconds.
Listing reads plain columns (no ORM objects): it is the endpoint clients poll.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Select, and_, false, or_, select
from sqlalchemy.orm import Session

from jobferry.errors import (
    AdminRequiredError,
    ConflictError,
    MalformedIdError,
    NotFoundError,
    ValidationError,
)
from jobferry.services.core import Core, Principal
from jobferry.services.jobs import JobService, JobView
from jobferry.staging.paths import confine
from jobferry.store.models import Base, Job, JobFile, JobState, Script, ScriptVersion, User

logger = logging.getLogger(__name__)

#: What this daemon tells clients that gate features on Galaxy's version.
GALAXY_VERSION_MAJOR = "24.1"
GALAXY_VERSION_MINOR = "0"

#: Every id on the Galaxy face (jobs, datasets, users): 16 lowercase hex characters.
ID_PATTERN = re.compile(r"[0-9a-f]{16}")

#: Galaxy's whole job-state vocabulary (a filter on a state this daemon never uses matches
#: nothing; anything else is a client error).
GALAXY_JOB_STATES = frozenset(
    {
        "new",
        "resubmitted",
        "upload",
        "waiting",
        "queued",
        "running",
        "finishing",
        "ok",
        "error",
        "failed",
        "paused",
        "deleting",
        "deleted",
        "deleted_new",
        "stop",
        "stopped",
        "skipped",
    }
)
#: Galaxy's ``finished_states``: cancelling a job in one of these changes nothing.
FINISHED_STATES = frozenset({"ok", "error", "deleted", "deleting"})
#: States ``POST /api/jobs/search`` matches when the request names none.
DEFAULT_SEARCH_STATES = ("new", "queued", "waiting", "running", "ok")
#: ``view=`` values of ``GET /api/jobs``.
JOB_VIEWS = frozenset({"collection", "admin_job_list"})


def check_id(value: str, what: str = "resource") -> str:
    """*value* if it is a well-formed id, else MalformedIdError (400 / 400009)."""
    if not ID_PATTERN.fullmatch(value or ""):
        raise MalformedIdError(f"Invalid id ({value[:40]!r}) for {what}: malformed.")
    return value


def iso(value: datetime | None) -> str | None:
    """Naive UTC ISO 8601 with microseconds, as Galaxy writes timestamps."""
    if value is None:
        return None
    if value.tzinfo is UTC:  # what the store returns: drop the "+00:00"
        return value.isoformat(timespec="microseconds")[:-6]
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(timespec="microseconds")


def tool_version(version: str | None, iteration: int | None) -> str | None:
    """The Galaxy ``tool_version`` of a script version: ``1.0``, or ``1.0+3`` for its
    third upload (iteration) of the same declared version."""
    if version is None:
        return None
    return version if not iteration or iteration == 1 else f"{version}+{iteration}"


def _natural(name: str) -> tuple[int, str]:
    head, _, rest = name.partition("/")
    return (int(head), rest) if head.isdigit() else (1 << 62, name)


def _extension(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    _, dot, ext = base.rpartition(".")
    ext = ext.lower()
    return ext if dot and ext.isalnum() and len(ext) <= 16 else "data"


def dataset_names(files: Iterable[JobFile], kind: str) -> list[tuple[str, JobFile]]:
    """The files of one kind with their Galaxy association names, in a stable order.

    An input is named after its parameter (``infile``, then ``infile1``, ... when a
    parameter took several files); an output after its path in the working directory.
    """
    chosen = sorted((f for f in files if f.kind == kind), key=lambda f: _natural(f.name))
    named: list[tuple[str, JobFile]] = []
    seen: dict[str, int] = {}
    for job_file in chosen:
        base = (job_file.param or job_file.name) if kind == "input" else job_file.name
        count = seen.get(base, 0)
        seen[base] = count + 1
        named.append((base if count == 0 else f"{base}{count}", job_file))
    return named


def _human_bytes(size: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"  # pragma: no cover


def _metric(plugin: str, name: str, title: str, value: str, raw: Any) -> dict[str, str]:
    return {"title": title, "value": value, "plugin": plugin, "name": name, "raw_value": str(raw)}


def job_metrics(job: Job) -> list[dict[str, str]]:
    """A job's metrics as Galaxy's JobMetric list (wall and CPU time, peak RSS, times)."""
    metrics: list[dict[str, str]] = []
    if job.started_at is not None:
        start = job.started_at.timestamp()
        metrics.append(
            _metric(
                "core",
                "start_epoch",
                "Job Start Time",
                job.started_at.strftime("%Y-%m-%d %H:%M:%S"),
                f"{start:.7f}",
            )
        )
    if job.finished_at is not None:
        end = job.finished_at.timestamp()
        metrics.append(
            _metric(
                "core",
                "end_epoch",
                "Job End Time",
                job.finished_at.strftime("%Y-%m-%d %H:%M:%S"),
                f"{end:.7f}",
            )
        )
    metrics.append(_metric("core", "galaxy_slots", "Cores Allocated", str(job.cores), job.cores))
    if job.wall_s is not None:
        metrics.append(
            _metric(
                "core",
                "runtime_seconds",
                "Job Runtime (Wall Clock)",
                f"{job.wall_s:.3f} seconds",
                f"{job.wall_s:.7f}",
            )
        )
    if job.cpu_user_s is not None:
        metrics.append(
            _metric(
                "jobferry",
                "cpu_user_seconds",
                "CPU Time (User)",
                f"{job.cpu_user_s:.3f} seconds",
                f"{job.cpu_user_s:.7f}",
            )
        )
    if job.cpu_sys_s is not None:
        metrics.append(
            _metric(
                "jobferry",
                "cpu_system_seconds",
                "CPU Time (System)",
                f"{job.cpu_sys_s:.3f} seconds",
                f"{job.cpu_sys_s:.7f}",
            )
        )
    if job.peak_rss_kb is not None:
        peak = job.peak_rss_kb * 1024
        # Galaxy's own memory metric (its cgroup plugin), so Galaxy clients find it.
        metrics.append(
            _metric(
                "cgroup",
                "memory.max_usage_in_bytes",
                "Max memory usage recorded",
                _human_bytes(peak),
                peak,
            )
        )
    return metrics


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


def _summary(row: Any, *, admin: bool, email: bool, admin_view: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {
        "model_class": "Job",
        "id": row.id,
        "state": row.state,
        "exit_code": row.exit_code,
        "create_time": iso(row.created_at),
        "update_time": iso(row.updated_at),
        "galaxy_version": GALAXY_VERSION_MAJOR,
        "tool_id": row.slug,
        "tool_version": tool_version(row.version, row.iteration),
        "history_id": row.history_id,
    }
    if admin:
        data["external_id"] = row.external_id
        data["command_line"] = shlex.join(str(a) for a in row.argv or [])
        data["traceback"] = None
    if email:
        data["user_email"] = row.email
    if admin_view:
        data["handler"] = row.node
        data["job_runner_name"] = row.runner
        data["info"] = row.state_reason
        data["session_id"] = None
        data["decoded_job_id"] = None
    return data


class GalaxyService:
    """Reads (and the cancel) of the Galaxy jobs and datasets API."""

    def __init__(self, core: Core, jobs: JobService) -> None:
        self.core = core
        self.jobs = jobs

    # --- listing ----------------------------------------------------------------------

    def list_jobs(self, principal: Principal, query: JobQuery) -> list[dict[str, Any]]:
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

    def summaries(self, principal: Principal, job_ids: Sequence[str]) -> list[dict[str, Any]]:
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

    def view(self, principal: Principal, job_id: str) -> JobView:
        check_id(job_id, "job")
        try:
            return self.jobs.get(principal, job_id)  # another user's job: not found too
        except NotFoundError:
            raise NotFoundError("No such job found.") from None

    def _version_of(self, session: Session, job: Job) -> tuple[str | None, str | None]:
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

    def show_job(self, principal: Principal, job_id: str, *, full: bool = False) -> dict[str, Any]:
        """``GET /api/jobs/{id}``: the element view, with ``full`` the logs (and metrics)."""
        view = self.view(principal, job_id)
        return self.element(principal, view, full=full)

    def element(self, principal: Principal, view: JobView, *, full: bool) -> dict[str, Any]:
        job = view.job
        admin = principal.is_admin
        with self.core.sessions.begin() as session:
            slug, version = self._version_of(session, job)
            email = None
            if admin and full:
                email = session.execute(select(User.email).where(User.id == job.user_id)).scalar()
        input_params = {f.param for f in view.files if f.kind == "input" and f.param}
        data: dict[str, Any] = {
            "model_class": "Job",
            "id": job.id,
            "state": job.state,
            "exit_code": job.exit_code,
            "create_time": iso(job.created_at),
            "update_time": iso(job.updated_at),
            "galaxy_version": GALAXY_VERSION_MAJOR,
            "tool_id": slug,
            "tool_version": version,
            "history_id": job.history_id,
        }
        if admin:
            data["external_id"] = job.external_id
            data["command_line"] = shlex.join(str(a) for a in job.argv or [])
            data["traceback"] = None
        data.update(
            {
                "command_version": None,
                "copied_from_job_id": None,
                "user_id": job.user_id,
                "params": {
                    name: json.dumps(value)
                    for name, value in (job.params or {}).items()
                    if name not in input_params
                },
                "inputs": {
                    name: {"id": f.id, "src": "hda", "uuid": None}
                    for name, f in dataset_names(view.files, "input")
                },
                "outputs": {
                    name: {"id": f.id, "src": "hda", "uuid": None}
                    for name, f in dataset_names(view.files, "output")
                },
                "output_collections": {},
            }
        )
        if full:
            stdout = self.jobs.read_log(view, "stdout") or ""
            stderr = self.jobs.read_log(view, "stderr") or ""
            data.update(
                {
                    "tool_stdout": stdout,
                    "tool_stderr": stderr,
                    "job_stdout": "",
                    "job_stderr": "",
                    "stdout": stdout,
                    "stderr": stderr,
                    "job_messages": [],
                    "dependencies": [],
                }
            )
            if admin:
                data["user_email"] = email
                data["job_metrics"] = job_metrics(job)
        return data

    def associations(self, principal: Principal, job_id: str, kind: str) -> list[dict[str, Any]]:
        """``/inputs`` or ``/outputs``: ``[{"name", "dataset": {"src": "hda", "id"}}]``."""
        view = self.view(principal, job_id)
        return [
            {"name": name, "dataset": {"src": "hda", "id": f.id}}
            for name, f in dataset_names(view.files, kind)
        ]

    def metrics(self, principal: Principal, job_id: str) -> list[dict[str, str]]:
        """``/metrics``: for admins; others get an empty list (Galaxy hides them too)."""
        view = self.view(principal, job_id)
        return job_metrics(view.job) if principal.is_admin else []

    def common_problems(self, principal: Principal, job_id: str) -> dict[str, bool]:
        view = self.view(principal, job_id)
        inputs = [f for f in view.files if f.kind == "input"]
        digests = [f.sha256 for f in inputs]
        return {
            "has_empty_inputs": any(f.size == 0 for f in inputs),
            "has_duplicate_inputs": len(set(digests)) != len(digests),
        }

    def destination_params(self, principal: Principal, job_id: str) -> dict[str, Any]:
        if not principal.is_admin:
            raise AdminRequiredError()
        job = self.view(principal, job_id).job
        return {
            "Runner": job.runner,
            "Runner Job ID": job.external_id,
            "Handler": job.node,
            "Destination": job.destination,
            "Cores": job.cores,
            "Memory (MB)": job.memory_mb,
            "GPUs": job.gpus,
            "Walltime (s)": job.walltime_s,
        }

    def cancel(self, principal: Principal, job_id: str) -> bool:
        """``DELETE /api/jobs/{id}``: True if this call stopped the job, False if it had
        already finished (a job being cancelled gets its kill re-sent, still False)."""
        job = self.view(principal, job_id).job
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

    def _dataset(self, principal: Principal, dataset_id: str) -> tuple[JobFile, Job]:
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

    def datasets(self, principal: Principal, dataset_ids: Sequence[str]) -> list[JobFile]:
        """Job files by id for reuse as inputs: each the caller's own (any for an admin)."""
        return [self._dataset(principal, i)[0] for i in dataset_ids]

    def dataset_file(self, job_file: JobFile, job_dir: str | None = None) -> Path:
        """Where a job file lies, confined to its job's directory."""
        if job_dir is None:
            with self.core.sessions.begin() as session:
                job_dir = session.execute(
                    select(Job.job_dir).where(Job.id == job_file.job_id)
                ).scalar_one()
        base = Path(job_dir) / ("work" if job_file.kind == "output" else "inputs")
        path = confine(base, job_file.name)
        if not path.is_file():
            raise NotFoundError("The dataset's file is no longer available.")
        return path

    def show_dataset(self, principal: Principal, dataset_id: str) -> dict[str, Any]:
        """``GET /api/datasets/{id}``: a job file as a history dataset."""
        job_file, job = self._dataset(principal, dataset_id)
        ext = _extension(job_file.name)
        return {
            "model_class": "HistoryDatasetAssociation",
            "id": job_file.id,
            "name": job_file.name.rsplit("/", 1)[-1],
            "history_id": job.history_id,
            "hid": None,
            "state": "ok",
            "extension": ext,
            "file_ext": ext,
            "file_size": job_file.size,
            "create_time": iso(job_file.created_at),
            "update_time": iso(job_file.created_at),
            "deleted": False,
            "purged": False,
            "visible": True,
            "hda_ldda": "hda",
            "download_url": f"/api/datasets/{job_file.id}/display",
            "creating_job": job.id,
            "genome_build": "?",
            "misc_info": "",
            "misc_blurb": _human_bytes(job_file.size),
            "peek": None,
            "uuid": None,
            "hashes": [
                {
                    "model_class": "DatasetHash",
                    "hash_function": "SHA-256",
                    "hash_value": job_file.sha256,
                    "extra_files_path": None,
                }
            ],
        }

    def dataset_path(self, principal: Principal, dataset_id: str) -> tuple[Path, JobFile]:
        """The file behind ``GET /api/datasets/{id}/display`` (owner or admin)."""
        job_file, job = self._dataset(principal, dataset_id)
        self.core.require_files_here(job.home_node)
        return self.dataset_file(job_file, job.job_dir), job_file


def job_input_rows(session: Session, job_ids: Sequence[str]) -> dict[str, list[tuple[Any, str]]]:
    """(param, sha256) of every input file of the given jobs."""
    found: dict[str, list[tuple[Any, str]]] = {i: [] for i in job_ids}
    for start in range(0, len(job_ids), 500):
        chunk = list(job_ids[start : start + 500])
        rows = session.execute(
            select(JobFile.job_id, JobFile.param, JobFile.sha256).where(
                and_(JobFile.job_id.in_(chunk), JobFile.kind == "input")
            )
        ).all()
        for job_id, param, digest in rows:
            found[job_id].append((param, digest))
    return found


def parse_query_datetime(text: str, name: str) -> datetime:
    """``YYYY-MM-DD`` (that day's 00:00) or an ISO datetime, as aware UTC. Raises
    ValidationError. A datetime without zone is UTC; one with a zone is converted."""
    value = text.strip()
    try:
        if len(value) == 10:
            parsed = datetime.strptime(value, "%Y-%m-%d")
        else:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "T", 1))
    except ValueError:
        raise ValidationError(
            f"{name}: expected a date (YYYY-MM-DD) or an ISO 8601 datetime",
            errors={name: ["Enter a date (YYYY-MM-DD) or an ISO 8601 datetime."]},
        ) from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)
