"""The scheduler: claims queued jobs into free slots and watches them to the end.

Dispatch is event-driven: ``wake()`` (called when a job is queued, or a slot
frees) sets an event the loop waits on, so a submission starts its process
without waiting for a polling interval. A slow periodic tick is only the
safety net (jobs queued by another process, e.g. the CLI). Each running job is
one asyncio task awaiting ``Runner.wait``; blocking calls go through the
core's executor.

Starting a job (spawn, then store its handle) is never cut in half by a daemon
stop: ``detach`` lets starts in progress record their handles first, so the
next daemon can re-attach to every process this one started.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from jobferry.errors import (
    ConflictError,
    JobferryError,
    RunnerUnavailableError,
    StoreUnavailableError,
)
from jobferry.runners.base import RunHandle, Runner, RunStatus
from jobferry.services.core import Core
from jobferry.services.execution import ClaimedJob, ExecutionService
from jobferry.store.models import JobState

logger = logging.getLogger(__name__)

#: Safety-net interval between claims when nothing wakes the scheduler, seconds.
TICK_S = 2.0
#: How long a daemon stop waits for job starts in progress to record their handles.
START_GRACE_S = 10.0
#: Attempts at recording a job's end before giving up (until the next restart).
FINISH_ATTEMPTS = 4
#: Longest wait between retries of recording a job's end while the store is unreachable.
STORE_RETRY_MAX_S = 5.0


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
        self._starting: set[asyncio.Task[RunHandle | None]] = set()
        self._paused_until = 0.0  # loop time before which no claims (runner unavailable)

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
            try:
                await self._recover(claimed)
            except Exception:
                logger.exception("recovering job %s failed", claimed.job_id)

    async def _recover(self, claimed: ClaimedJob) -> None:
        if claimed.handle is None:
            found = await self.core.call(self.runner.find, claimed.spec)
            if found is None:
                state = await self.core.call(self.execution.recover_unstarted, claimed)
                logger.info("job %s had no process handle: now %s", claimed.job_id, state)
                return
            await self.core.call(self.execution.record_handle, claimed, found)
            claimed = ClaimedJob(
                claimed.job_id, claimed.attempt, claimed.runner, claimed.spec, found, claimed.state
            )
        handle = claimed.handle
        assert handle is not None
        try:
            await self.core.call(self.runner.adopt, handle, claimed.spec)
        except JobferryError as exc:
            logger.warning("job %s could not be re-attached: %s", claimed.job_id, exc.message)
            await self.core.call(
                self.execution.abandon, claimed, f"could not re-attach to the job: {exc.message}"
            )
            return
        logger.info("re-attached job %s (%s)", claimed.job_id, handle.external_id)
        self._watch(claimed)

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and start jobs until *stop* is set."""
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            self._wake.clear()
            timeout = TICK_S
            paused = self._paused_until - loop.time()
            if paused > 0:
                timeout = min(timeout, paused)
            elif self.free_slots:
                try:
                    claimed = await self.core.call(
                        self.execution.claim, self.runner.name, self.free_slots
                    )
                except Exception as exc:  # the store may be busy or down: retry on the tick
                    logger.error("claiming jobs failed: %s", exc)
                    claimed = []
                for job in claimed:
                    self._start(job)
                if len(claimed) and self.free_slots:
                    continue  # there may be more queued
            waiter = asyncio.ensure_future(self._wake.wait())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({waiter, stopper}, timeout=timeout, return_when="FIRST_COMPLETED")
            waiter.cancel()
            stopper.cancel()

    def _start(self, claimed: ClaimedJob) -> None:
        self.running[claimed.job_id] = asyncio.ensure_future(self._launch(claimed))

    def _watch(self, claimed: ClaimedJob) -> None:
        assert claimed.handle is not None
        self.running[claimed.job_id] = asyncio.ensure_future(self._follow(claimed))

    async def _launch(self, claimed: ClaimedJob) -> None:
        try:
            # Shielded: cancelling this task (daemon stop) must not lose a started process.
            begin = asyncio.ensure_future(self._begin(claimed))
            self._starting.add(begin)
            begin.add_done_callback(self._starting.discard)
            handle = await asyncio.shield(begin)
            if handle is not None:
                await self._follow(dataclasses.replace(claimed, handle=handle))
        finally:
            self._done(claimed.job_id)

    async def _begin(self, claimed: ClaimedJob) -> RunHandle | None:
        """Start the job's process and store its handle; None if it did not start."""
        try:
            handle = await self.core.call(self.runner.submit, claimed.spec)
        except RunnerUnavailableError as exc:
            logger.warning("job %s stays queued: %s", claimed.job_id, exc.message)
            self._paused_until = asyncio.get_running_loop().time() + TICK_S
            await self._guard(self.core.call(self.execution.requeue, claimed, exc.message))
            return None
        except Exception as exc:
            message = exc.message if isinstance(exc, JobferryError) else f"{exc!r}"
            logger.warning("job %s could not start: %s", claimed.job_id, message)
            await self._guard(self.core.call(self.execution.fail_to_start, claimed, message))
            return None
        try:
            state = await self.core.call(self.execution.record_handle, claimed, handle)
        except ConflictError:
            state = "gone"
        except Exception:
            # Follow it anyway: its end is recorded by attempt, not by handle.
            logger.exception("job %s: storing its handle failed", claimed.job_id)
            state = JobState.RUNNING.value
        if state != JobState.RUNNING.value:  # cancelled while starting
            await self._guard(self.core.call(self.runner.cancel, handle, "cancelled"))
        return handle

    async def _follow(self, claimed: ClaimedJob) -> None:
        assert claimed.handle is not None
        try:
            if claimed.state == JobState.DELETING.value:
                # Re-attached while being cancelled: the kill may never have happened.
                await self._guard(self.core.call(self.runner.cancel, claimed.handle, "cancelled"))
            status = await self.runner.wait(claimed.handle)
            state = await self._finish(claimed, status)
            logger.debug("job %s ended %s", claimed.job_id, state)
            self.core.job_changed(claimed.job_id)
            await self.core.call(self.runner.cleanup, claimed.handle)
        except ConflictError as exc:
            logger.info("job %s: %s", claimed.job_id, exc.message)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("following job %s failed", claimed.job_id)
        finally:
            self._done(claimed.job_id)

    async def _finish(self, claimed: ClaimedJob, status: RunStatus) -> str:
        """Record the job's end, retrying errors other than conflicts a few times.

        While the store is unreachable (StoreUnavailableError: PostgreSQL down or
        restarting) it keeps retrying, without using up the attempts, so an end
        that happened during the outage is recorded once the store is back.
        """
        delay = 0.5
        attempt = 0
        while True:
            try:
                return await self.core.call(self.execution.finish, claimed, status)
            except (ConflictError, asyncio.CancelledError):
                raise
            except StoreUnavailableError as exc:
                logger.warning(
                    "job %s ended but the store is unreachable (%s); retrying",
                    claimed.job_id,
                    exc.details.get("reason", exc.message),
                )
            except Exception as exc:
                attempt += 1
                if attempt >= FINISH_ATTEMPTS:
                    raise
                logger.warning(
                    "recording the end of job %s failed (%s); retrying", claimed.job_id, exc
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, STORE_RETRY_MAX_S)

    def _done(self, job_id: str) -> None:
        self.running.pop(job_id, None)
        self.wake()

    async def _guard(self, awaitable: asyncio.Future[None] | object) -> None:
        try:
            await awaitable  # type: ignore[misc]
        except asyncio.CancelledError:
            raise
        except JobferryError as exc:
            logger.error("%s", exc)
        except Exception:
            logger.exception("unexpected error")

    async def detach(self) -> None:
        """Stop following jobs without stopping them (daemon shutdown).

        Job starts in progress first get up to ``START_GRACE_S`` to store their
        handles, so that the next daemon re-attaches to them.
        """
        if self._starting:
            _, pending = await asyncio.wait(set(self._starting), timeout=START_GRACE_S)
            if pending:
                logger.warning("%d job starts did not finish before the stop", len(pending))
        tasks = list(self.running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.running.clear()
