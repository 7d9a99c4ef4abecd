"""The scheduler: claims queued jobs into free slots and watches them to the end.

Dispatch is event-driven: ``wake()`` (called when a job is queued, or a slot
frees) sets an event the loop waits on, so a submission starts its process
without waiting for a polling interval. A slow periodic tick is only the
safety net (jobs queued by another process, e.g. the CLI). Each running job is
one asyncio task awaiting ``Runner.wait``; blocking calls go through the
core's executor.
"""

from __future__ import annotations

import asyncio
import logging

from jobferry.errors import ConflictError, JobferryError
from jobferry.runners.base import Runner
from jobferry.services.core import Core
from jobferry.services.execution import ClaimedJob, ExecutionService

logger = logging.getLogger(__name__)

#: Safety-net interval between claims when nothing wakes the scheduler, seconds.
TICK_S = 2.0


class Scheduler:
    def __init__(
        self, core: Core, execution: ExecutionService, runner: Runner, *, slots: int
    ) -> None:
        self.core = core
        self.execution = execution
        self.runner = runner
        self.slots = slots
        self.running: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Ask for a claim round soon. Call on the event loop."""
        self._wake.set()

    @property
    def free_slots(self) -> int:
        return max(0, self.slots - len(self.running))

    async def recover(self) -> None:
        """Re-attach to this node's jobs left running by an earlier daemon."""
        for claimed in await self.core.call(self.execution.in_flight):
            if claimed.runner != self.runner.name:
                continue
            if claimed.handle is None:
                state = await self.core.call(self.execution.recover_unstarted, claimed)
                logger.info("job %s had no process handle: now %s", claimed.job_id, state)
                continue
            try:
                await self.core.call(self.runner.adopt, claimed.handle, claimed.spec)
            except JobferryError as exc:
                logger.warning("job %s could not be re-attached: %s", claimed.job_id, exc)
            logger.info("re-attached job %s (%s)", claimed.job_id, claimed.handle.external_id)
            self._watch(claimed)

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and start jobs until *stop* is set."""
        while not stop.is_set():
            self._wake.clear()
            if self.free_slots:
                try:
                    claimed = await self.core.call(
                        self.execution.claim, self.runner.name, self.free_slots
                    )
                except JobferryError as exc:
                    logger.error("claiming jobs failed: %s", exc)
                    claimed = []
                for job in claimed:
                    self._start(job)
                if len(claimed) and self.free_slots:
                    continue  # there may be more queued
            waiter = asyncio.ensure_future(self._wake.wait())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({waiter, stopper}, timeout=TICK_S, return_when="FIRST_COMPLETED")
            waiter.cancel()
            stopper.cancel()

    def _start(self, claimed: ClaimedJob) -> None:
        self.running[claimed.job_id] = asyncio.ensure_future(self._launch(claimed))

    def _watch(self, claimed: ClaimedJob) -> None:
        assert claimed.handle is not None
        self.running[claimed.job_id] = asyncio.ensure_future(self._follow(claimed))

    async def _launch(self, claimed: ClaimedJob) -> None:
        try:
            handle = await self.core.call(self.runner.submit, claimed.spec)
        except JobferryError as exc:
            logger.warning("job %s could not start: %s", claimed.job_id, exc.message)
            await self._guard(self.core.call(self.execution.fail_to_start, claimed, exc.message))
            self._done(claimed.job_id)
            return
        try:
            state = await self.core.call(self.execution.record_handle, claimed, handle)
        except ConflictError:
            state = "gone"
        if state != "running":  # cancelled while starting
            await self.core.call(self.runner.cancel, handle, "cancelled")
        await self._follow(
            ClaimedJob(claimed.job_id, claimed.attempt, claimed.runner, claimed.spec, handle)
        )

    async def _follow(self, claimed: ClaimedJob) -> None:
        assert claimed.handle is not None
        try:
            status = await self.runner.wait(claimed.handle)
            state = await self.core.call(self.execution.finish, claimed, status)
            logger.debug("job %s ended %s", claimed.job_id, state)
            await self.core.call(self.runner.cleanup, claimed.handle)
        except ConflictError as exc:
            logger.info("job %s: %s", claimed.job_id, exc.message)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("following job %s failed", claimed.job_id)
        finally:
            self._done(claimed.job_id)

    def _done(self, job_id: str) -> None:
        self.running.pop(job_id, None)
        self.wake()

    async def _guard(self, awaitable: asyncio.Future[None] | object) -> None:
        try:
            await awaitable  # type: ignore[misc]
        except JobferryError as exc:
            logger.error("%s", exc)

    async def detach(self) -> None:
        """Stop following jobs without stopping them (daemon shutdown)."""
        tasks = list(self.running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.running.clear()
