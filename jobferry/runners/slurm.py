"""The Slurm runner: jobs as Slurm batch jobs that run the job wrapper.

Owns writing each job's batch script (resources as ``#SBATCH`` lines, the job's
environment as quoted ``export`` lines, then ``exec`` of the wrapper), submitting
it with ``sbatch``, following every job it tracks with ONE ``squeue`` call per
round, reading the wrapper's result file (with ``scontrol``/``sacct`` as
fallbacks), enforcing the exact walltime with ``scancel`` and re-attaching to
jobs from a stored handle after a daemon restart.

Slurm commands run as argv lists (never through a shell) with a timeout. A
controller that cannot be reached raises ``RunnerUnavailableError`` (the job
stays queued); a request Slurm refuses raises ``SubmitError``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobferry.errors import RunnerError, RunnerUnavailableError, SubmitError
from jobferry.runners.base import (
    Capacity,
    RunHandle,
    RunMetrics,
    Runner,
    RunSpec,
    RunState,
    RunStatus,
)
from jobferry.runners.joblog import job_of
from jobferry.runners.slurm_acct import ACCOUNTING_DISABLED, MAX_RSS_ARGS, parse_max_rss_kb
from jobferry.runners.wrapper import (
    read_kill,
    read_result,
    record_kill,
    wrapper_argv,
    wrapper_paths,
)

logger = logging.getLogger(__name__)

#: Slurm states of a job that is not over yet (it may still start or run).
ACTIVE_STATES = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "COMPLETING",
        "SUSPENDED",
        "STOPPED",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "RESV_DEL_HOLD",
        "SPECIAL_EXIT",
    }
)
#: Final Slurm states where the job's command ended by itself.
EXITED_STATES = frozenset({"COMPLETED", "FAILED"})
#: Final Slurm states where nothing says how the command ended.
LOST_STATES = frozenset({"NODE_FAIL", "BOOT_FAIL"})

#: Output of a Slurm command meaning the controller cannot be reached right now.
_UNAVAILABLE_PATTERNS = (
    "unable to contact slurm controller",
    "socket timed out",
    "connection refused",
    "communication connection failure",
    "zero bytes were transmitted or received",
    "in standby mode",
    "resource temporarily unavailable",
    "try again",
    "protocol authentication error",
    "invalid authentication credential",
    "munge",
    "job submit limit",
)
_SQUEUE_FORMAT = "%i|%T|%r|%S|%e"
_SLURM_TIME = "%Y-%m-%dT%H:%M:%S"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_UNSAFE_DIRECTIVE = re.compile(r"[\s'\"\\#]")
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_MIN_DELAY_S = 0.2
#: Pending reasons that mean the request does not fit the partition (it may pend forever).
_STUCK_REASONS = frozenset(
    {"PartitionConfig", "BadConstraints", "PartitionNodeLimit", "PartitionTimeLimit"}
)
_RESULT_GRACE_S = 5.0


def job_name(spec: RunSpec) -> str:
    """The deterministic Slurm job name of *spec*'s attempt (``find`` looks it up)."""
    return _NAME_UNSAFE.sub("_", f"jobferry-{spec.job_id}-{spec.attempt}")


def walltime_reason(walltime_s: float | None) -> str:
    """The reason of a job killed at its walltime (the local runner's text)."""
    if walltime_s is None:
        return "walltime exceeded (Slurm time limit)"
    return f"walltime exceeded ({walltime_s:g}s)"


def _slurm_time(text: str) -> float | None:
    """Parse Slurm's local ``YYYY-MM-DDTHH:MM:SS`` time; None for ``N/A``/``Unknown``."""
    try:
        return time.mktime(time.strptime(text.strip(), _SLURM_TIME))
    except (ValueError, OverflowError):
        return None


def _exit_code(text: str) -> int | None:
    """Parse Slurm's ``ExitCode=N:S``: the exit status, or 128+S if a signal ended it."""
    code, _, sig = text.strip().partition(":")
    try:
        n, s = int(code), int(sig or 0)
    except ValueError:
        return None
    return 128 + s if s else n


@dataclass(frozen=True)
class _Job:
    """The fields of a handle's ``data`` this runner relies on."""

    external_id: str
    result_path: str
    job_name: str
    walltime_s: float | None
    submitted_at: float
    script_path: str | None

    @classmethod
    def of(cls, handle: RunHandle) -> _Job:
        try:
            data = handle.data
            walltime = data.get("walltime_s")
            script = data.get("script_path")
            if not handle.external_id.isdigit():
                raise ValueError("not a Slurm job id")
            return cls(
                external_id=handle.external_id,
                result_path=str(data["result_path"]),
                job_name=str(data.get("job_name") or ""),
                walltime_s=None if walltime is None else float(walltime),
                submitted_at=float(data.get("submitted_at", handle.started_at)),
                script_path=None if script is None else str(script),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RunnerError(f"malformed slurm run handle {handle.external_id!r}") from exc


@dataclass(frozen=True)
class _Queued:
    """One line of ``squeue``: what Slurm says of a job it still remembers."""

    state: str
    reason: str
    start: float | None
    end: float | None


@dataclass
class _Waiter:
    handle: RunHandle
    job: _Job
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
        self.poll_interval_s = max(poll_interval_s, _MIN_DELAY_S)
        self.command_timeout_s = command_timeout_s
        self.node = node
        self.result_grace_s = result_grace_s
        self._capacity: tuple[float, Capacity | None] | None = None
        self._lock = threading.Lock()  # guards the dicts below
        self._refresh_lock = threading.Lock()  # one squeue at a time
        self._tracked: dict[str, _Job] = {}  # external_id -> job, not yet final
        self._queue: dict[str, _Queued] = {}  # last squeue snapshot of the tracked jobs
        self._covered: frozenset[str] = frozenset()  # ids the last snapshot asked about
        self._refreshed_at = float("-inf")  # monotonic time of the last squeue
        self._delay = _MIN_DELAY_S  # current pause between squeue calls
        self._ended_seen: dict[str, float] = {}  # id -> when Slurm first said it ended
        self._starts: dict[str, float] = {}  # id -> Slurm start time, once running
        self._final: dict[str, RunStatus] = {}
        self._killed: dict[str, str] = {}
        self._outage = False
        self._stuck_logged: set[str] = set()
        self._no_accounting = False  # sacct said accounting is off: ask it no more
        self._waiters: dict[str, list[_Waiter]] = {}
        self._poller: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None

    # --- commands ---------------------------------------------------------------

    def _cmd(self, name: str) -> str:
        return os.path.join(self.bin_dir, name) if self.bin_dir else name

    def _run(self, argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a Slurm command; raise RunnerUnavailableError if it cannot be run or hangs."""
        argv = [self._cmd(argv[0]), *argv[1:]]
        try:
            return subprocess.run(
                argv,
                input=stdin,
                stdin=None if stdin is not None else subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=self.command_timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise RunnerUnavailableError(
                f"Slurm is unavailable: {os.path.basename(argv[0])} timed out",
                command=argv[0],
            ) from exc
        except OSError as exc:
            raise RunnerUnavailableError(
                f"Slurm is unavailable: cannot run {os.path.basename(argv[0])}",
                command=argv[0],
                error=str(exc),
            ) from exc

    @staticmethod
    def _message(proc: subprocess.CompletedProcess[str]) -> str:
        text = (proc.stderr or proc.stdout or "").strip()
        lines = [line for line in text.splitlines() if line.strip()]
        return "; ".join(lines) or f"exit status {proc.returncode}"

    @staticmethod
    def _unavailable(message: str) -> bool:
        low = message.lower()
        return any(p in low for p in _UNAVAILABLE_PATTERNS)

    def _check(self, proc: subprocess.CompletedProcess[str], command: str) -> None:
        """Raise RunnerUnavailableError for a controller outage; leave other failures."""
        if proc.returncode != 0:
            message = self._message(proc)
            if self._unavailable(message):
                # A stable message: the daemon logs once per outage, not once per output.
                raise RunnerUnavailableError(
                    "Slurm is unavailable: cannot contact the controller",
                    command=command,
                    output=message,
                )

    # --- submit -------------------------------------------------------------------

    def batch_script(self, spec: RunSpec) -> tuple[str, list[str]]:
        """Return *spec*'s batch script and the sbatch options that cannot be directives.

        Options whose values are plain words become ``#SBATCH`` lines; any value with
        whitespace, quotes or ``#`` (which sbatch's directive parser would mangle) is
        returned as a separate argv word for the sbatch command line instead, as are
        ``sbatch_args``.

        Raises:
            SubmitError: the argv or an environment variable name is invalid.
        """
        if not spec.argv or spec.argv[0].startswith("-"):
            raise SubmitError(f"invalid argv for job {spec.job_id}: {list(spec.argv)!r}")
        remote = spec.staging == "remote"
        if remote:
            chdir = "/tmp"
        else:
            chdir = spec.job_dir or os.path.dirname(os.path.abspath(spec.result_path))
        options = [
            f"--job-name={job_name(spec)}",
            "--nodes=1",
            "--ntasks=1",
            f"--cpus-per-task={max(1, spec.cores)}",
            "--output=/dev/null",
            "--error=/dev/null",
            f"--chdir={chdir}",
            "--export=NONE",
            # The daemon decides about retries (with a new attempt), never Slurm.
            "--no-requeue",
        ]
        if spec.memory_mb is not None:
            options.append(f"--mem={spec.memory_mb}M")
        if spec.walltime_s:
            # A hard upper bound only: wait() scancels at the exact walltime.
            options.append(f"--time={max(1, math.ceil(spec.walltime_s / 60))}")
        if spec.partition:
            options.append(f"--partition={spec.partition}")
        if spec.gpus:
            options.append(f"--gres=gpu:{spec.gpus}")
        if self.node:
            options.append(f"--comment=jobferry node {self.node}")
        lines = ["#!/bin/sh", f"# jobferry job {spec.job_id} attempt {spec.attempt}"]
        extra: list[str] = []
        for option in options:
            if _UNSAFE_DIRECTIVE.search(option):
                extra.append(option)
            else:
                lines.append(f"#SBATCH {option}")
        extra += list(spec.sbatch_args)
        for key, value in spec.env.items():
            if not _ENV_NAME.fullmatch(key):
                raise SubmitError(f"invalid environment variable name {key!r}")
            lines.append(f"export {key}={shlex.quote(value)}")
        if remote and spec.remote_dir:
            # The wrapper's own files live there; it needs them before anything else.
            lines.append(f"mkdir -p -- {shlex.quote(wrapper_paths(spec)[0])}")
        lines.append("exec " + " ".join(shlex.quote(word) for word in wrapper_argv(spec)))
        return "\n".join(lines) + "\n", extra

    def submit(self, spec: RunSpec) -> RunHandle:
        """Submit the job with ``sbatch --parsable`` and return its handle. Blocking.

        Shared staging writes the script to ``<job_dir>/slurm.sh``; remote staging
        pipes it to sbatch's stdin (the execution host shares no disk with us).

        Raises:
            SubmitError: the spec is invalid or Slurm refuses the job (its message).
            RunnerUnavailableError: the controller cannot be reached (or sbatch hangs).
        """
        script, extra = self.batch_script(spec)
        remote = spec.staging == "remote"
        if not remote and not os.path.isdir(spec.workdir):
            raise SubmitError(f"working directory {spec.workdir} does not exist")
        for suffix in ("", ".tmp", ".killed", ".pid"):
            try:
                os.unlink(spec.result_path + suffix)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise SubmitError(f"cannot remove stale {spec.result_path}{suffix}: {exc}") from exc
        script_path: str | None = None
        argv = ["sbatch", "--parsable", *extra]
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
            argv.append(script_path)
        submitted_at = time.time()
        proc = self._run(argv, stdin)
        self._check(proc, "sbatch")
        if proc.returncode != 0:
            message = self._message(proc).replace("sbatch: error: ", "")
            raise SubmitError(f"Slurm refused job {spec.job_id}: {message}")
        external_id = proc.stdout.strip().split(";", 1)[0]
        if not external_id.isdigit():
            raise RunnerError(f"unexpected sbatch output {proc.stdout.strip()!r}")
        handle = self._handle(spec, external_id, submitted_at, script_path)
        self._track(_Job.of(handle))
        logger.info("submitted job %s as Slurm job %s", spec.job_id, external_id)
        return handle

    def _handle(
        self, spec: RunSpec, external_id: str, submitted_at: float, script_path: str | None
    ) -> RunHandle:
        data: dict[str, Any] = {
            "result_path": spec.result_path,
            "stdout_path": spec.stdout_path,
            "stderr_path": spec.stderr_path,
            "job_name": job_name(spec),
            "walltime_s": spec.walltime_s or None,
            "submitted_at": submitted_at,
            "script_path": script_path,
            "staging": spec.staging,
            "node": self.node,
        }
        return RunHandle(self.name, external_id, submitted_at, data)

    def capacity(self) -> Capacity | None:
        """The largest node of the cluster (``sinfo``), cached for a minute; None
        while Slurm cannot be asked (submissions then are not refused here)."""
        now = time.monotonic()
        if self._capacity is not None and now - self._capacity[0] < 60:
            return self._capacity[1]
        try:
            proc = self._run(["sinfo", "-h", "-N", "-o", "%c|%m|%G"])
        except RunnerUnavailableError:
            return None
        if proc.returncode != 0:
            return None
        cores = memory = gpus = 0
        for line in proc.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) != 3:
                continue
            try:
                cores = max(cores, int(parts[0].rstrip("+")))
                memory = max(memory, int(parts[1].rstrip("+")))
            except ValueError:
                continue
            found = re.search(r"gpu(?::[^:,()]+)?:(\d+)", parts[2])
            gpus = max(gpus, int(found.group(1)) if found else 0)
        if not cores:
            return None
        result = Capacity(cores, memory or None, gpus, where="any node of the Slurm cluster")
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
        proc = self._run(["squeue", "-h", "--me", "-t", "all", f"--name={name}", "-o", "%i"])
        self._check(proc, "squeue")
        if proc.returncode != 0:
            raise RunnerError(f"squeue failed: {self._message(proc)}")
        ids = [line.strip() for line in proc.stdout.splitlines() if line.strip().isdigit()]
        if not ids:
            return None
        external_id = max(ids, key=int)
        script = os.path.join(
            spec.job_dir or os.path.dirname(os.path.abspath(spec.result_path)), "slurm.sh"
        )
        handle = self._handle(
            spec, external_id, time.time(), None if spec.staging == "remote" else script
        )
        self._track(_Job.of(handle))
        return handle

    def adopt(self, handle: RunHandle, spec: RunSpec) -> None:
        """Follow a job an earlier daemon submitted (Slurm kept it running). Idempotent.

        Raises:
            RunnerError: the handle is not from a Slurm runner or is malformed.
        """
        if handle.runner != self.name:
            raise RunnerError(f"cannot adopt a {handle.runner!r} handle in the slurm runner")
        self._track(_Job.of(handle))

    def _track(self, job: _Job) -> None:
        with self._lock:
            if job.external_id not in self._tracked and job.external_id not in self._final:
                self._tracked[job.external_id] = job
                self._delay = _MIN_DELAY_S

    # --- status -------------------------------------------------------------------

    def _refresh(self, force: bool = False) -> None:
        """Refresh the squeue snapshot of every tracked job with ONE call, if due."""
        with self._refresh_lock:
            with self._lock:
                ids = frozenset(self._tracked)
                age = time.monotonic() - self._refreshed_at
                if not ids or (not force and ids <= self._covered and age < self._delay - 0.01):
                    return
            argv = ["squeue", "-h", "-t", "all", "-o", _SQUEUE_FORMAT]
            argv += ["-j", ",".join(sorted(ids, key=int))]
            try:
                proc = self._run(argv)
                self._check(proc, "squeue")
            except RunnerUnavailableError as exc:
                self._note_outage(exc)
                return
            if proc.returncode != 0 and "invalid job id" not in self._message(proc).lower():
                self._note_outage(RunnerError(f"squeue failed: {self._message(proc)}"))
                return
            queue: dict[str, _Queued] = {}
            for line in proc.stdout.splitlines():
                parts = line.strip().split("|")
                if len(parts) != 5 or parts[0] not in ids:
                    continue
                state = parts[1].split()[0] if parts[1].strip() else "UNKNOWN"
                queue[parts[0]] = _Queued(
                    state, parts[2], _slurm_time(parts[3]), _slurm_time(parts[4])
                )
            with self._lock:
                if self._outage:
                    logger.info("Slurm answers again")
                    self._outage = False
                old = {k: v.state for k, v in self._queue.items() if k in ids}
                changed = old != {k: v.state for k, v in queue.items()} or ids != self._covered
                self._queue, self._covered = queue, ids
                self._refreshed_at = time.monotonic()
                self._delay = (
                    _MIN_DELAY_S if changed else min(self._delay * 2, self.poll_interval_s)
                )
                for key, q in queue.items():
                    if q.state != "PENDING" and q.start is not None:
                        self._starts.setdefault(key, q.start)

    def _note_outage(self, exc: Exception) -> None:
        with self._lock:
            if not self._outage:
                logger.warning("cannot poll Slurm (jobs stay as they were): %s", exc)
            self._outage = True
            self._refreshed_at = time.monotonic()
            self._delay = self.poll_interval_s

    def poll(self, handle: RunHandle) -> RunStatus:
        """Return the job's status from the shared squeue snapshot. Blocking; idempotent.

        Refreshes the snapshot (one squeue for all tracked jobs) when it is older
        than the current poll interval or does not cover this job yet. While Slurm
        cannot be reached, a job that is not known to be final stays RUNNING.
        """
        job = _Job.of(handle)
        with self._lock:
            final = self._final.get(job.external_id)
            if final is not None:
                return final
        self._track(job)
        self._refresh()
        with self._lock:
            if job.external_id not in self._covered:
                return RunStatus(RunState.RUNNING)
            queued = self._queue.get(job.external_id)
        if queued is not None and not _is_final_state(queued.state):
            if queued.state == "PENDING" and queued.reason in _STUCK_REASONS:
                with self._lock:
                    first = job.external_id not in self._stuck_logged
                    self._stuck_logged.add(job.external_id)
                if first:
                    logger.warning(
                        "job %s: Slurm job %s pends with reason %s: it may never start",
                        job_of(job.result_path),
                        job.external_id,
                        queued.reason,
                    )
            return RunStatus(RunState.RUNNING)
        return self._conclude(handle, job, queued)

    def _conclude(self, handle: RunHandle, job: _Job, queued: _Queued | None) -> RunStatus:
        """Build (and cache) the final status of a job Slurm reports ended or forgot."""
        result = read_result(job.result_path)
        state = None if queued is None else queued.state
        exit_code: int | None = None
        start = self._starts.get(job.external_id)
        end = None if queued is None else queued.end
        if result is None and state in EXITED_STATES:
            # The result may still be on its way (HTTP post, NFS): wait a little.
            with self._lock:
                seen = self._ended_seen.setdefault(job.external_id, time.monotonic())
            if time.monotonic() - seen < self.result_grace_s:
                return RunStatus(RunState.RUNNING)
        if result is None:
            # No result: ask scontrol (while Slurm remembers the job), then sacct.
            info = self._job_info(job.external_id)
            if info is not None:
                words = info.get("JobState", "").split()
                state = state or (words[0] if words else None)
                exit_code = _exit_code(info.get("ExitCode", ""))
                start = start or _slurm_time(info.get("StartTime", ""))
                end = end or _slurm_time(info.get("EndTime", ""))
        killed = self._killed.get(job.external_id)
        if killed is None:
            killed = read_kill(job.result_path)
        if result is not None and result.exit_code is not None:
            exit_code = result.exit_code
        reason: str | None
        run_state: RunState
        if killed is not None:
            run_state, reason = RunState.KILLED, killed
        elif state == "TIMEOUT":
            run_state, reason = RunState.KILLED, walltime_reason(job.walltime_s)
        elif state == "OUT_OF_MEMORY":
            run_state, reason = RunState.KILLED, "out of memory (Slurm OUT_OF_MEMORY)"
        elif state == "CANCELLED":
            run_state, reason = RunState.KILLED, "cancelled by Slurm"
        elif state in LOST_STATES:
            run_state, exit_code = RunState.LOST, None
            reason = f"the Slurm job {job.external_id} ended {state}"
        elif state is not None and state not in EXITED_STATES:
            run_state, reason = RunState.KILLED, f"the Slurm job ended {state}"
        elif result is not None and result.exit_code is not None:
            run_state, reason = RunState.EXITED, result.reason
        elif exit_code is not None and state in EXITED_STATES:
            run_state, reason = RunState.EXITED, "result file missing; exit code from Slurm"
        else:
            run_state, exit_code = RunState.LOST, None
            reason = (result.reason if result is not None else None) or (
                f"the Slurm job {job.external_id} vanished without a result"
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
            peak_rss_kb=self._max_rss_kb(job.external_id),
        )
        status = RunStatus(run_state, exit_code, reason, finished_at, metrics)
        with self._lock:
            self._final[job.external_id] = status
            self._tracked.pop(job.external_id, None)
            self._queue.pop(job.external_id, None)
            self._ended_seen.pop(job.external_id, None)
            self._stuck_logged.discard(job.external_id)
        logger.info(
            "job %s ended: %s exit=%s%s (Slurm job %s)",
            job_of(job.result_path),
            run_state,
            exit_code,
            f" {reason}" if reason else "",
            job.external_id,
        )
        return status

    def _max_rss_kb(self, external_id: str) -> int | None:
        """The job's peak memory from ``sacct`` (``runners.slurm_acct``); None without
        accounting (asked once, then never again) or if it has no figure."""
        if self._no_accounting:
            return None
        try:
            proc = self._run(["sacct", *MAX_RSS_ARGS, external_id])
        except RunnerUnavailableError:
            return None
        if proc.returncode != 0:
            if ACCOUNTING_DISABLED in (proc.stderr + proc.stdout).lower():
                logger.info("Slurm accounting is off: jobs' peak memory stays unknown")
                self._no_accounting = True
            return None
        return parse_max_rss_kb(proc.stdout)

    def _job_info(self, external_id: str) -> dict[str, str] | None:
        """What ``scontrol show job`` (or else ``sacct``) still knows of a job; None if nothing."""
        try:
            proc = self._run(["scontrol", "show", "job", "-o", external_id])
            if proc.returncode == 0 and proc.stdout.strip():
                info: dict[str, str] = {}
                for word in proc.stdout.split():
                    key, sep, value = word.partition("=")
                    if sep and key not in info:
                        info[key] = value
                return info
            fields = "JobID,State,ExitCode,Start,End"
            proc = self._run(["sacct", "-n", "-P", "-X", "-j", external_id, "-o", fields])
        except RunnerUnavailableError:
            return None
        for line in proc.stdout.splitlines() if proc.returncode == 0 else []:
            parts = line.split("|")
            if len(parts) == 5 and parts[0] == external_id:
                return {
                    "JobState": parts[1],
                    "ExitCode": parts[2],
                    "StartTime": parts[3],
                    "EndTime": parts[4],
                }
        return None

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
        job = _Job.of(handle)
        with self._lock:
            final = self._final.get(job.external_id)
        if final is not None:
            return final
        self._track(job)
        loop = asyncio.get_running_loop()
        waiter = _Waiter(handle, job, loop.create_future())
        with self._lock:
            self._waiters.setdefault(job.external_id, []).append(waiter)
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
                waiters = self._waiters.get(job.external_id, [])
                if waiter in waiters:
                    waiters.remove(waiter)
                if not waiters:
                    self._waiters.pop(job.external_id, None)

    def _round(self, handles: list[RunHandle]) -> list[RunStatus | Exception]:
        """One poller round in the executor: one squeue, then every waiter's status."""
        self._refresh()
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
                start = self._starts.get(w.job.external_id)
                if w.job.walltime_s is None or start is None:
                    continue
                # Slurm's start is in whole seconds; the submit time is a floor for it.
                deadline = max(start, w.handle.started_at) + w.job.walltime_s
                if time.time() >= deadline and w.job.external_id not in cancelled:
                    cancelled.add(w.job.external_id)
                    reason = walltime_reason(w.job.walltime_s)
                    try:
                        await loop.run_in_executor(None, self.cancel, w.handle, reason)
                    except RunnerError as exc:
                        cancelled.discard(w.job.external_id)
                        logger.warning(
                            "job %s: cannot cancel Slurm job %s at its walltime: %s",
                            job_of(w.job.result_path),
                            w.job.external_id,
                            exc,
                        )
                elif w.job.external_id not in cancelled:
                    next_deadline = min(next_deadline or deadline, deadline)
            with self._lock:
                pause = self._delay
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
        job = _Job.of(handle)
        with self._lock:
            if job.external_id in self._final:
                return
        if os.path.exists(job.result_path):  # it ended by itself
            return
        with self._lock:
            self._killed.setdefault(job.external_id, reason)
        record_kill(job.result_path, reason)
        logger.info(
            "job %s: cancelling Slurm job %s: %s", job_of(job.result_path), job.external_id, reason
        )
        proc = self._run(["scancel", job.external_id])
        self._check(proc, "scancel")
        if proc.returncode != 0:
            message = self._message(proc).lower()
            if "already completing or completed" in message or "invalid job id" in message:
                return
            raise RunnerError(f"scancel {job.external_id} failed: {self._message(proc)}")
        with self._lock:
            self._delay = _MIN_DELAY_S

    # --- cleanup ------------------------------------------------------------------

    def cleanup(self, handle: RunHandle) -> None:
        """Remove the batch script and forget the job. Idempotent; cheap."""
        job = _Job.of(handle)
        if job.script_path:
            try:
                os.unlink(job.script_path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                logger.warning("cannot remove %s: %s", job.script_path, exc)
        with self._lock:
            self._final.pop(job.external_id, None)
            self._killed.pop(job.external_id, None)
            self._starts.pop(job.external_id, None)
            self._ended_seen.pop(job.external_id, None)
            self._tracked.pop(job.external_id, None)
            self._queue.pop(job.external_id, None)

    def close(self) -> None:
        """Stop the shared poller (Slurm jobs keep running)."""
        poller = self._poller
        if poller is not None and not poller.done():
            try:
                poller.get_loop().call_soon_threadsafe(poller.cancel)
            except RuntimeError:  # its loop is closed already
                pass


def _is_final_state(state: str) -> bool:
    return state in EXITED_STATES | LOST_STATES or state in {
        "TIMEOUT",
        "OUT_OF_MEMORY",
        "CANCELLED",
        "DEADLINE",
        "PREEMPTED",
        "REVOKED",
    }
