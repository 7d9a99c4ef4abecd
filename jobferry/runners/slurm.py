"""The Slurm runner: jobs as Slurm batch jobs that run the job wrapper.

Owns submitting each job's batch script (``runners.slurm_script``) with ``sbatch``,
following every job it tracks with ONE ``squeue`` call per round, reading the
wrapper's result file (with ``scontrol``/``sacct`` as fallbacks), enforcing the
exact walltime with ``scancel`` and re-attaching to jobs from a stored handle
after a daemon restart.

The Slurm commands themselves, and the parsing of what they print, are in
``runners.slurm_cli``: a controller that cannot be reached raises
``RunnerUnavailableError`` (the job stays queued); a request Slurm refuses raises
``SubmitError``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from jobferry.errors import RunnerError, SubmitError
from jobferry.runners.base import (
    USABLE_TIMEOUT_S,
    Capacity,
    HandlePayload,
    RunHandle,
    RunMetrics,
    Runner,
    RunSpec,
    RunState,
    RunStatus,
)
from jobferry.runners.joblog import job_of
from jobferry.runners.slurm_cli import (
    EXITED_STATES,
    Queued,
    SlurmCli,
    ending,
    is_final_state,
    walltime_reason,
)
from jobferry.runners.slurm_queue import MIN_PAUSE_S, SlurmQueue
from jobferry.runners.slurm_script import batch_script, job_name
from jobferry.runners.wrapper import clear_stale, read_kill, read_result, record_kill

logger = logging.getLogger(__name__)

#: Pending reasons that mean the request does not fit the partition (it may pend forever).
_STUCK_REASONS = frozenset(
    {"PartitionConfig", "BadConstraints", "PartitionNodeLimit", "PartitionTimeLimit"}
)
_RESULT_GRACE_S = 5.0


@dataclass(frozen=True)
class SlurmPayload(HandlePayload):
    """What a Slurm handle carries besides the Slurm job id (its ``external_id``)."""

    runner: ClassVar[str] = "slurm"

    result_path: str
    stdout_path: str = ""
    stderr_path: str = ""
    job_name: str = ""
    walltime_s: float | None = None
    submitted_at: float | None = None
    #: The batch script on disk (shared staging); None when it went to sbatch's stdin.
    script_path: str | None = None
    staging: str = "shared"
    node: str = ""


def _job(handle: RunHandle) -> SlurmPayload:
    """Decode a Slurm handle (a numeric job id and its payload).

    Raises:
        RunnerError: the handle is malformed.
    """
    if not handle.external_id.isdigit():
        raise RunnerError(f"malformed slurm run handle {handle.external_id!r}")
    return SlurmPayload.of(handle)


@dataclass
class _Waiter:
    handle: RunHandle
    job: SlurmPayload
    future: asyncio.Future[RunStatus]


class SlurmRunner(Runner):
    """Runs jobs as Slurm batch jobs under the job wrapper.

    Args:
        bin_dir: Directory of ``sbatch``, ``squeue``, ``scontrol``, ``scancel`` and
            ``sacct``; None: found on PATH.
        poll_interval_s: Longest pause between two ``squeue`` calls; one call covers
            every job this runner follows. While jobs change state it polls every
            0.2 s, backing off to this when nothing changes.
        command_timeout_s: Timeout of one Slurm command.
        node: This daemon's node name, recorded in each job's Slurm comment.
        result_grace_s: How long a job Slurm reports as ended may go without a
            result file before its exit code is taken from Slurm instead (the
            result may still be on its way, posted over HTTP or through NFS).
    """

    name = "slurm"

    def __init__(
        self,
        bin_dir: str | None = None,
        poll_interval_s: float = 2.0,
        command_timeout_s: float = 30.0,
        node: str = "",
        result_grace_s: float = _RESULT_GRACE_S,
    ) -> None:
        self.bin_dir = bin_dir
        self.poll_interval_s = max(poll_interval_s, MIN_PAUSE_S)
        self.command_timeout_s = command_timeout_s
        self.cli = SlurmCli(bin_dir, command_timeout_s)
        self.queue = SlurmQueue(self.cli, poll_interval_s)
        self.node = node
        self.result_grace_s = result_grace_s
        self._capacity: tuple[float, Capacity | None] | None = None
        self._lock = threading.Lock()  # guards the dicts below (taken before the queue's)
        self._ended_seen: dict[str, float] = {}  # id -> when Slurm first said it ended
        self._final: dict[str, RunStatus] = {}
        self._killed: dict[str, str] = {}
        self._stuck_logged: set[str] = set()
        self._waiters: dict[str, list[_Waiter]] = {}
        self._poller: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None

    # --- submit -------------------------------------------------------------------

    def submit(self, spec: RunSpec) -> RunHandle:
        """Submit the job with ``sbatch --parsable`` and return its handle. Blocking.

        Shared staging writes the script to ``<job_dir>/slurm.sh``; remote staging
        pipes it to sbatch's stdin (the execution host shares no disk with us).

        Raises:
            SubmitError: the spec is invalid or Slurm refuses the job (its message).
            RunnerUnavailableError: the controller cannot be reached (or sbatch hangs).
        """
        script, args = batch_script(spec, self.node)
        remote = spec.staging == "remote"
        if not remote and not os.path.isdir(spec.workdir):
            raise SubmitError(f"working directory {spec.workdir} does not exist")
        clear_stale(spec.result_path, ("", ".tmp", ".killed", ".pid"))
        script_path: str | None = None
        if remote:
            stdin: str | None = script
        else:
            base = spec.job_dir or os.path.dirname(os.path.abspath(spec.result_path))
            script_path = os.path.join(base, "slurm.sh")
            try:
                Path(script_path).write_text(script, encoding="utf-8")
            except OSError as exc:
                raise SubmitError(f"cannot write batch script {script_path}: {exc}") from exc
            stdin = None
            args.append(script_path)
        submitted_at = time.time()
        external_id = self.cli.sbatch(args, stdin, spec.job_id)
        handle = self._handle(spec, external_id, submitted_at, script_path)
        self._track(handle.external_id)
        logger.info("submitted job %s as Slurm job %s", spec.job_id, external_id)
        return handle

    def _handle(
        self, spec: RunSpec, external_id: str, submitted_at: float, script_path: str | None
    ) -> RunHandle:
        payload = SlurmPayload(
            result_path=spec.result_path,
            stdout_path=spec.stdout_path,
            stderr_path=spec.stderr_path,
            job_name=job_name(spec),
            walltime_s=spec.walltime_s or None,
            submitted_at=submitted_at,
            script_path=script_path,
            staging=spec.staging,
            node=self.node,
        )
        return RunHandle.of(self.name, external_id, submitted_at, payload)

    def check_usable(self) -> str | None:  # the controller answers scontrol ping, quickly
        return self.cli.ping(min(USABLE_TIMEOUT_S, self.command_timeout_s))

    def capacity(self) -> Capacity | None:
        """The largest node of the cluster (``sinfo``), cached for a minute; None
        while Slurm cannot be asked (submissions then are not refused here)."""
        now = time.monotonic()
        if self._capacity is not None and now - self._capacity[0] < 60:
            return self._capacity[1]
        result = self.cli.largest_node()
        if result is not None:
            self._capacity = (now, result)
        return result

    def find(self, spec: RunSpec) -> RunHandle | None:
        """Find the Slurm job submitted for *spec* by its deterministic name. Blocking.

        Returns None when Slurm does not know the name (any more). The newest job of
        that name wins if there are several.

        Raises:
            RunnerUnavailableError: the controller cannot be reached.
        """
        name = job_name(spec)
        ids = self.cli.ids_named(name)
        if not ids:
            return None
        external_id = max(ids, key=int)
        script = os.path.join(
            spec.job_dir or os.path.dirname(os.path.abspath(spec.result_path)), "slurm.sh"
        )
        handle = self._handle(
            spec, external_id, time.time(), None if spec.staging == "remote" else script
        )
        self._track(handle.external_id)
        return handle

    def adopt(self, handle: RunHandle, spec: RunSpec) -> None:
        """Follow a job an earlier daemon submitted (Slurm kept it running). Idempotent.

        Raises:
            RunnerError: the handle is not from a Slurm runner or is malformed.
        """
        if handle.runner != self.name:
            raise RunnerError(f"cannot adopt a {handle.runner!r} handle in the slurm runner")
        _job(handle)
        self._track(handle.external_id)

    def _track(self, external_id: str) -> None:
        with self._lock:
            if external_id not in self._final:
                self.queue.track(external_id)

    # --- status -------------------------------------------------------------------

    def poll(self, handle: RunHandle) -> RunStatus:
        """Return the job's status from the shared squeue snapshot. Blocking; idempotent.

        Refreshes the snapshot (one squeue for all tracked jobs) when it is older
        than the current poll interval or does not cover this job yet. While Slurm
        cannot be reached, a job that is not known to be final stays RUNNING.
        """
        job = _job(handle)
        with self._lock:
            final = self._final.get(handle.external_id)
            if final is not None:
                return final
        self._track(handle.external_id)
        self.queue.refresh()
        covered, queued = self.queue.seen(handle.external_id)
        if not covered:
            return RunStatus(RunState.RUNNING)
        if queued is not None and not is_final_state(queued.state):
            if queued.state == "PENDING" and queued.reason in _STUCK_REASONS:
                with self._lock:
                    first = handle.external_id not in self._stuck_logged
                    self._stuck_logged.add(handle.external_id)
                if first:
                    logger.warning(
                        "job %s: Slurm job %s pends with reason %s: it may never start",
                        job_of(job.result_path),
                        handle.external_id,
                        queued.reason,
                    )
            return RunStatus(RunState.RUNNING)
        return self._conclude(handle, job, queued)

    def _conclude(self, handle: RunHandle, job: SlurmPayload, queued: Queued | None) -> RunStatus:
        """Build (and cache) the final status of a job Slurm reports ended or forgot."""
        result = read_result(job.result_path)
        state = None if queued is None else queued.state
        exit_code: int | None = None
        start = self.queue.start(handle.external_id)
        end = None if queued is None else queued.end
        if result is None and state in EXITED_STATES:
            # The result may still be on its way (HTTP post, NFS): wait a little.
            with self._lock:
                seen = self._ended_seen.setdefault(handle.external_id, time.monotonic())
            if time.monotonic() - seen < self.result_grace_s:
                return RunStatus(RunState.RUNNING)
        if result is None:
            # No result: ask scontrol (while Slurm remembers the job), then sacct.
            record = self.cli.job_record(handle.external_id)
            if record is not None:
                state = state or record.state
                exit_code = record.exit_code
                start = start or record.start
                end = end or record.end
        killed = self._killed.get(handle.external_id)
        if killed is None:
            killed = read_kill(job.result_path)
        run_state, exit_code, reason = ending(
            handle.external_id, state, exit_code, result, killed, job.walltime_s
        )
        now = time.time()
        finished_at = result.mtime if result is not None else (end or now)
        if start is None:
            try:  # the wrapper's first act is writing its pid file (shared staging)
                start = os.path.getmtime(job.result_path + ".pid")
            except OSError:
                start = None
        begin = start if start is not None else handle.started_at
        metrics = RunMetrics(
            wall_s=max(0.0, finished_at - begin) if result is not None or end else None,
            cpu_user_s=None if result is None else result.cpu_user_s,
            cpu_sys_s=None if result is None else result.cpu_sys_s,
            peak_rss_kb=self.cli.max_rss_kb(handle.external_id),
        )
        status = RunStatus(run_state, exit_code, reason, finished_at, metrics)
        with self._lock:
            self._final[handle.external_id] = status
            self.queue.untrack(handle.external_id)
            self._ended_seen.pop(handle.external_id, None)
            self._stuck_logged.discard(handle.external_id)
        logger.info(
            "job %s ended: %s exit=%s%s (Slurm job %s)",
            job_of(job.result_path),
            run_state,
            exit_code,
            f" {reason}" if reason else "",
            handle.external_id,
        )
        return status

    # --- waiting ------------------------------------------------------------------

    async def wait(self, handle: RunHandle) -> RunStatus:
        """Wait until the job is final; enforce its exact walltime with ``scancel``.

        Every waiting job shares one poller (one squeue per round, every 0.2 s
        backing off to ``poll_interval_s``). The walltime counts from Slurm's start
        of the job (queueing time is free). Cancelling this coroutine leaves the
        Slurm job alone.

        Raises:
            RunnerError: the handle is malformed.
        """
        job = _job(handle)
        with self._lock:
            final = self._final.get(handle.external_id)
        if final is not None:
            return final
        self._track(handle.external_id)
        loop = asyncio.get_running_loop()
        waiter = _Waiter(handle, job, loop.create_future())
        with self._lock:
            self._waiters.setdefault(handle.external_id, []).append(waiter)
            poller = self._poller
            if poller is None or poller.done() or poller.get_loop() is not loop:
                self._wake = asyncio.Event()
                self._poller = loop.create_task(self._poll_loop())
            elif self._wake is not None:
                self._wake.set()
        try:
            return await waiter.future
        finally:
            with self._lock:
                waiters = self._waiters.get(handle.external_id, [])
                if waiter in waiters:
                    waiters.remove(waiter)
                if not waiters:
                    self._waiters.pop(handle.external_id, None)

    def _round(self, handles: list[RunHandle]) -> list[RunStatus | Exception]:
        """One poller round in the executor: one squeue, then every waiter's status."""
        self.queue.refresh()
        out: list[RunStatus | Exception] = []
        for handle in handles:
            try:
                out.append(self.poll(handle))
            except Exception as exc:  # handed to that job's waiter
                out.append(exc)
        return out

    async def _poll_loop(self) -> None:
        """The shared poller: one refresh per round, then settle every waiter."""
        loop = asyncio.get_running_loop()
        cancelled: set[str] = set()  # ids this poller scancelled at their walltime
        while True:
            with self._lock:
                waiters = [
                    w for ws in self._waiters.values() for w in ws if w.future.get_loop() is loop
                ]
            if not waiters:
                return
            pending = [w for w in waiters if not w.future.done()]
            outcomes = await loop.run_in_executor(None, self._round, [w.handle for w in pending])
            next_deadline: float | None = None
            for w, outcome in zip(pending, outcomes, strict=True):
                if w.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    w.future.set_exception(outcome)
                    continue
                if outcome.is_final:
                    w.future.set_result(outcome)
                    continue
                start = self.queue.start(w.handle.external_id)
                if w.job.walltime_s is None or start is None:
                    continue
                # Slurm's start is in whole seconds; the submit time is a floor for it.
                deadline = max(start, w.handle.started_at) + w.job.walltime_s
                if time.time() >= deadline and w.handle.external_id not in cancelled:
                    cancelled.add(w.handle.external_id)
                    reason = walltime_reason(w.job.walltime_s)
                    try:
                        await loop.run_in_executor(None, self.cancel, w.handle, reason)
                    except RunnerError as exc:
                        cancelled.discard(w.handle.external_id)
                        logger.warning(
                            "job %s: cannot cancel Slurm job %s at its walltime: %s",
                            job_of(w.job.result_path),
                            w.handle.external_id,
                            exc,
                        )
                elif w.handle.external_id not in cancelled:
                    next_deadline = min(next_deadline or deadline, deadline)
            pause = self.queue.pause
            with self._lock:
                wake = self._wake
            if next_deadline is not None:
                pause = max(0.0, min(pause, next_deadline - time.time()))
            if wake is not None:
                try:
                    await asyncio.wait_for(wake.wait(), pause)
                except TimeoutError:
                    pass
                wake.clear()
            else:
                await asyncio.sleep(pause)

    # --- cancel -------------------------------------------------------------------

    def cancel(self, handle: RunHandle, reason: str = "cancelled") -> None:
        """``scancel`` the job and record *reason* for later ``poll``/``wait``. Idempotent.

        Does nothing if the job already ended by itself. The reason goes to memory
        and to ``<result_path>.killed``, so a restarted daemon reports it too.

        Raises:
            RunnerUnavailableError: the controller cannot be reached (the reason is
                recorded anyway; cancel again later).
            RunnerError: scancel failed otherwise.
        """
        job = _job(handle)
        with self._lock:
            if handle.external_id in self._final:
                return
        if os.path.exists(job.result_path):  # it ended by itself
            return
        with self._lock:
            self._killed.setdefault(handle.external_id, reason)
        record_kill(job.result_path, reason)
        logger.info(
            "job %s: cancelling Slurm job %s: %s",
            job_of(job.result_path),
            handle.external_id,
            reason,
        )
        if self.cli.scancel(handle.external_id):
            self.queue.hurry()

    # --- cleanup ------------------------------------------------------------------

    def cleanup(self, handle: RunHandle) -> None:
        """Remove the batch script and forget the job. Idempotent; cheap."""
        job = _job(handle)
        if job.script_path:
            try:
                os.unlink(job.script_path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                logger.warning("cannot remove %s: %s", job.script_path, exc)
        with self._lock:
            self._final.pop(handle.external_id, None)
            self._killed.pop(handle.external_id, None)
            self._ended_seen.pop(handle.external_id, None)
            self.queue.forget(handle.external_id)

    def close(self) -> None:
        """Stop the shared poller (Slurm jobs keep running)."""
        poller = self._poller
        if poller is not None and not poller.done():
            try:
                poller.get_loop().call_soon_threadsafe(poller.cancel)
            except RuntimeError:  # its loop is closed already
                pass
