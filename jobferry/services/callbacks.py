"""Callbacks: a job's wrapper reporting its state (``POST /api/jobs/{id}/state``).

A wrapper that ran without the daemon's disk (``staging: remote``), or any
wrapper that can reach the daemon, reports ``running`` when the command starts
and ``finished`` (exit code, reason, metrics) once its outputs are posted. The
daemon learns of the end at once instead of at the runner's next poll; polling
stays the fallback for a callback that never arrives.

Authorised by the job's ``job_key`` only. Every report names its attempt and
is fenced by it: a report of an older attempt, a duplicate, a late or an
out-of-order one is answered ``accepted: false`` with the job's current state
and changes nothing, and no report moves a job backwards or out of a terminal
state (the transitions are conditional UPDATEs). A ``finished`` report of a
command killed by a signal (exit code > 128), or of a job the runner stopped
itself, is ``deferred``: the runner's own status, which knows why (out of
memory, walltime, cancel), records that end.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from jobferry.errors import (
    AttributeMissingError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)
from jobferry.runners.base import RunMetrics, RunSpec, RunState, RunStatus
from jobferry.runners.wrapper import read_kill
from jobferry.services.core import Core
from jobferry.services.execution import ClaimedJob, ExecutionService
from jobferry.services.job_files import INVALID_KEY, MISSING_KEY, check_job_id
from jobferry.services.ports import NO_JOB_EVENTS, JobEvents
from jobferry.store import transitions
from jobferry.store.models import TERMINAL_STATES, Job, JobState

REPORTS = ("running", "finished")
METRICS = ("wall_s", "cpu_user_s", "cpu_sys_s", "peak_rss_kb")


def _int(payload: Mapping[str, Any], key: str, *, required: bool = False) -> int | None:
    value = payload.get(key)
    if value is None:
        if required:
            raise ValidationError(f"{key} is required", errors={key: ["This field is required."]})
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not -(2**31) <= value < 2**31:
        raise ValidationError(f"{key} must be an integer", errors={key: ["Enter a whole number."]})
    return value


def parse_report(payload: Any) -> tuple[str, int, int | None, str | None, RunMetrics]:
    """(state, attempt, exit code, reason, metrics) of a report. Raises ValidationError."""
    if not isinstance(payload, Mapping):
        raise ValidationError("the body must be a JSON object")
    state = payload.get("state")
    if state not in REPORTS:
        raise ValidationError(
            f"state must be one of {', '.join(REPORTS)}",
            errors={"state": [f"Expected one of: {', '.join(REPORTS)}."]},
        )
    attempt = _int(payload, "attempt", required=True)
    assert attempt is not None
    exit_code = _int(payload, "exit_code", required=state == "finished")
    reason = payload.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > 2000):
        raise ValidationError("reason must be a string of at most 2000 characters")
    raw = payload.get("metrics") or {}
    if not isinstance(raw, Mapping):
        raise ValidationError("metrics must be an object")
    values: dict[str, float | None] = {}
    for key in METRICS:
        value = raw.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or value < 0
        ):
            raise ValidationError(f"metrics.{key} must be a non-negative number")
        values[key] = None if value is None else float(value)
    peak = values["peak_rss_kb"]
    metrics = RunMetrics(
        values["wall_s"],
        values["cpu_user_s"],
        values["cpu_sys_s"],
        None if peak is None else int(peak),
    )
    return str(state), attempt, exit_code, reason, metrics


class CallbackService:
    def __init__(
        self, core: Core, execution: ExecutionService, events: JobEvents = NO_JOB_EVENTS
    ) -> None:
        """*execution* records the ends reports bring; *events* hears of the jobs a
        report ended (``services.ports``: the daemon's scheduler, which stops waiting
        on their runners; or nobody)."""
        self.core = core
        self.events = events
        self.execution = execution

    async def receive(self, job_id: str, job_key: str | None, payload: Any) -> dict[str, Any]:
        """Apply one report (``report``, in the worker pool); if it ended the job, tell
        whoever follows the job's runner and wake whoever waits on the job. On the
        event loop."""
        answer = await self.core.call(self.report, job_id, job_key, payload)
        if answer["accepted"] and not answer.get("deferred") and answer["state"] != "running":
            self.events.job_callback(job_id)
            self.core.job_changed(job_id)
        return answer

    def report(self, job_id: str, job_key: str | None, payload: Any) -> dict[str, Any]:
        """Apply one report; return ``{"state", "accepted"}``. Blocking.

        Raises MalformedIdError / AttributeMissingError / PermissionDeniedError
        (wrong key, checked before the job is looked up) / NotFoundError /
        ValidationError (a malformed report).
        """
        check_job_id(job_id)
        if not job_key:
            raise AttributeMissingError(MISSING_KEY)
        if not job_key.isascii() or not self.core.check_job_key(job_id, job_key):
            raise PermissionDeniedError(INVALID_KEY)
        state, attempt, exit_code, reason, metrics = parse_report(payload)
        with self.core.sessions.begin() as session:
            row = session.execute(
                select(Job.state, Job.attempt, Job.job_dir, Job.runner, Job.destination).where(
                    Job.id == job_id
                )
            ).first()
        if row is None:
            raise NotFoundError("Job not found.")
        current, current_attempt, job_dir, runner, destination = row
        terminal = {s.value for s in TERMINAL_STATES}
        if current in terminal or attempt != current_attempt:
            return {"state": current, "accepted": False}
        if state == "running":
            try:
                with self.core.sessions.begin() as session:
                    transitions.update_running_job(
                        session, job_id, attempt, started_at=datetime.now(UTC)
                    )
            except ConflictError:
                return {"state": self._state(job_id), "accepted": False}
            return {"state": JobState.RUNNING.value, "accepted": True}
        if (exit_code is not None and exit_code > 128) or read_kill(
            str(Path(job_dir) / "result")
        ) is not None:
            # Killed by a signal, or stopped by the runner (cancel, walltime): only the
            # runner can tell why (out of memory, walltime, node failure), so its own
            # status records this end; the report changes nothing.
            return {"state": current, "accepted": True, "deferred": True}
        status = RunStatus(
            RunState.EXITED,
            exit_code=exit_code,
            reason=reason,
            finished_at=datetime.now(UTC).timestamp(),
            metrics=metrics,
        )
        work = str(Path(job_dir) / "work")
        spec = RunSpec(job_id, (), work, "", "", "", destination=destination)
        claimed = ClaimedJob(job_id, attempt, runner, spec)
        try:
            final = self.execution.finish(claimed, status)
        except ConflictError:
            return {"state": self._state(job_id), "accepted": False}
        return {"state": final.state, "accepted": True}

    def _state(self, job_id: str) -> str:
        with self.core.sessions.begin() as session:
            return str(session.execute(select(Job.state).where(Job.id == job_id)).scalar())
