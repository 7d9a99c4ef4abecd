"""How a job's run ended, as the store records it: outputs, a full disk, the outcome.

Kept apart from ``execution`` (which drives claims, starts and recovery) so that the
mapping from a runner's final status to a job's state and reason is one small,
testable piece. An attempt that ends by being requeued ends here too
(``requeue``): every requeue site (``execution``, the reaper in ``nodes``)
goes through it, so none forgets to tell the face (``ports.JobEnded.requeued``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.orm import Session

from jobferry.runners.base import RunState, RunStatus
from jobferry.services.ports import EndedAttempt, JobEnded, Requeue
from jobferry.staging.paths import file_digest
from jobferry.store import transitions
from jobferry.store.models import JobState

#: Most output files collected per job (more are ignored).
MAX_OUTPUT_FILES = 10_000
#: Free bytes below which a job's disk counts as full when the job ends.
FULL_DISK_BYTES = 1 << 20
#: What a job's end says when its disk was full (its outputs may be cut short).
DISK_FULL_REASON = "the disk was full when the job ended: its outputs may be incomplete"


@dataclass(frozen=True)
class Ending:
    """A run's end as collected, ready to be recorded (kept until the store takes it)."""

    status: RunStatus
    outputs: list[tuple[str, int, str]]
    disk_full: bool
    metrics: dict[str, float | int | None]


def no_space_left(path: Path | str) -> bool:
    """True when the filesystem of *path* has (almost) no space left for us."""
    try:
        found = os.statvfs(path)
    except OSError:
        return False
    return found.f_bavail * found.f_frsize < FULL_DISK_BYTES


def outcome(
    status: RunStatus, *, cancelled: bool, disk_full: bool = False
) -> tuple[JobState, str | None]:
    """The job's state and reason for a run's final *status*.

    *disk_full*: the job's disk was full when it ended, so even an exit code 0 is an
    error (what it wrote may be cut short); the true exit code comes first in the
    reason ("exit code N; ..."), as for any job that ran and failed."""
    if cancelled:
        return JobState.DELETED, "cancelled"
    if disk_full and status.state is RunState.EXITED:
        note = f" ({status.reason})" if status.reason else ""
        return JobState.ERROR, f"exit code {status.exit_code}; {DISK_FULL_REASON}{note}"
    if disk_full and status.state is RunState.LOST:
        return JobState.ERROR, f"{status.reason or 'the job was lost'}; {DISK_FULL_REASON}"
    if status.state is RunState.EXITED:
        if status.exit_code == 0:
            return JobState.OK, None
        # A reason from the wrapper means the command never ran (e.g. no working dir).
        return JobState.ERROR, status.reason or f"exit code {status.exit_code}"
    if status.state is RunState.KILLED:
        if status.reason == "cancelled":
            return JobState.DELETED, "cancelled"
        return JobState.ERROR, status.reason or "killed"
    return JobState.ERROR, status.reason or "the job was lost"


def scan_outputs(workdir: Path | str) -> list[tuple[str, int, str]]:
    """Regular files under the working directory (symlinks are not followed).

    An empty (or missing) directory, the usual case, costs one ``scandir`` and no
    ``pathlib`` (this runs at every job's end)."""
    found: list[tuple[str, int, str]] = []
    try:
        with os.scandir(workdir) as entries:
            if next(entries, None) is None:
                return found
    except OSError:  # missing, or not a directory
        return found
    workdir = Path(workdir)
    for root, dirs, files in os.walk(workdir, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            if name.startswith(".") and name.endswith(".upload"):
                continue  # a job_files upload still in flight (staging/confined.py)
            path = Path(root) / name
            if path.is_symlink() or not path.is_file():
                continue
            size, sha256 = file_digest(path)
            found.append((str(path.relative_to(workdir)), size, sha256))
            if len(found) >= MAX_OUTPUT_FILES:
                return found
    return found


def requeue(
    ends: JobEnded,
    session: Session,
    job_id: str,
    attempt: int,
    argv: Sequence[Any],
    reason: str,
    node: str | None,
) -> None:
    """Put a claimed job back in the queue (fenced by *attempt*, and by *node* if given:
    ``transitions.requeue_job``) and let the face record why that attempt ended, in the
    same transaction: a task's log never misses a requeue that happened."""
    transitions.requeue_job(session, job_id, attempt, reason, on_node=node)
    ends.requeued(session, job_id, attempt, argv, Requeue(reason, node))


class ClaimedAttempt(EndedAttempt, Protocol):
    """A claimed attempt (``execution.ClaimedJob``) and the node that claimed it."""

    @property
    def node(self) -> str | None: ...


def requeue_claimed(ends: JobEnded, session: Session, claimed: ClaimedAttempt, reason: str) -> None:
    """``requeue`` for an attempt this node claimed."""
    job_id, attempt, argv = claimed.job_id, claimed.attempt, claimed.spec.argv
    requeue(ends, session, job_id, attempt, argv, reason, claimed.node)
