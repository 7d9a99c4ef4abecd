"""Retention: deleting the directories, and optionally the rows, of jobs that ended long ago.

Two kinds of purge, the same rules for both:

- **files** (``retention.files_days``, ``jobferry job purge``): the job's directory
  is deleted and ``jobs.files_expired_at`` set. The row stays; every face answers
  its files with 410 Gone (``GoneError``, details ``files_expired: true``), decided
  from the row, not from a missing directory (``require_files``).
- **rows** (``retention.rows_days``, ``jobferry job purge --rows``): the row is
  deleted (its ``job_files`` rows go with it: ``ON DELETE CASCADE``) with its
  directory; the job then answers 404.

Only jobs in a terminal state (ok, error, deleted) that ended (``finished_at``)
before the cutoff qualify. Candidates are read first (one indexed range, oldest
end first); then each one is purged in its own transaction by a conditional
UPDATE (files) or DELETE (rows) that repeats every condition, so a job that was
resumed, requeued or changed in between is left alone. Inside that transaction
(the job's row locked on PostgreSQL; the store's write lock held on SQLite) the
directory is renamed aside (``.expired-<id>`` beside it: the same filesystem, so
atomic); after the commit it is removed and its bytes counted. A failed commit
renames it back; a crash between commit and removal leaves a ``.expired-*``
directory that ``sweep_leftovers`` removes (the daemon's task, at its start).

One purger at a time: on PostgreSQL a transaction-level advisory lock
(``RETENTION_LOCK_KEY``, not the reaper's) held on a connection of its own for the
whole round; the others skip their round (the CLI waits for it a while). On
SQLite (one node) the per-job conditional writes serialise through the store's
write lock, and a job is purged by whoever's write commits first.

Several nodes without a shared filesystem (``node.shared_filesystem: false``):
a job's directory lives on its home node, so each node purges the jobs whose
home it is (home ``NULL``: any node, as for serving files), under a lock of its
own (the key mixed with the node's name); with a shared filesystem one node at a
time purges every job. Jobs whose home node is gone for good keep their rows.

Every method here blocks (SQL, file system): the daemon calls them through
``Core.call``.
"""

from __future__ import annotations

import enum
import logging
import os
import shutil
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, delete, func, or_, select, update

from jobferry.errors import BusyError, GoneError, ValidationError
from jobferry.services.core import Core
from jobferry.store.engine import is_postgres
from jobferry.store.models import TERMINAL_STATES, Job, utcnow

logger = logging.getLogger(__name__)

#: Key of the PostgreSQL advisory lock of the retention round ("jobfrete", positive).
RETENTION_LOCK_KEY = 0x6A6F6266_72657465 & 0x7FFFFFFFFFFFFFFF
#: Prefix of a job directory renamed aside, to be removed once its purge committed.
TRASH_PREFIX = ".expired-"
#: The terminal states as stored.
TERMINAL_VALUES = tuple(sorted(s.value for s in TERMINAL_STATES))
#: How long ``purge`` (the CLI) waits for another node's round to end, seconds.
PURGE_LOCK_WAIT_S = 60.0


class PurgeKind(enum.StrEnum):
    #: The job's directory is deleted, its row kept (files answer 410).
    FILES = "files"
    #: The job's row and directory are deleted (the job answers 404).
    ROWS = "rows"


@dataclass
class Purged:
    """What one purge (or dry run) removed, or would remove."""

    kind: PurgeKind
    cutoff: datetime
    dry_run: bool = False
    #: The jobs purged (or, dry, that would be), oldest end first.
    job_ids: list[str] = field(default_factory=list)
    #: Bytes of the directories deleted (or, dry, that would be).
    bytes_freed: int = 0
    #: Selected, then left alone: they no longer qualified when their turn came.
    skipped: list[str] = field(default_factory=list)
    #: Their directory could not be moved (logged): left as they were, tried again later.
    failed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "cutoff": self.cutoff.isoformat(),
            "dry_run": self.dry_run,
            "count": len(self.job_ids),
            "job_ids": list(self.job_ids),
            "bytes_freed": self.bytes_freed,
            "skipped": list(self.skipped),
            "failed": list(self.failed),
        }


@dataclass
class Round:
    """What one background round did (``RetentionService.run_round``)."""

    #: Another purger held the lock: this round did nothing.
    locked_out: bool = False
    files: Purged | None = None
    rows: Purged | None = None

    @property
    def purged(self) -> int:
        return sum(len(p.job_ids) for p in (self.files, self.rows) if p is not None)


# --- the 410 every face answers ------------------------------------------------------------


def gone(job_id: str, files_expired_at: datetime) -> GoneError:
    """The error for a file of a job whose files expired."""
    return GoneError(
        f"The files of job {job_id} expired on {files_expired_at:%Y-%m-%d %H:%M} UTC and "
        "were deleted (retention).",
        files_expired=True,
        job_id=job_id,
        files_expired_at=files_expired_at.isoformat(),
    )


def require_files(job_id: str, files_expired_at: datetime | None) -> None:
    """Raise GoneError (410) if the job's files expired; its row says so."""
    if files_expired_at is not None:
        raise gone(job_id, files_expired_at)


# --- directories ----------------------------------------------------------------------------


def tree_bytes(path: Path) -> int:
    """Bytes of the regular files under *path* (symlinks not followed; 0 if missing)."""
    total = 0
    stack = [path]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(Path(entry.path))
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        except NotADirectoryError:
            try:
                if current.is_file() and not current.is_symlink():
                    total += current.stat().st_size
            except OSError:
                pass
        except OSError:
            continue
    return total


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


class RetentionService:
    def __init__(self, core: Core) -> None:
        self.core = core

    @property
    def enabled(self) -> bool:
        """Whether the configuration asks for background rounds."""
        cfg = self.core.config.retention
        return cfg.files_days is not None or cfg.rows_days is not None

    @property
    def lock_key(self) -> int:
        """The advisory lock's key: one for all nodes with a shared filesystem, else one
        per node (each purges the jobs it holds the directories of)."""
        if self.core.config.node.shared_filesystem:
            return RETENTION_LOCK_KEY
        return RETENTION_LOCK_KEY ^ (zlib.crc32(self.core.node_name.encode()) << 8)

    @contextmanager
    def exclusive(self, wait_s: float = 0.0) -> Iterator[bool]:
        """Whether this process is the one purger now, for the block's duration.

        PostgreSQL: ``pg_try_advisory_xact_lock`` in a transaction held open on a
        connection of its own (released at the block's end, or when the process
        dies), retried for *wait_s*. SQLite: always True (see the module's notes).
        """
        engine = self.core.engine
        if not is_postgres(engine):
            yield True
            return
        deadline = time.monotonic() + wait_s
        with engine.connect() as conn, conn.begin():
            while True:
                got = bool(
                    conn.execute(select(func.pg_try_advisory_xact_lock(self.lock_key))).scalar()
                )
                if got or time.monotonic() >= deadline:
                    break
                time.sleep(0.2)
            yield got

    # --- selection ------------------------------------------------------------------------

    def _conditions(
        self, kind: PurgeKind, cutoff: datetime, state: str | None
    ) -> list[ColumnElement[bool]]:
        """What makes a job purgeable: terminal, ended before *cutoff* (and, for files,
        not expired yet; without a shared filesystem, at home here)."""
        conditions: list[ColumnElement[bool]] = [
            Job.finished_at < cutoff,
            Job.state.in_([state] if state is not None else TERMINAL_VALUES),
        ]
        if kind is PurgeKind.FILES:
            conditions.insert(0, Job.files_expired_at.is_(None))
        if not self.core.config.node.shared_filesystem:
            node = self.core.node_name
            conditions.append(or_(Job.home_node == node, Job.home_node.is_(None)))
        return conditions

    def select_candidates(
        self,
        kind: PurgeKind,
        cutoff: datetime,
        *,
        state: str | None = None,
        limit: int,
        exclude: Sequence[str] = (),
    ) -> list[tuple[str, str]]:
        """Up to *limit* purgeable jobs (but *exclude*), oldest end first, as (id, job_dir):
        one range of ``ix_jobs_files_expiry`` (files) or ``ix_jobs_finished`` (rows)."""
        stmt = (
            select(Job.id, Job.job_dir)
            .where(*self._conditions(kind, cutoff, state))
            .order_by(Job.finished_at, Job.id)
            .limit(limit)
        )
        if exclude:
            stmt = stmt.where(Job.id.not_in(list(exclude)))
        with self.core.sessions.begin() as session:
            return [(job_id, job_dir) for job_id, job_dir in session.execute(stmt).all()]

    # --- purging --------------------------------------------------------------------------

    def apply(
        self,
        kind: PurgeKind,
        job_ids: Sequence[str],
        cutoff: datetime,
        *,
        state: str | None = None,
        into: Purged | None = None,
    ) -> Purged:
        """Purge each of *job_ids* that still qualifies (each in its own transaction,
        every condition checked again there); the others are left alone (``skipped``),
        as are those whose directory could not be moved aside (``failed``: the purge
        rolled back, so nothing points at files that are still there)."""
        result = into or Purged(kind, cutoff)
        for job_id in job_ids:
            try:
                freed = self._purge_one(kind, job_id, cutoff, state)
            except OSError as exc:
                logger.warning("retention: job %s left as it was: %s", job_id, exc)
                result.failed.append(job_id)
                continue
            if freed is None:
                result.skipped.append(job_id)
            else:
                result.job_ids.append(job_id)
                result.bytes_freed += freed
        return result

    def _purge_one(
        self, kind: PurgeKind, job_id: str, cutoff: datetime, state: str | None
    ) -> int | None:
        """Bytes freed, or None if the job no longer qualifies (then nothing changed)."""
        conditions = [Job.id == job_id, *self._conditions(kind, cutoff, state)]
        if kind is PurgeKind.FILES:
            stmt: Any = update(Job).where(*conditions).values(files_expired_at=utcnow())
        else:
            stmt = delete(Job).where(*conditions)
        stmt = stmt.returning(Job.job_dir).execution_options(synchronize_session=False)
        aside: tuple[Path, Path] | None = None
        try:
            with self.core.sessions.begin() as session:
                row = session.execute(stmt).first()
                if row is None:
                    return None
                aside = self._move_aside(job_id, Path(row[0]))
        except BaseException:
            if aside is not None:  # the purge did not commit: the directory comes back
                os.rename(aside[1], aside[0])
            raise
        if aside is None:
            return 0
        freed = tree_bytes(aside[1])
        _remove(aside[1])
        logger.debug("retention: %s of job %s purged (%d bytes)", kind.value, job_id, freed)
        return freed

    def _move_aside(self, job_id: str, job_dir: Path) -> tuple[Path, Path] | None:
        """Rename the job's directory to ``.expired-<id>`` beside it; None if it is not
        there (never ran, already deleted) or is not this job's own directory."""
        if job_dir.name != job_id:
            logger.warning("retention: job %s: %s is not its directory; left", job_id, job_dir)
            return None
        trash = job_dir.with_name(TRASH_PREFIX + job_id)
        try:
            os.rename(job_dir, trash)
        except FileNotFoundError:
            return None
        return job_dir, trash

    def sweep_leftovers(self) -> int:
        """Remove the ``.expired-*`` directories a crash left between a purge's commit and
        the removal (their jobs are purged already); how many were removed."""
        removed = 0
        try:
            shards = [p for p in self.core.jobs_path.iterdir() if p.is_dir()]
        except FileNotFoundError:
            return 0
        for shard in shards:
            for leftover in shard.glob(TRASH_PREFIX + "*"):
                _remove(leftover)
                removed += 1
        return removed

    # --- the two callers: the daemon's rounds, the CLI ------------------------------------

    def run_round(self) -> Round:
        """One bounded background round: at most ``retention.batch`` jobs in all, files
        first, then rows; nothing if another purger holds the lock. When there is
        nothing to do it costs the lock and one indexed query per enabled kind."""
        cfg = self.core.config.retention
        budget = cfg.batch
        done = Round()
        with self.exclusive() as held:
            if not held:
                done.locked_out = True
                return done
            now = utcnow()  # finished_at is written with the nodes' clocks too
            for kind, days in ((PurgeKind.FILES, cfg.files_days), (PurgeKind.ROWS, cfg.rows_days)):
                if days is None or budget <= 0:
                    continue
                cutoff = now - timedelta(days=days)
                picked = self.select_candidates(kind, cutoff, limit=budget)
                budget -= len(picked)
                purged = self.apply(kind, [job_id for job_id, _ in picked], cutoff)
                if kind is PurgeKind.FILES:
                    done.files = purged
                else:
                    done.rows = purged
        return done

    def purge(
        self,
        older_than_days: float,
        *,
        rows: bool = False,
        state: str | None = None,
        dry_run: bool = False,
        wait_s: float = PURGE_LOCK_WAIT_S,
    ) -> Purged:
        """``jobferry job purge``: every qualifying job, in batches of ``retention.batch``.

        *rows*: delete rows and directories (else directories only); *state*: only jobs
        in that terminal state; *dry_run*: report without removing. Raises
        ValidationError (negative age, non-terminal state), BusyError (another node
        kept the lock for *wait_s*).
        """
        if not older_than_days >= 0:
            raise ValidationError(errors={"older_than": ["Give a number of days >= 0."]})
        if state is not None and state not in TERMINAL_VALUES:
            raise ValidationError(
                f"--state {state}: only a terminal state can be purged "
                f"({', '.join(TERMINAL_VALUES)})",
                errors={"state": ["not a terminal state"]},
            )
        kind = PurgeKind.ROWS if rows else PurgeKind.FILES
        batch = self.core.config.retention.batch
        with self.exclusive(wait_s) as held:
            if not held:
                raise BusyError("another node is purging (the retention lock is held): try again")
            result = Purged(kind, utcnow() - timedelta(days=older_than_days), dry_run=dry_run)
            if dry_run:
                for job_id, job_dir in self.select_candidates(
                    kind, result.cutoff, state=state, limit=1 << 62
                ):
                    result.job_ids.append(job_id)
                    result.bytes_freed += tree_bytes(Path(job_dir))
                return result
            while picked := self.select_candidates(
                kind, result.cutoff, state=state, limit=batch, exclude=result.failed
            ):
                self.apply(
                    kind, [job_id for job_id, _ in picked], result.cutoff, state=state, into=result
                )
        return result
