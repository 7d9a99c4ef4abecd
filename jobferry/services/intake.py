"""Taking in a submission: validate, place, store, then start or queue.

``Intake.submit`` reads top to bottom (blocking: a worker thread calls it):

1. check the form (``submission.check_form``) and the disk guard;
2. resolve the script version (``submission.ScriptVersions``);
3. ``_place``: choose a destination (routing, node fit);
4. ``_job_row``: check the command against the parser (``argspec.bounded``);
5. ``_reserve``: ask the ``Dispatcher`` for a free slot;
6. ``_store``: the uploads moved in and one insert (``store.records.GroupInserter``);
7. ``_start_or_queue``.

``Intake.submit_async`` is the same on the event loop, for the usual submission
(no uploads, a script version resolved in the last seconds, a command small
enough to check inline, a destination this node can run): steps 1-5 there, then
the row joins the loop's batch (``GroupInserter.insert_async``: one transaction
in one worker-thread hop for every submission that arrived meanwhile) and the
answer waits for its commit. Anything else (a version to read from the store, a
long command for the worker processes, uploads to move, a job started at once,
whose spawn blocks) goes through ``submit`` in a worker thread, as before. Per
submission that saves the hop to a worker thread and back, which cost more than
the checks themselves.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from typing import Any

from jobferry.argspec.bounded import CommandChecker, CommandLimits
from jobferry.argspec.tokens import arg_budget
from jobferry.errors import UnsatisfiableError
from jobferry.request_ids import fresh_uuid4
from jobferry.services.core import Core, Principal
from jobferry.services.disk import DiskGuard
from jobferry.services.logfields import job_fields
from jobferry.services.nodes import fits_a_live_node
from jobferry.services.ports import Dispatcher
from jobferry.services.routing import Placement, ResourceRequest, check_fits
from jobferry.services.submission import (
    PlannedUploads,
    ResolvedVersion,
    ScriptVersions,
    SubmitRequest,
    check_form,
)
from jobferry.staging.forms import UploadedFile
from jobferry.staging.paths import make_job_dir
from jobferry.store.models import Job, JobState, new_id, utcnow
from jobferry.store.records import Attached, GroupInserter

logger = logging.getLogger("jobferry.services.jobs")


@dataclass
class _Prepared:
    """A validated submission, ready to store."""

    job_id: str
    slug: str
    user_id: str
    placement: Placement
    planned: PlannedUploads
    job: dict[str, Any]
    param_of: dict[str, str]
    reservation: Any


class Intake:
    """The submission path of ``JobService`` (see the module docstring)."""

    def __init__(self, core: Core, dispatcher: Dispatcher[Any], disk: DiskGuard) -> None:
        self.core = core
        self.dispatcher = dispatcher
        self.disk = disk
        self.versions = ScriptVersions(core)
        self._inserter = GroupInserter(core.sessions, core.executor)
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

    def submit(
        self, principal: Principal, request: SubmitRequest, uploads: list[UploadedFile]
    ) -> str:
        """Validate and queue (or start) a job; return its id (``JobService.submit``)."""
        self.disk.require("new submissions")
        name, iteration = check_form(request.job_name, request.iteration)
        version = self.versions.resolve(request.slug, request.version or None, iteration)
        placement = self._place(principal, request, version)
        prepared = self._prepare(principal, request, uploads, name, version, placement)
        row = self._store(prepared)
        self._submitted(prepared, row)
        self._start_or_queue(row, prepared.reservation)
        return prepared.job_id

    async def submit_async(
        self, principal: Principal, request: SubmitRequest, uploads: list[UploadedFile]
    ) -> str:
        """``submit`` from the event loop: the usual submission is checked on the loop
        and stored with the loop's batch; any other goes to a worker thread."""
        prepared = self._prepare_now(principal, request, uploads)
        if prepared is None:
            return await self.core.call(self.submit, principal, request, uploads)
        if prepared.reservation is not None:  # started at once: the spawn blocks
            await self.core.call(self._store_and_start, prepared)
            return prepared.job_id
        row = await self._inserter.insert_async(prepared.job, [])
        self._submitted(prepared, row)
        self._start_or_queue(row, None)
        return prepared.job_id

    def _prepare_now(
        self, principal: Principal, request: SubmitRequest, uploads: list[UploadedFile]
    ) -> _Prepared | None:
        """Steps 1-5 without blocking, or None when one of them would block."""
        if uploads:
            return None
        self.disk.require("new submissions")  # a reading cached for seconds
        name, iteration = check_form(request.job_name, request.iteration)
        version = self.versions.cached(request.slug, request.version or None, iteration)
        if version is None or not self.checker.is_inline(request.command or ""):
            return None
        placement, misfit = self._route(principal, request, version)
        if misfit is not None:
            return None  # whether another node could run it is a store read
        return self._prepare(principal, request, uploads, name, version, placement)

    def _store_and_start(self, prepared: _Prepared) -> None:
        row = self._store(prepared)
        self._submitted(prepared, row)
        self._start_or_queue(row, prepared.reservation)

    def _submitted(self, prepared: _Prepared, row: dict[str, Any]) -> None:
        """The submission's log line: DEBUG, because on the event loop, under load,
        one line through the daemon's handler (context, redaction, write) measured
        ~110 us, a tenth of the submission; the job's start and end are INFO lines,
        and ``logging.access_log`` logs every request."""
        destination = prepared.placement.destination
        if not logger.isEnabledFor(logging.DEBUG):
            return
        logger.debug(
            "job %s submitted by user %s: script %s, %s, %d file(s)",
            prepared.job_id,
            prepared.user_id,
            prepared.slug,
            destination,
            len(prepared.planned.placed),
            extra=job_fields(
                prepared.job_id, row.get("attempt", 0), self.core.node_name, destination
            ),
        )

    def _route(
        self, principal: Principal, request: SubmitRequest, version: ResolvedVersion
    ) -> tuple[Placement, UnsatisfiableError | None]:
        """Where the routing rules and the client's request send the job, and why it
        does not fit this node (None when it does)."""
        placement = self.core.router.place(
            request.resources,
            slug=request.slug,
            group=version.group,
            username=principal.username,
            tool_id=request.tool_id,
        )
        try:
            check_fits(placement, self.core.capacity_for(placement.runner))
        except UnsatisfiableError as exc:
            return placement, exc
        return placement, None

    def _place(
        self, principal: Principal, request: SubmitRequest, version: ResolvedVersion
    ) -> Placement:
        """Where the job goes (``_route``). Raises UnsatisfiableError when no node
        sharing the store could ever run it."""
        placement, misfit = self._route(principal, request, version)
        if misfit is not None:
            # Too large for this node: another node sharing the store may hold it.
            r = placement.resources
            if placement.runner not in ("local", "docker") or not fits_a_live_node(
                self.core, r.cores, r.memory_mb, r.gpus
            ):
                raise misfit
        return placement

    # --- jobs built elsewhere (a TES task) ----------------------------------------------

    def place_request(self, principal: Principal, request: ResourceRequest) -> Placement:
        """Where a job that names its destination goes, checked as ``_place`` checks a
        script's (UnsatisfiableError when no node sharing the store could run it)."""
        placement = self.core.router.place(
            request, slug="", group=None, username=principal.username
        )
        try:
            check_fits(placement, self.core.capacity_for(placement.runner))
        except UnsatisfiableError:
            r = placement.resources
            if placement.runner not in ("local", "docker") or not fits_a_live_node(
                self.core, r.cores, r.memory_mb, r.gpus
            ):
                raise
        return placement

    def store_and_queue(self, job: dict[str, Any], attached: list[Attached]) -> dict[str, Any]:
        """Store a job row built outside the script path (a TES task), with its
        *attached* rows in the same transaction, and tell the dispatcher it queued.

        Never started directly (no ``_reserve``): a direct start hands the job to its
        destination's runner, and such a job may run through another runner than its
        destination's (a TES task on a docker destination runs its task program
        through the local runner); the scheduler's claim, woken at once, starts it
        with the job's own runner. Blocking: call it in a worker thread."""
        self.disk.require("new submissions")
        row = self._inserter.insert(job, [], attached)
        self._start_or_queue(row, None)
        return row

    def _prepare(
        self,
        principal: Principal,
        request: SubmitRequest,
        uploads: list[UploadedFile],
        name: str,
        version: ResolvedVersion,
        placement: Placement,
    ) -> _Prepared:
        """Steps 4 and 5: the job's row, its command checked, and a slot if one is free."""
        job_id = new_id()
        planned = PlannedUploads.of(self.core.job_dir(job_id), uploads)
        job, param_of = self._job_row(job_id, principal, request, name, version, placement, planned)
        # A free slot and nothing waiting (the dispatcher's call): the job is stored
        # already claimed by this node and started by this thread, saving a claim round.
        reservation = self._reserve(placement, job)
        return _Prepared(
            job_id,
            request.slug,
            principal.user_id,
            placement,
            planned,
            job,
            param_of,
            reservation,
        )

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
            "uuid": fresh_uuid4(),
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

    def _store(self, prepared: _Prepared) -> dict[str, Any]:
        """Move the uploads into the job's directory and insert the job with its input
        files; return its row. On any failure nothing is left (and the reservation is
        given back)."""
        planned, reservation = prepared.planned, prepared.reservation
        try:
            if planned.placed or reservation is not None:
                # Else made when the job is claimed (or its files written).
                make_job_dir(planned.job_dir)
            planned.move_in()
            return self._inserter.insert(prepared.job, planned.file_rows(prepared.param_of))
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
