"""The Slurm runner's view of the queue: ONE ``squeue`` for every job it follows.

Polling each job on its own would cost the controller one call per job per round;
instead every job the runner follows is tracked here, and a refresh asks about all
of them at once. The snapshot is refreshed at most once per pause; the pause
starts at 0.2 s and doubles up to the runner's ``poll_interval_s`` while nothing
changes, and falls back to 0.2 s when something does (a job is tracked, changes
state or is cancelled). While Slurm cannot be reached the old snapshot stands, so
jobs not known to be final stay running, and the outage is logged once.
"""

from __future__ import annotations

import logging
import threading
import time

from jobferry.errors import RunnerError
from jobferry.runners.slurm_cli import Queued, SlurmCli

logger = logging.getLogger(__name__)

#: The shortest pause between two squeue calls, seconds.
MIN_PAUSE_S = 0.2


class SlurmQueue:
    """The shared squeue snapshot of the tracked jobs. Thread-safe.

    Its lock is taken inside the runner's own lock, never the other way round.
    """

    def __init__(self, cli: SlurmCli, poll_interval_s: float) -> None:
        self.cli = cli
        self.poll_interval_s = max(poll_interval_s, MIN_PAUSE_S)
        self._lock = threading.Lock()  # guards what follows
        self._refresh_lock = threading.Lock()  # one squeue at a time
        self._tracked: set[str] = set()  # Slurm ids of jobs not yet final
        self._queue: dict[str, Queued] = {}  # last squeue snapshot of the tracked jobs
        self._covered: frozenset[str] = frozenset()  # ids the last snapshot asked about
        self._refreshed_at = float("-inf")  # monotonic time of the last squeue
        self._pause = MIN_PAUSE_S  # current pause between squeue calls
        self._starts: dict[str, float] = {}  # id -> Slurm start time, once running
        self._outage = False

    @property
    def pause(self) -> float:
        """The current pause between two refreshes."""
        with self._lock:
            return self._pause

    def track(self, external_id: str) -> None:
        """Follow a job from the next refresh on (which then comes soon)."""
        with self._lock:
            if external_id not in self._tracked:
                self._tracked.add(external_id)
                self._pause = MIN_PAUSE_S

    def untrack(self, external_id: str) -> None:
        """Stop asking about a job that is final (its start time is kept)."""
        with self._lock:
            self._tracked.discard(external_id)
            self._queue.pop(external_id, None)

    def forget(self, external_id: str) -> None:
        """Drop everything known about a job."""
        with self._lock:
            self._tracked.discard(external_id)
            self._queue.pop(external_id, None)
            self._starts.pop(external_id, None)

    def hurry(self) -> None:
        """Refresh soon: something is about to change (e.g. a job was cancelled)."""
        with self._lock:
            self._pause = MIN_PAUSE_S

    def seen(self, external_id: str) -> tuple[bool, Queued | None]:
        """Whether the snapshot asked about the job, and what squeue said of it (None:
        Slurm has forgotten it)."""
        with self._lock:
            return external_id in self._covered, self._queue.get(external_id)

    def start(self, external_id: str) -> float | None:
        """When Slurm started the job, once a snapshot has seen it started."""
        with self._lock:
            return self._starts.get(external_id)

    def refresh(self, force: bool = False) -> None:
        """Refresh the squeue snapshot of every tracked job with ONE call, if due."""
        with self._refresh_lock:
            with self._lock:
                ids = frozenset(self._tracked)
                age = time.monotonic() - self._refreshed_at
                if not ids or (not force and ids <= self._covered and age < self._pause - 0.01):
                    return
            try:
                queue = self.cli.squeue(ids)
            except RunnerError as exc:  # RunnerUnavailableError too
                self._note_outage(exc)
                return
            with self._lock:
                if self._outage:
                    logger.info("Slurm answers again")
                    self._outage = False
                old = {k: v.state for k, v in self._queue.items() if k in ids}
                changed = old != {k: v.state for k, v in queue.items()} or ids != self._covered
                self._queue, self._covered = queue, ids
                self._refreshed_at = time.monotonic()
                self._pause = MIN_PAUSE_S if changed else min(self._pause * 2, self.poll_interval_s)
                for key, q in queue.items():
                    if q.state != "PENDING" and q.start is not None:
                        self._starts.setdefault(key, q.start)

    def _note_outage(self, exc: Exception) -> None:
        with self._lock:
            if not self._outage:
                logger.warning("cannot poll Slurm (jobs stay as they were): %s", exc)
            self._outage = True
            self._refreshed_at = time.monotonic()
            self._pause = self.poll_interval_s
