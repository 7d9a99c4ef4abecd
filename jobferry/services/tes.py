"""The GA4GH TES face's behaviour: tasks as jobs (create, list, get, cancel), service-info.

A task is a job like any other (the same ``jobs`` row, claims, nodes, cancel,
recovery and retention) with its document beside it in ``tes_tasks``, stored in
the job's own transaction (``Intake.store_and_queue``). How the job runs and how
its TES state is read back: ``services.tes_plan``. What the documents look like
and how a task is shown: ``services.tes_doc`` and ``services.tes_views`` (pure).

Visibility is the other faces' rule: a user sees their own tasks, an admin every
task, and another user's task is "not found" (404), so ids cannot be probed. An id
that names a job which is not a TES task is not found either.

HTTP Basic credentials (py-tes's ``user=``/``password=``) are a user name (or
email) with a password or one of the user's API keys. They are counted by the
same failure limiter as Galaxy's baseauth (``UserService.failures``), and a
verified password is remembered for ``api.key_cache_s`` as keys are, so a client
polling a task costs at most one password hash per that time, not one per poll.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Select, Table, literal, select, tuple_

from jobferry import __version__
from jobferry.errors import (
    ConflictError,
    NodeDownError,
    NotAllowedByConfigError,
    NotFoundError,
    ValidationError,
)
from jobferry.services import tes_params, tes_plan
from jobferry.services.auth import AuthService
from jobferry.services.basic_auth import BasicAuthenticator
from jobferry.services.core import Core, Principal
from jobferry.services.jobs import JobService
from jobferry.services.routing import ResourceRequest
from jobferry.services.tes_doc import (
    TES_STATES,
    decode_page_token,
    encode_page_token,
    keep_supported_backend_parameters,
    rfc3339,
    tag_filter,
    tags_match,
    task_state,
    validate_task,
)
from jobferry.services.tes_views import TaskRecord, attempt_notes, render, service_info
from jobferry.services.users import UserService
from jobferry.staging.paths import make_job_dir
from jobferry.store.models import Job, JobState, TesTask, new_id, utcnow

logger = logging.getLogger(__name__)

#: The list's page size when the client names none, and the largest it may name.
DEFAULT_PAGE_SIZE = 256
MAX_PAGE_SIZE = 2047
#: Rows one list request reads at most while filtering in memory (tags, exact state):
#: past it the page ends early, with a token to go on from where it stopped.
MAX_SCANNED = 10_000
#: Name of a task created without one (jobs need a name).
DEFAULT_NAME = "tes-task"

_TASKS: Table = TesTask.__table__  # type: ignore[assignment]
#: What an attempt's program says of where it ran (its state file's ``metadata``).
_RAN = ("node", "host")


@dataclass(frozen=True)
class ListQuery:
    """``GET /tasks``'s parameters, as the client sent them."""

    name_prefix: str | None = None
    state: str | None = None
    tag_keys: Sequence[str] = ()
    tag_values: Sequence[str] = ()
    page_size: int | None = None
    page_token: str | None = None
    view: str = "MINIMAL"


@dataclass(frozen=True)
class TaskPage:
    tasks: list[dict[str, Any]]
    next_page_token: str | None


class TesService:
    def __init__(self, core: Core, jobs: JobService, auth: AuthService, users: UserService) -> None:
        self.core = core
        self.jobs = jobs
        self.auth = auth
        self.users = users
        self._basic = BasicAuthenticator(core, auth, users)

    # --- authentication ---------------------------------------------------------------

    def authenticate_basic(self, identity: str, secret: str, client: str = "") -> Principal:
        """The user named by HTTP Basic credentials (``BasicAuthenticator``)."""
        return self._basic.authenticate(identity, secret, client)

    # --- service-info -------------------------------------------------------------------

    def service_info(self, base_url: str) -> dict[str, Any]:
        """``GET /service-info``; *base_url*: where clients reach this server (the
        organization's URL, which service-info requires to be one)."""
        tes = self.core.config.tes
        storage = [f"file://{root}" for root in tes.file_roots]
        storage += [f"{scheme}://{host}" for host in tes.http_hosts for scheme in ("http", "https")]
        return service_info(
            name="jobferry",
            version=__version__,
            storage=storage,
            backend_parameters=tes_params.advertised(self.core.config),
            organization_url=base_url,
            description="jobferry's GA4GH TES face: each task runs as a jobferry job.",
        )

    def _require_enabled(self) -> None:
        if not self.core.config.tes.enabled:
            raise NotAllowedByConfigError("The TES face is not enabled here (tes.enabled).")

    # --- create -------------------------------------------------------------------------

    def create(self, principal: Principal, raw: object) -> str:
        """Validate a task document, store it as a queued job, return its id.

        Raises ValidationError (400, naming the field; also an unknown or unusable
        destination, or an unsupported backend parameter with
        ``backend_parameters_strict``), UnsatisfiableError, InsufficientStorageError."""
        self._require_enabled()
        config = self.core.config
        doc = validate_task(raw, max_content_bytes=config.tes.max_content_kb * 1024)
        resources = doc.get("resources") or {}
        # The destination: the task's own parameter, else the first routing rule
        # that matches it (tes, image, user), else tes.destination, else routing.default.
        name = tes_params.requested_destination(doc) or self.core.router.route_task(
            (str(executor["image"]) for executor in doc["executors"]), principal.username
        )
        intake = self.jobs.intake
        intake.disk.require("new submissions")
        dest = config.destinations.get(name)
        if dest is None:
            known = ", ".join(sorted(config.destinations))
            raise ValidationError(
                f"resources.backend_parameters.destination: unknown destination {name!r} "
                f"(known: {known})"
            )
        chosen = tes_params.choose(config, dest, doc)  # strict: unsupported ones refused
        given = resources.get("backend_parameters") or {}
        applied = [key for key in given if key not in chosen.unsupported]
        doc = keep_supported_backend_parameters(doc, applied)  # not stored: the spec
        command = tes_plan.container_command(config, name, dest)
        tes_plan.check_disk(doc, self.core.jobs_path)
        cpu = resources.get("cpu_cores")
        placement = intake.place_request(
            principal,
            ResourceRequest(
                destination=name,
                cores=int(cpu) if cpu is not None else None,
                memory_mb=tes_plan.memory_mb(doc, None),
            ),
        )
        job_id = new_id()
        job_dir = self.core.job_dir(job_id)
        cores = placement.resources.cores
        memory = placement.resources.memory_mb
        plan = tes_plan.build_plan(
            config,
            job_id=job_id,
            job_dir=job_dir,
            doc=doc,
            command=command,
            dest=dest,
            cores=cores,
            memory=memory,
            network=chosen.network,
        )
        now = utcnow()
        title = str(doc.get("name") or DEFAULT_NAME)[:255]
        job: dict[str, Any] = {
            "id": job_id,
            "uuid": str(uuid.uuid4()),
            "user_id": principal.user_id,
            "script_version_id": None,
            "name": title,
            "description": doc.get("description"),
            "command": "",
            "argv": [
                config.interpreter,
                str(tes_plan.TES_TASK_PROGRAM),
                str(tes_plan.plan_path(job_dir)),
            ],
            "params": {},
            "home_node": self.core.node_name,
            # The task program starts the containers itself: see tes_plan's docstring
            # (a destination that cannot was refused by container_command).
            "runner": tes_plan.job_runner(dest),
            "destination": placement.destination,
            "cores": cores,
            # The containers get the memory. A Slurm job has it too, as its allocation
            # (--mem; else Slurm gives it the whole node's), never as the wrapper's
            # address-space cap (tes_plan.runs_task); a local job has none.
            "memory_mb": memory if dest.runner == "slurm" else None,
            "gpus": placement.resources.gpus,
            "walltime_s": placement.resources.walltime_s,
            "runner_options": chosen.runner_options,  # slurm's partition, qos
            "job_dir": str(job_dir),
            "created_at": now,
            "updated_at": now,
        }
        task: dict[str, Any] = {
            "job_id": job_id,
            "user_id": principal.user_id,
            "name": str(doc.get("name") or ""),
            "doc": doc,
            "tags": dict(doc.get("tags") or {}),
            "notes": tes_params.note(chosen),
            "created_at": now,
        }
        try:
            make_job_dir(job_dir)
            tes_plan.write_plan(job_dir, plan)
            intake.store_and_queue(job, [(_TASKS, task)])
        except BaseException:
            shutil.rmtree(job_dir, ignore_errors=True)
            raise
        logger.info("TES task %s created by %s on %s", job_id, principal.username, name)
        return job_id

    # --- reading ------------------------------------------------------------------------

    def _visible(self, principal: Principal, stmt: Select[Any]) -> Select[Any]:
        return stmt if principal.is_admin else stmt.where(_TASKS.c.user_id == principal.user_id)

    def _row(self, principal: Principal, task_id: str, *, with_doc: bool) -> Any:
        if not task_id or len(task_id) > 64:
            raise NotFoundError(f"no task with id {task_id!r}")
        stmt = self._columns(with_doc).where(_TASKS.c.job_id == task_id)
        with self.core.sessions.read() as connection:
            row = connection.execute(self._visible(principal, stmt)).first()
        if row is None:
            raise NotFoundError(f"no task with id {task_id!r}")
        return row

    @staticmethod
    def _columns(with_doc: bool) -> Select[Any]:
        j = Job.__table__.c
        columns = [
            _TASKS.c.job_id,
            _TASKS.c.created_at,
            _TASKS.c.tags,
            _TASKS.c.name,
            _TASKS.c.final_state,
            j.state,
            j.exit_code,
            j.state_reason,
            j.job_dir,
            j.node,
            j.home_node,
            j.destination,
            j.attempt,
            j.started_at,
            j.finished_at,
        ]
        if with_doc:
            columns += [_TASKS.c.doc, _TASKS.c.notes, _TASKS.c.final_logs]
        return select(*columns).join(Job.__table__, j.id == _TASKS.c.job_id)

    def get(
        self, principal: Principal, task_id: str, view: str = "MINIMAL", *, here: bool = False
    ) -> dict[str, Any]:
        """``GET /tasks/{id}``: the task in *view* (ValidationError for an unknown view).

        A running task whose files are on another live node (``node.shared_filesystem``
        false) raises ElsewhereError: its state and logs are in files only that node
        reads, so the face asks it (``api.tes``). With *here* (that node did not answer,
        or this is its answer being asked for), the task is shown from the store alone."""
        self._require_enabled()
        _check_view(view)
        row = self._row(principal, task_id, with_doc=view != "MINIMAL")
        if not here and self._elsewhere(row):
            try:
                self.core.require_files_here(row.home_node)
            except NodeDownError:
                pass  # shown from the store: it is requeued once the node is declared dead
        return render(self._record(row, view), view)

    def _elsewhere(self, row: Any) -> bool:
        """Whether *row*'s running task writes its state files on another node's disk."""
        return (
            row.final_state is None
            and row.state in (JobState.RUNNING.value, JobState.DELETING.value)
            and not self.core.config.node.shared_filesystem
            and row.home_node not in (None, self.core.node_name)
        )

    def _record(self, row: Any, view: str) -> TaskRecord:
        """The task as its row says, with its attempts' state files: kept in the row once
        its job ended (``services.tes_end``), else read from the job's directory (the
        current attempt's alone when only the state is wanted) if it is on this node's
        disk; a task running on another node (``_elsewhere``) shows its job's facts."""
        if row.final_state is not None:
            state = str(row.final_state)
            files = list(row.final_logs or []) if view != "MINIMAL" else []
        else:
            job_dir = Path(row.job_dir)
            # Its files on another node's disk (no shared file system): not read here,
            # whatever this node's disk holds at that path. Claimed, it has begun.
            mine = not self._elsewhere(row)
            current = None
            if mine and (view != "MINIMAL" or row.state in tes_plan.NEEDS_PHASE):
                current = tes_plan.read_state(job_dir, row.attempt)
            phase = current.get("phase") if current else None
            if not mine and row.state == JobState.RUNNING.value:
                phase = "INITIALIZING"
            state = task_state(row.state, row.exit_code, phase)
            files = []
            if mine and view != "MINIMAL" and row.attempt > 0:
                files = [tes_plan.read_state(job_dir, n) for n in range(1, row.attempt)]
                files.append(current)
        attempts = self._attempts(row, state, files) if view != "MINIMAL" else []
        doc = row.doc if view != "MINIMAL" else {}
        return TaskRecord(row.job_id, state, doc, row.created_at, attempts)

    def _attempts(
        self, row: Any, state: str, files: list[dict[str, Any] | None]
    ) -> list[dict[str, Any]]:
        """The task's logs, one per attempt: its state file with the job's facts. A
        requeued attempt says why it ended and where (its note: ``tes_end``); the last
        one without a file is shown once the job ended or requeued it (never started)."""
        ended = row.state in (JobState.OK.value, JobState.ERROR.value, JobState.DELETED.value)
        if files and files[-1] is None and not ended:
            if not attempt_notes(row.notes, len(files)).ended:  # else it was requeued
                files = files[:-1]  # the current attempt has not begun yet
        queued = row.state in (JobState.NEW.value, JobState.QUEUED.value)  # requeued
        attempts = []
        for number, state_file in enumerate(files, start=1):
            last = number == len(files) and number == row.attempt and not queued
            attempt = dict(state_file or {})
            if state_file is None and last:
                attempt.update(start_time=rfc3339(row.started_at))
                attempt.update(end_time=rfc3339(row.finished_at))
            notes = attempt_notes(row.notes, number)
            system_logs = notes.shared + [str(s) for s in attempt.get("system_logs") or []]
            system_logs += notes.ended  # why a requeued attempt ended (tes_end)
            if not last and not notes.ended:
                system_logs.append(f"attempt {number} did not end: the task was requeued")
            elif last and state == "SYSTEM_ERROR" and row.state_reason:
                system_logs.append(str(row.state_reason))
            attempt["system_logs"] = system_logs
            attempt.setdefault("outputs", [])
            attempt.setdefault("logs", [])
            ran = attempt.get("metadata")  # the program's: node and host (tes_task)
            metadata = {"destination": str(row.destination), "attempt": str(number)}
            if last:  # the job's node is the current attempt's
                metadata["node"] = str(row.node or "")
            metadata.update(notes.metadata)
            if isinstance(ran, dict):
                metadata.update({k: v for k, v in ran.items() if k in _RAN and v})
            attempt["metadata"] = metadata
            attempts.append(attempt)
        return attempts

    def list_tasks(self, principal: Principal, query: ListQuery) -> TaskPage:
        """``GET /tasks``: newest first (then by id), filtered, a page at a time.

        ``name_prefix`` and the job states a TES ``state`` can come from are read in
        SQL; the tags and the exact state (INITIALIZING and RUNNING, EXECUTOR_ERROR and
        SYSTEM_ERROR share job states) are checked on each candidate. A page holds
        ``page_size`` tasks, or ends early after ``MAX_SCANNED`` candidates, with a
        token in both cases when more may follow."""
        self._require_enabled()
        view = query.view
        _check_view(view)
        size = DEFAULT_PAGE_SIZE if query.page_size is None else query.page_size
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise ValidationError(f"page_size: must be between 1 and {MAX_PAGE_SIZE}")
        if len(query.tag_values) > len(query.tag_keys):
            raise ValidationError("tag_value: more tag_value than tag_key parameters")
        states = None
        if query.state is not None:
            states = tes_plan.JOB_STATES_OF.get(query.state, ())
            if query.state not in _TES_STATES:  # UNKNOWN, PAUSED, PREEMPTED: none here
                raise ValidationError(f"state: unknown state {query.state!r}")
        stmt = self._visible(principal, self._columns(view != "MINIMAL"))
        if query.name_prefix:
            escaped = query.name_prefix.replace("\\", "\\\\").replace("%", "\\%")
            escaped = escaped.replace("_", "\\_")
            stmt = stmt.where(_TASKS.c.name.like(escaped + "%", escape="\\"))
        if states is not None:
            stmt = stmt.where(Job.__table__.c.state.in_(list(states)))
        # The tags in SQL too (json_extract / ->>), so a page reads only matching rows;
        # tags_match below stays the rule (the spec's truth table).
        for key, value in tag_filter(query.tag_keys, query.tag_values).items():
            tag = _TASKS.c.tags[key].as_string()
            stmt = stmt.where(tag.is_not(None) if value is None else tag == value)
        after = decode_page_token(query.page_token) if query.page_token else None
        found: list[dict[str, Any]] = []
        scanned = 0
        last: tuple[datetime, str] | None = None
        batch = min(size + 1, 500)
        while True:
            page_stmt = stmt
            if after is not None:
                created, job_id = after
                # A row value, not OR-ed comparisons: both engines read it as a range
                # of the (created_at, job_id) index; SQLite walked the index from
                # the newest task down for the OR form (9.7 ms → 2.7 ms at 15,000 deep).
                page_stmt = page_stmt.where(
                    tuple_(_TASKS.c.created_at, _TASKS.c.job_id)
                    < tuple_(literal(created), literal(job_id))
                )
            page_stmt = page_stmt.order_by(
                _TASKS.c.created_at.desc(), _TASKS.c.job_id.desc()
            ).limit(batch)
            with self.core.sessions.read() as connection:
                rows = connection.execute(page_stmt).all()
            for row in rows:
                if scanned >= MAX_SCANNED and after is not None:  # enough for one request
                    return TaskPage(found, encode_page_token(*after))
                scanned += 1
                after = (row.created_at, row.job_id)
                if query.name_prefix and not str(row.name).startswith(query.name_prefix):
                    continue  # SQLite's LIKE ignores case
                if query.tag_keys and not tags_match(
                    row.tags or {}, list(query.tag_keys), list(query.tag_values)
                ):
                    continue
                record = self._record(row, view)
                if query.state is not None and record.state != query.state:
                    continue
                if len(found) == size:  # one more exists: the page ends at the last shown
                    assert last is not None
                    return TaskPage(found, encode_page_token(*last))
                found.append(render(record, view))
                last = (row.created_at, row.job_id)
            if len(rows) < batch:
                return TaskPage(found, None)

    # --- cancel -------------------------------------------------------------------------

    def cancel(self, principal: Principal, task_id: str) -> None:
        """``POST /tasks/{id}:cancel``: the job's cancel (queued: at once; running: its
        task program is stopped, and stops its container). A task that already ended
        is left as it is: cancelling it is not an error (clients cancel and poll)."""
        self._require_enabled()
        self._row(principal, task_id, with_doc=False)
        try:
            self.jobs.cancel(principal, task_id)
        except ConflictError:
            pass


_TES_STATES = frozenset(TES_STATES)


def _check_view(view: str) -> None:
    if view not in ("MINIMAL", "BASIC", "FULL"):
        raise ValidationError(f"view: must be MINIMAL, BASIC or FULL, not {view!r}")
