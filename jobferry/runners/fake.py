"""An in-memory runner for fast tests of the scheduler and daemon.

Owns nothing but dictionaries: no processes, no files. A test scripts each job's
outcome up front (``outcomes``/``default``) or holds jobs running and ends them
itself with ``finish``; every call is recorded in ``calls``.

The jobs themselves live in a ``FakeJobs`` (the stand-in for the processes,
containers or Slurm jobs of a real runner), so a second ``FakeRunner`` made with
the same ``FakeJobs`` is a restarted daemon: it finds and adopts the jobs the first
one started and follows them to the end the test gives them. It keeps the
``Runner`` contract the real runners keep (``tests/integration/
test_runner_contract_suite.py``): walltime, cancel, adoption and foreign handles
behave as they do there.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from dataclasses import dataclass
from typing import ClassVar

from jobferry.errors import JobferryError, RunnerError
from jobferry.runners.base import HandlePayload, RunHandle, Runner, RunSpec, RunState, RunStatus

logger = logging.getLogger(__name__)

EXITED_OK = RunStatus(RunState.EXITED, exit_code=0)


@dataclass(frozen=True)
class FakePayload(HandlePayload):
    """What a fake handle carries: the job id (empty in handles made by hand; the
    fake then names the job by the handle's external id)."""

    runner: ClassVar[str] = "fake"

    job_id: str = ""


class FakeJobs:
    """The fake's jobs, outside any one runner instance (as processes outlive a daemon).

    Runners made with the same ``FakeJobs`` see the same jobs; each runner made
    without one gets its own, and so knows only what it started or adopted.
    """

    def __init__(self) -> None:
        #: Guards everything here and the runners' own records (re-entrant: a runner
        #: holding it may end a job).
        self.lock = threading.RLock()
        self.ids = itertools.count(1)
        #: By external id: the job's handle, the spec it runs, its current status.
        self.handles: dict[str, RunHandle] = {}
        self.specs: dict[str, RunSpec] = {}
        self.status: dict[str, RunStatus] = {}
        self.waiters: dict[str, list[asyncio.Future[RunStatus]]] = {}

    def end(self, external_id: str, status: RunStatus) -> None:
        """End a job by itself (as a process exits), waking the waiters of every runner
        that follows it. Does nothing if it has ended already. Thread-safe.

        Raises:
            RunnerError: no job has *external_id*.
        """
        with self.lock:
            current = self.status.get(external_id)
            if current is None:
                raise RunnerError(f"unknown fake run {external_id}")
            if current.is_final:
                return
            if status.finished_at is None:
                status = RunStatus(
                    status.state, status.exit_code, status.reason, time.time(), status.metrics
                )
            self.status[external_id] = status
            for future in self.waiters.pop(external_id, []):
                if not future.done():  # a cancelled wait: its loop may be closed by now
                    future.get_loop().call_soon_threadsafe(_resolve, future, status)


class FakeRunner(Runner):
    """A runner whose jobs end when the test says so.

    Args:
        outcomes: Final status per job id, reported as soon as the job is
            submitted (or adopted).
        default: Final status for jobs not in *outcomes*; ``None`` keeps them
            ``RUNNING`` until ``finish``, ``cancel`` or their walltime.
        submit_errors: Errors ``submit`` raises per job id (e.g. ``SubmitError``).
        quick_submit: Claim it like the local runner (spawned in the claim's call).
        jobs: The jobs this runner shares with others (a restarted daemon's runner);
            None: its own.

    ``calls`` lists ``(method, job_id)`` for every call, in order. All methods are
    thread-safe; ``wait`` must run on an asyncio loop.
    """

    name = "fake"

    def __init__(
        self,
        outcomes: dict[str, RunStatus] | None = None,
        default: RunStatus | None = EXITED_OK,
        submit_errors: dict[str, JobferryError] | None = None,
        quick_submit: bool = False,
        jobs: FakeJobs | None = None,
    ) -> None:
        self.quick_submit = quick_submit
        self.outcomes = dict(outcomes or {})
        self.default = default
        self.submit_errors = dict(submit_errors or {})
        self.jobs = FakeJobs() if jobs is None else jobs
        self.calls: list[tuple[str, str]] = []
        #: The spec and the latest handle of each job id this runner submitted or adopted.
        self.specs: dict[str, RunSpec] = {}
        self.handles: dict[str, RunHandle] = {}
        self._lock = self.jobs.lock
        #: What ``check_usable`` says: None (usable), or why not.
        self.unusable: str | None = None

    @property
    def running(self) -> list[str]:
        """Job ids whose latest handle is still running."""
        with self._lock:
            return [
                job_id
                for job_id, handle in self.handles.items()
                if not self.jobs.status[handle.external_id].is_final
            ]

    def _initial(self, job_id: str) -> RunStatus:
        outcome = self.outcomes.get(job_id, self.default)
        if outcome is None:
            return RunStatus(RunState.RUNNING)
        if outcome.is_final and outcome.finished_at is None:
            return RunStatus(
                outcome.state, outcome.exit_code, outcome.reason, time.time(), outcome.metrics
            )
        return outcome

    def _job_id(self, handle: RunHandle) -> str:
        return FakePayload.of(handle).job_id or handle.external_id

    def submit(self, spec: RunSpec) -> RunHandle:
        """Record the job and give it its scripted status. Instant; not idempotent.

        Raises:
            JobferryError: the error scripted in ``submit_errors`` for this job id.
        """
        with self._lock:
            self.calls.append(("submit", spec.job_id))
            error = self.submit_errors.get(spec.job_id)
            if error is not None:
                raise error
            external_id = f"fake-{next(self.jobs.ids)}"
            payload = FakePayload(job_id=spec.job_id)
            handle = RunHandle.of(self.name, external_id, time.time(), payload)
            self.specs[spec.job_id] = spec
            self.handles[spec.job_id] = handle
            self.jobs.handles[external_id] = handle
            self.jobs.specs[external_id] = spec
            self.jobs.status[external_id] = self._initial(spec.job_id)
            return handle

    def find(self, spec: RunSpec) -> RunHandle | None:
        """The newest job started from *spec*'s job id and attempt; None if there is none.

        Instant. Finds what any runner sharing this runner's ``jobs`` started.
        """
        with self._lock:
            self.calls.append(("find", spec.job_id))
            found = [
                self.jobs.handles[external_id]
                for external_id, started in self.jobs.specs.items()
                if (started.job_id, started.attempt) == (spec.job_id, spec.attempt)
                and external_id in self.jobs.handles
            ]
            return found[-1] if found else None

    def adopt(self, handle: RunHandle, spec: RunSpec) -> None:
        """Follow a job an earlier runner started. Instant; idempotent.

        A job these ``jobs`` hold keeps its status (and ends when it ends); one they
        do not hold is scripted like a submit.

        Raises:
            RunnerError: the handle is not a fake runner's.
        """
        if handle.runner != self.name:
            raise RunnerError(f"cannot adopt a {handle.runner!r} handle in the fake runner")
        with self._lock:
            self.calls.append(("adopt", spec.job_id))
            self.specs[spec.job_id] = spec
            self.handles[spec.job_id] = handle
            self.jobs.handles.setdefault(handle.external_id, handle)
            self.jobs.specs.setdefault(handle.external_id, spec)
            self.jobs.status.setdefault(handle.external_id, self._initial(spec.job_id))

    def poll(self, handle: RunHandle) -> RunStatus:
        """Return the job's current status. Instant; idempotent.

        Raises:
            RunnerError: the handle was never submitted to or adopted by this runner
                (or one sharing its ``jobs``).
        """
        with self._lock:
            self.calls.append(("poll", self._job_id(handle)))
            return self._get(handle)

    def _get(self, handle: RunHandle) -> RunStatus:
        try:
            return self.jobs.status[handle.external_id]
        except KeyError:
            raise RunnerError(f"unknown fake run {handle.external_id}") from None

    async def wait(self, handle: RunHandle) -> RunStatus:
        """Return the final status at once if known, else when ``finish``/``cancel`` ends
        it; at its spec's walltime (counted from ``started_at``) cancel it with reason
        ``walltime exceeded (<N>s)``. Cancelling the coroutine leaves the job running.

        Raises:
            RunnerError: the handle is unknown to this runner.
        """
        with self._lock:
            self.calls.append(("wait", self._job_id(handle)))
            status = self._get(handle)
            if status.is_final:
                return status
            future: asyncio.Future[RunStatus] = asyncio.get_running_loop().create_future()
            self.jobs.waiters.setdefault(handle.external_id, []).append(future)
            spec = self.jobs.specs.get(handle.external_id)
        walltime = None if spec is None else spec.walltime_s
        if walltime is not None:
            deadline = handle.started_at + walltime
            while not future.done() and (remaining := deadline - time.time()) > 0:
                await asyncio.wait([future], timeout=remaining)
            if not future.done():
                self.cancel(handle, f"walltime exceeded ({walltime:g}s)")
        return await future

    def finish(self, job_id: str, status: RunStatus = EXITED_OK) -> None:
        """End the job's latest run with *status*, waking its waiters. Idempotent per run.

        Raises:
            RunnerError: no run of *job_id* exists.
        """
        with self._lock:
            handle = self.handles.get(job_id)
            if handle is None:
                raise RunnerError(f"unknown fake job {job_id}")
            self.jobs.end(handle.external_id, status)

    def cancel(self, handle: RunHandle, reason: str = "cancelled") -> None:
        """End a running job as ``KILLED`` with *reason*. Instant; idempotent.

        Raises:
            RunnerError: the handle is unknown to this runner.
        """
        with self._lock:
            self.calls.append(("cancel", self._job_id(handle)))
            self._get(handle)
            self.jobs.end(handle.external_id, RunStatus(RunState.KILLED, reason=reason))

    def check_usable(self) -> str | None:
        """``unusable``: None (usable) unless a test set a reason."""
        return self.unusable

    def cleanup(self, handle: RunHandle) -> None:
        """Record the call; the fake keeps statuses for assertions. Idempotent."""
        with self._lock:
            self.calls.append(("cleanup", self._job_id(handle)))


def _resolve(future: asyncio.Future[RunStatus], status: RunStatus) -> None:
    if not future.done():
        future.set_result(status)
