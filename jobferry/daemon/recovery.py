"""Recovery: the jobs this node follows without having claimed them, and the ones it
must let go.

The scheduler follows the jobs its claims start. Every other change to the set of
jobs a node follows is recovery's, and happens rarely:

- At start (``recover``), before serving: every job the store says is in flight on
  this node (left running by an earlier daemon) is re-attached. A job whose handle
  was never stored (the daemon stopped between spawn and store) is looked for by
  its spec; found, its handle is stored now; not found, the store decides what
  becomes of it (``ExecutionService.recover_unstarted``). A job whose process,
  container or Slurm job cannot be re-attached (``Runner.adopt``) fails with the
  reason. Then each runner's leftovers of jobs that ended meanwhile (containers of
  jobs that finished while the daemon was down) are removed. A failure recovering
  one job is logged and does not stop the others, nor the start.
- While running, at each heartbeat (``daemon.heartbeat``): jobs another node took
  over while this one was declared dead are dropped (``drop_lost``: the process of
  a requeued attempt is killed, since another node runs the job now; a job adopted
  by another node is just no longer followed), and Slurm jobs the reaper adopted
  from a dead node are followed like the ones found at start (``follow_adopted``).

Recovery sees the scheduler only through ``Follower``: which jobs it follows, and
to follow or drop one. Jobs are recovered one after the other (they are few), off
the submission path.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Protocol

from jobferry.daemon.logcontext import job_context, job_scope
from jobferry.errors import JobferryError
from jobferry.runners.base import Runner
from jobferry.services.core import Core
from jobferry.services.execution import ClaimedJob, ExecutionService
from jobferry.store.models import JobState

logger = logging.getLogger(__name__)


class Follower(Protocol):
    """What recovery needs of the scheduler (``daemon.scheduler.Scheduler``)."""

    def followed(self) -> Mapping[str, ClaimedJob]:
        """The attempt followed for each job this node follows (live, not a copy)."""
        ...

    def watch(self, claimed: ClaimedJob) -> None:
        """Follow *claimed*, a job with a handle, to its end (on the event loop)."""
        ...

    def drop(self, claimed: ClaimedJob, *, kill: bool) -> None:
        """Stop following *claimed*; *kill*: stop its process too."""
        ...


class Recovery:
    def __init__(
        self,
        core: Core,
        execution: ExecutionService,
        runners: Mapping[str, Runner],
        follower: Follower,
    ) -> None:
        self.core = core
        self.execution = execution
        self.runners = runners
        self.follower = follower

    async def recover(self) -> None:
        """Re-attach to this node's jobs left running by an earlier daemon."""
        for claimed in await self.core.call(self.execution.in_flight):
            if claimed.runner not in self.runners:
                logger.warning(
                    "job %s runs on runner %r, which this daemon does not have; left as is",
                    claimed.job_id,
                    claimed.runner,
                    extra=job_context(claimed, self.core.node_name),
                )
                continue
            try:
                with job_scope(claimed, self.core.node_name):
                    await self._recover(claimed)
            except Exception:
                logger.exception(
                    "recovering job %s failed",
                    claimed.job_id,
                    extra=job_context(claimed, self.core.node_name),
                )
        for runner in self.runners.values():
            try:
                await self.core.call(self._sweep, runner)
            except Exception:
                logger.exception("cleaning up after runner %s failed", runner.name)

    def _sweep(self, runner: Runner) -> None:
        """Release what a runner still holds for jobs that already ended (e.g. containers
        of jobs that finished while the daemon was down). Blocking."""
        leftovers = runner.leftovers()
        if not leftovers:
            return
        ended = self.execution.ended({job_id for job_id, _ in leftovers})
        for job_id, handle in leftovers:
            if job_id in ended:
                logger.info(
                    "removing what is left of ended job %s (%s)",
                    job_id,
                    runner.name,
                    extra=job_context(job_id, self.core.node_name),
                )
                runner.cleanup(handle)

    async def _recover(self, claimed: ClaimedJob) -> None:
        context = job_context(claimed, self.core.node_name)
        if claimed.handle is None:
            found = await self.core.call(self.runners[claimed.runner].find, claimed.spec)
            if found is None:
                state = await self.core.call(self.execution.recover_unstarted, claimed)
                logger.info(
                    "job %s had no process handle: now %s", claimed.job_id, state, extra=context
                )
                return
            await self.core.call(self.execution.record_handle, claimed, found)
            claimed = dataclasses.replace(claimed, handle=found)
        handle = claimed.handle
        assert handle is not None
        try:
            await self.core.call(self.runners[claimed.runner].adopt, handle, claimed.spec)
        except JobferryError as exc:
            logger.warning(
                "job %s could not be re-attached: %s", claimed.job_id, exc.message, extra=context
            )
            await self.core.call(
                self.execution.abandon, claimed, f"could not re-attach to the job: {exc.message}"
            )
            return
        logger.info("re-attached job %s (%s)", claimed.job_id, handle.external_id, extra=context)
        self.follower.watch(claimed)

    async def drop_lost(self) -> list[str]:
        """Stop following the jobs that are no longer this node's: requeued as a newer
        attempt (their processes are killed: another node runs them now) or adopted by
        another node (followed there; left running). Returns their ids."""
        following = self.follower.followed()
        followed = dict(following)
        if not followed:
            return []
        owners = await self.core.call(self.execution.owners, set(followed))
        me = self.core.node_name
        lost: list[str] = []
        for job_id, claimed in followed.items():
            if following.get(job_id) is not claimed or job_id not in owners:
                continue
            node, attempt, state = owners[job_id]
            if attempt != claimed.attempt or state == JobState.QUEUED.value:
                how = "requeued" if state == JobState.QUEUED.value else f"attempt {attempt}"
                logger.warning(
                    "job %s attempt %d is no longer this node's (%s); stopping it",
                    job_id,
                    claimed.attempt,
                    how,
                    extra=job_context(claimed, me),
                )
                self.follower.drop(claimed, kill=True)
                lost.append(job_id)
            elif node != me:
                logger.warning(
                    "job %s was adopted by node %s; no longer following it",
                    job_id,
                    node,
                    extra=job_context(claimed, me),
                )
                self.follower.drop(claimed, kill=False)
                lost.append(job_id)
        return lost

    async def follow_adopted(self) -> None:
        """Follow this node's in-flight jobs it does not follow yet (adopted from a dead
        node by the reaper): like ``recover`` does for each job at start."""
        following = self.follower.followed()
        for claimed in await self.core.call(self.execution.in_flight):
            if claimed.job_id in following or claimed.runner not in self.runners:
                continue
            try:
                with job_scope(claimed, self.core.node_name):
                    await self._recover(claimed)
            except Exception:
                logger.exception(
                    "following adopted job %s failed",
                    claimed.job_id,
                    extra=job_context(claimed, self.core.node_name),
                )
