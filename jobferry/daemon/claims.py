"""The scheduler's blocking work in the worker threads: claim a job, spawn it, store
its handle.

For runners that start jobs quickly (``Runner.quick_submit``: the local runner),
the claim, the spawn and storing the handle are one executor call (``claim``), so
a job is spawned the moment its claim commits, without a round trip through the
event loop; on a busy node that call is even chained to the end of the job whose
slot it takes (``daemon.endings.Then``, ``Scheduler._chain``). Everything here
runs in a worker thread and touches none of the scheduler's state: what it
decides is handed back to the loop as a ``Claimed``.

A chained claim is a round of its own. ``Scheduler._in_round`` is set until it is
back on the loop: no offer to submissions (``daemon.dispatch``), and no other round
(``_rounds`` waits for it), so no slot is handed out twice. Its fit counts the
ending job's slot and resources as free (that end is recorded first, in the same
call; ``max_concurrent`` is counted in the claim's own transaction, after it). It
claims from the destinations a round would, in the same order (the store's), but
only those using node resources like the job whose slot it takes; the backlog
stays set when others exist, so a round looks at them. A paused runner's
destinations, a drained node or a closing scheduler get no chained claim. A daemon
stop waits for it like a start in progress (``Scheduler.detach``), and the job it
started is followed even if the ending job's task was cancelled meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from jobferry.daemon.dispatch import StartingJob
from jobferry.daemon.logcontext import JOB, job_context, job_scope
from jobferry.errors import ConflictError
from jobferry.runners.base import RunHandle, Runner
from jobferry.services.execution import ClaimedJob, ExecutionService
from jobferry.store import transitions
from jobferry.store.models import JobState

logger = logging.getLogger("jobferry.daemon.scheduler")  # the lines the scheduler always logged


@dataclass(frozen=True)
class Claimed:
    """One claim (``Claims.claim``): the job to start (None: nothing claimed) and
    whether queued jobs may still wait (``execution.Claim.backlog``)."""

    start: StartingJob | None
    backlog: bool


class Claims:
    """Claims, spawns and stores handles for one node (blocking; worker threads)."""

    def __init__(self, execution: ExecutionService, runners: Mapping[str, Runner], node: str):
        self.execution = execution
        self.runners = runners
        self.node = node

    def claim(self, destinations: list[str], fit: transitions.NodeResources | None) -> Claimed:
        """Claim a job; spawn it at once (and store its handle) if its runner starts
        jobs quickly. A failed spawn is handed back (``StartingJob.error``)."""
        JOB.set(None)  # a claim chained to a job's end runs in that job's context
        claim = self.execution.claim_next(destinations, fit)
        claimed = claim.job
        if claimed is None:
            return Claimed(None, claim.backlog)
        runner = self.runners[claimed.runner]
        if not runner.quick_submit:
            return Claimed(StartingJob(claimed), claim.backlog)
        with job_scope(claimed, self.node):  # the runner's lines are about the job
            try:
                handle = runner.submit(claimed.spec)
            except Exception as exc:  # handled on the loop, like a failed start in _begin
                return Claimed(StartingJob(claimed, error=exc), claim.backlog)
            state = self.record(claimed, handle)  # in this call too: one hop less per job
        return Claimed(StartingJob(claimed, handle, state=state), claim.backlog)

    def spawn_and_record(self, runner: Runner, claimed: ClaimedJob) -> tuple[RunHandle, str]:
        """Start the job, then store its handle; (handle, the job's state)."""
        handle = runner.submit(claimed.spec)
        return handle, self.record(claimed, handle)

    def record(self, claimed: ClaimedJob, handle: RunHandle) -> str:
        """Store a started job's handle; the job's state ("gone": no longer ours).
        Never raises."""
        try:
            return self.execution.record_handle(claimed, handle)
        except ConflictError:
            return "gone"
        except Exception:
            # Follow it anyway: its end is recorded by attempt, not by handle.
            extra = job_context(claimed, self.node)
            logger.exception("job %s: storing its handle failed", claimed.job_id, extra=extra)
            return JobState.RUNNING.value
