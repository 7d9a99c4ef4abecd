"""Slurm's command-line client: running sbatch, squeue, scontrol, sacct, scancel and
sinfo, reading what they print, and what Slurm's states mean for a job.

Commands run as argv lists (never through a shell) with a timeout. A controller
that cannot be reached, or a command that hangs or cannot be run, raises
``RunnerUnavailableError`` with a stable message (the daemon logs it once per
outage, and the job stays queued); a request Slurm refuses raises ``SubmitError``
(sbatch) or ``RunnerError`` (the others). Also here: Slurm's job states, its time
and exit-code formats, and ``ending``, which says how an ended job ended.
``runners.slurm`` decides when to call what; the peak memory figure is parsed in
``runners.slurm_acct``.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
from dataclasses import dataclass

from jobferry.errors import RunnerError, RunnerUnavailableError, SubmitError
from jobferry.runners.base import Capacity, RunState
from jobferry.runners.slurm_acct import ACCOUNTING_DISABLED, MAX_RSS_ARGS, parse_max_rss_kb
from jobferry.runners.wrapper import WrapperResult

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
#: Final Slurm states where Slurm (or someone) ended the job.
_ENDED_BY_SLURM = frozenset(
    {"TIMEOUT", "OUT_OF_MEMORY", "CANCELLED", "DEADLINE", "PREEMPTED", "REVOKED"}
)

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


def is_final_state(state: str) -> bool:
    """Whether a Slurm job state is final (the job will not run again)."""
    return state in EXITED_STATES or state in LOST_STATES or state in _ENDED_BY_SLURM


def slurm_time(text: str) -> float | None:
    """Parse Slurm's local ``YYYY-MM-DDTHH:MM:SS`` time; None for ``N/A``/``Unknown``."""
    try:
        return time.mktime(time.strptime(text.strip(), _SLURM_TIME))
    except (ValueError, OverflowError):
        return None


def exit_code_of(text: str) -> int | None:
    """Parse Slurm's ``ExitCode=N:S``: the exit status, or 128+S if a signal ended it."""
    code, _, sig = text.strip().partition(":")
    try:
        n, s = int(code), int(sig or 0)
    except ValueError:
        return None
    return 128 + s if s else n


def walltime_reason(walltime_s: float | None) -> str:
    """The reason of a job killed at its walltime (the local runner's text)."""
    if walltime_s is None:
        return "walltime exceeded (Slurm time limit)"
    return f"walltime exceeded ({walltime_s:g}s)"


def ending(
    external_id: str,
    state: str | None,
    exit_code: int | None,
    result: WrapperResult | None,
    killed: str | None,
    walltime_s: float | None,
) -> tuple[RunState, int | None, str | None]:
    """How an ended Slurm job ended: (run state, exit code, reason).

    From what is known of it: its last Slurm *state* (None: Slurm forgot it), the
    *exit_code* Slurm gave, the wrapper's *result* file, and the reason it was
    *killed* by this runner (from memory or the ``.killed`` marker).
    """
    if result is not None and result.exit_code is not None:
        exit_code = result.exit_code
    if killed is not None:
        return RunState.KILLED, exit_code, killed
    if state == "TIMEOUT":
        return RunState.KILLED, exit_code, walltime_reason(walltime_s)
    if state == "OUT_OF_MEMORY":
        return RunState.KILLED, exit_code, "out of memory (Slurm OUT_OF_MEMORY)"
    if state == "CANCELLED":
        return RunState.KILLED, exit_code, "cancelled by Slurm"
    if state in LOST_STATES:
        return RunState.LOST, None, f"the Slurm job {external_id} ended {state}"
    if state is not None and state not in EXITED_STATES:
        return RunState.KILLED, exit_code, f"the Slurm job ended {state}"
    if result is not None and result.exit_code is not None:
        return RunState.EXITED, exit_code, result.reason
    if exit_code is not None and state in EXITED_STATES:
        return RunState.EXITED, exit_code, "result file missing; exit code from Slurm"
    reason = (result.reason if result is not None else None) or (
        f"the Slurm job {external_id} vanished without a result"
    )
    return RunState.LOST, None, reason


@dataclass(frozen=True)
class Queued:
    """One line of ``squeue``: what Slurm says of a job it still remembers."""

    state: str
    reason: str
    start: float | None
    end: float | None


@dataclass(frozen=True)
class JobRecord:
    """What ``scontrol show job`` (or else ``sacct``) still knows of a job."""

    state: str | None
    exit_code: int | None
    start: float | None
    end: float | None


class SlurmCli:
    """Slurm's commands, found in *bin_dir* (None: on PATH), each with *timeout_s*."""

    def __init__(self, bin_dir: str | None = None, timeout_s: float = 30.0) -> None:
        self.bin_dir = bin_dir
        self.timeout_s = timeout_s
        #: sacct said accounting is off: it is asked no more.
        self.no_accounting = False

    def run(
        self, argv: list[str], stdin: str | None = None, timeout_s: float | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a Slurm command (within *timeout_s*, else the default); raise
        RunnerUnavailableError if it cannot be run or hangs."""
        argv = [os.path.join(self.bin_dir, argv[0]) if self.bin_dir else argv[0], *argv[1:]]
        try:
            return subprocess.run(
                argv,
                input=stdin,
                stdin=None if stdin is not None else subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=self.timeout_s if timeout_s is None else timeout_s,
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

    def ping(self, timeout_s: float) -> str | None:
        """None when ``scontrol ping`` says the controller is UP within *timeout_s*,
        else why not. Blocking; never raises."""
        try:
            proc = self.run(["scontrol", "ping"], timeout_s=timeout_s)
        except RunnerUnavailableError as exc:
            return f"controller not answering: {exc.message}"
        if proc.returncode != 0 or "UP" not in proc.stdout.split():
            return f"controller not answering: {self.message(proc)}"
        return None

    @staticmethod
    def message(proc: subprocess.CompletedProcess[str]) -> str:
        """A failed command's complaint, on one line."""
        text = (proc.stderr or proc.stdout or "").strip()
        lines = [line for line in text.splitlines() if line.strip()]
        return "; ".join(lines) or f"exit status {proc.returncode}"

    def check(self, proc: subprocess.CompletedProcess[str], command: str) -> None:
        """Raise RunnerUnavailableError for a controller outage; leave other failures."""
        if proc.returncode != 0:
            message = self.message(proc)
            low = message.lower()
            if any(p in low for p in _UNAVAILABLE_PATTERNS):
                # A stable message: the daemon logs once per outage, not once per output.
                raise RunnerUnavailableError(
                    "Slurm is unavailable: cannot contact the controller",
                    command=command,
                    output=message,
                )

    def sbatch(self, args: list[str], stdin: str | None, job_id: str) -> str:
        """``sbatch --parsable *args*`` (the script on *stdin* or as the last argument);
        return the Slurm job id.

        Raises:
            SubmitError: Slurm refuses the job (its message).
            RunnerUnavailableError: the controller cannot be reached (or sbatch hangs).
            RunnerError: sbatch answers something that is not a job id.
        """
        proc = self.run(["sbatch", "--parsable", *args], stdin)
        self.check(proc, "sbatch")
        if proc.returncode != 0:
            message = self.message(proc).replace("sbatch: error: ", "")
            raise SubmitError(f"Slurm refused job {job_id}: {message}")
        external_id = proc.stdout.strip().split(";", 1)[0]
        if not external_id.isdigit():
            raise RunnerError(f"unexpected sbatch output {proc.stdout.strip()!r}")
        return external_id

    def squeue(self, ids: frozenset[str]) -> dict[str, Queued]:
        """What ``squeue`` says of the jobs *ids*, with ONE call; a job it has
        forgotten is missing from the answer.

        Raises:
            RunnerUnavailableError: the controller cannot be reached.
            RunnerError: squeue failed otherwise.
        """
        argv = ["squeue", "-h", "-t", "all", "-o", _SQUEUE_FORMAT]
        argv += ["-j", ",".join(sorted(ids, key=int))]
        proc = self.run(argv)
        self.check(proc, "squeue")
        if proc.returncode != 0 and "invalid job id" not in self.message(proc).lower():
            raise RunnerError(f"squeue failed: {self.message(proc)}")
        queue: dict[str, Queued] = {}
        for line in proc.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) != 5 or parts[0] not in ids:
                continue
            state = parts[1].split()[0] if parts[1].strip() else "UNKNOWN"
            queue[parts[0]] = Queued(state, parts[2], slurm_time(parts[3]), slurm_time(parts[4]))
        return queue

    def ids_named(self, name: str) -> list[str]:
        """The ids of this user's jobs named *name*, in any state Slurm still knows.

        Raises:
            RunnerUnavailableError: the controller cannot be reached.
            RunnerError: squeue failed otherwise.
        """
        proc = self.run(["squeue", "-h", "--me", "-t", "all", f"--name={name}", "-o", "%i"])
        self.check(proc, "squeue")
        if proc.returncode != 0:
            raise RunnerError(f"squeue failed: {self.message(proc)}")
        return [line.strip() for line in proc.stdout.splitlines() if line.strip().isdigit()]

    def job_record(self, external_id: str) -> JobRecord | None:
        """What ``scontrol show job`` (or else ``sacct``) still knows of a job; None if
        nothing (or Slurm cannot be asked now)."""
        try:
            proc = self.run(["scontrol", "show", "job", "-o", external_id])
            if proc.returncode == 0 and proc.stdout.strip():
                info: dict[str, str] = {}
                for word in proc.stdout.split():
                    key, sep, value = word.partition("=")
                    if sep and key not in info:
                        info[key] = value
                return _record(info.get("JobState", ""), info)
            fields = "JobID,State,ExitCode,Start,End"
            proc = self.run(["sacct", "-n", "-P", "-X", "-j", external_id, "-o", fields])
        except RunnerUnavailableError:
            return None
        for line in proc.stdout.splitlines() if proc.returncode == 0 else []:
            parts = line.split("|")
            if len(parts) == 5 and parts[0] == external_id:
                return _record(
                    parts[1], {"ExitCode": parts[2], "StartTime": parts[3], "EndTime": parts[4]}
                )
        return None

    def max_rss_kb(self, external_id: str) -> int | None:
        """The job's peak memory from ``sacct`` (``runners.slurm_acct``); None without
        accounting (asked once, then never again) or if it has no figure."""
        if self.no_accounting:
            return None
        try:
            proc = self.run(["sacct", *MAX_RSS_ARGS, external_id])
        except RunnerUnavailableError:
            return None
        if proc.returncode != 0:
            if ACCOUNTING_DISABLED in (proc.stderr + proc.stdout).lower():
                logger.info("Slurm accounting is off: jobs' peak memory stays unknown")
                self.no_accounting = True
            return None
        return parse_max_rss_kb(proc.stdout)

    def largest_node(self) -> Capacity | None:
        """The largest node of the cluster (``sinfo``); None if Slurm cannot say now."""
        try:
            proc = self.run(["sinfo", "-h", "-N", "-o", "%c|%m|%G"])
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
        return Capacity(cores, memory or None, gpus, where="any node of the Slurm cluster")

    def scancel(self, external_id: str) -> bool:
        """``scancel`` the job; False if it had already ended (or Slurm forgot it).

        Raises:
            RunnerUnavailableError: the controller cannot be reached.
            RunnerError: scancel failed otherwise.
        """
        proc = self.run(["scancel", external_id])
        self.check(proc, "scancel")
        if proc.returncode != 0:
            message = self.message(proc).lower()
            if "already completing or completed" in message or "invalid job id" in message:
                return False
            raise RunnerError(f"scancel {external_id} failed: {self.message(proc)}")
        return True


def _record(state_words: str, info: dict[str, str]) -> JobRecord:
    words = state_words.split()
    return JobRecord(
        state=words[0] if words else None,
        exit_code=exit_code_of(info.get("ExitCode", "")),
        start=slurm_time(info.get("StartTime", "")),
        end=slurm_time(info.get("EndTime", "")),
    )
