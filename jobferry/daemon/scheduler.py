"""The scheduler: claims queued jobs into free slots and watches them to the end.

Dispatch is event-driven: ``wake()`` (called when a job is queued, or a slot
frees) sets an event the loop waits on, so a submission starts its process
without waiting for a polling interval. A slow periodic tick is only the
safety net (jobs queued by another process, e.g. the CLI). Each running job is
one asyncio task awaiting ``Runner.wait``; blocking calls go through the
core's executor.

One scheduler serves every runner this daemon has (local, docker, slurm). It
claims one job at a time, from the destinations whose runner has a free slot
(and whose ``max_concurrent`` is not reached): local and Docker jobs must fit
the node's remaining cores, memory and GPUs, and the head job is reserved (see
``transitions.claim_next_job``) so large jobs do not starve; Slurm jobs use no
node resources (what jobs hold and what is left: ``daemon.resources``). A runner
that reports itself unavailable (engine or controller down) pauses claims for its
destinations with back-off (``daemon.pauses``); its jobs stay queued and the outage
is logged once. A job's end is learned from its runner (``Runner.wait_ended``) or
its wrapper's callback (``job_callback``), whichever comes first (``daemon.endings``).

Claim rounds happen only when they can find something: after a submission
(``wake``), on the tick, or when a slot frees while jobs may be waiting (a claim
says whether more were left; a runner without free slots, a paused runner, a
reserved head job or a full ``max_concurrent`` keep the backlog open). A lone
job on an idle node therefore costs one claim, not three, and no needless claim
competes with it for the CPU while it starts and ends.

For runners that start jobs quickly (``Runner.quick_submit``: the local runner),
the claim, the spawn and storing the handle are one executor call, so a job is
spawned the moment its claim commits (``daemon.claims``). While jobs wait, that
call is chained to the end of the job whose slot it takes (``_chain``): a round of
its own, in the end's executor call.

Starting a job (spawn, then store its handle) is never cut in half by a daemon
stop: ``detach`` lets starts in progress record their handles first, so the
next daemon can re-attach to every process this one started.

A drained node claims nothing (``daemon.heartbeat``). Jobs followed without a claim
(re-attached at start, adopted from a dead node) and those to let go (taken over
while this node was declared dead) are ``daemon.recovery``'s, through ``watch``,
``followed`` and ``drop``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from jobferry.daemon.claims import Claimed, Claims
from jobferry.daemon.dispatch import DirectStart, SlotOffer, StartingJob, direct_destinations
from jobferry.daemon.endings import Then, follow_to_end
from jobferry.daemon.logcontext import job_context, job_task
from jobferry.daemon.pauses import Pauses
from jobferry.daemon.recovery import Recovery
from jobferry.daemon.resources import NODE_RUNNERS, HeldResources, node_fit
from jobferry.errors import JobferryError, RunnerUnavailableError
from jobferry.runners.base import RunHandle, Runner
from jobferry.services.core import Core
from jobferry.services.execution import ClaimedJob, ExecutionService
from jobferry.services.nodes import NodeUsage
from jobferry.store import transitions
from jobferry.store.models import JobState

logger = logging.getLogger(__name__)

#: Safety-net interval between claims when nothing wakes the scheduler, seconds
#: (±20 % jitter); submissions on this node wake it at once, on other nodes through
#: PostgreSQL NOTIFY.
TICK_S = 2.0
#: How long a daemon stop waits for job starts in progress to record their handles.
START_GRACE_S = 10.0


class Scheduler:
    def __init__(
        self,
        core: Core,
        execution: ExecutionService,
        runners: dict[str, Runner],
        *,
        slots: dict[str, int],
    ) -> None:
        self.core = core
        self.execution = execution
        self.runners = runners
        self.slots = slots
        self.running: dict[str, asyncio.Task[None]] = {}
        #: The attempt followed for each job in ``running`` (with its handle once known).
        self._claims: dict[str, ClaimedJob] = {}
        self._use: dict[str, HeldResources] = {}
        #: The blocking side of claims and starts (worker threads).
        self.claims = Claims(execution, runners, core.node_name)
        #: Set from the node's row (an admin drained it): claim nothing new.
        self.drained = False
        #: Set by ``wake`` (and a freed slot with a backlog) until the next round begins.
        self._woken = False
        self._sleeper: asyncio.Future[None] | None = None
        #: Whether queued jobs may wait that a freed slot could take (see ``run``).
        self._backlog = True
        #: Submissions start their jobs themselves while nothing waits (daemon.dispatch).
        self.direct = DirectStart(
            runners=runners,
            spec=execution.spec,
            node=core.node_name,
            record=self.claims.record,
            take_over=self.take_over,
            drained=lambda: self.drained,
            wake=self.wake,
        )
        self._in_round = False
        self._closed = False
        #: Starts in progress (and chained claims): a stop lets them store their handles.
        self._starting: set[asyncio.Future[Any]] = set()
        #: Done when the claim chained to a job's end (``_chain``) is back on the loop.
        self._chained: asyncio.Future[None] | None = None
        self._paused = Pauses()  # runners that said they are unavailable: no claims a while
        self._finished_elsewhere: dict[str, asyncio.Future[None]] = {}  # see job_callback
        self._stopping: set[asyncio.Future[None]] = set()
        #: Jobs followed without a claim: re-attached at start, adopted, or lost.
        self.recovery = Recovery(core, execution, runners, self)

    def wake(self) -> None:
        """Ask for a claim round soon (jobs were queued) if one could claim. On the loop."""
        self._backlog = True  # then a freed slot rouses it; a paused runner's pause ends one
        self.direct.publish(None)
        if self._in_round or any(self._claimable(asyncio.get_running_loop().time())):
            self._rouse()

    def _slot_freed(self) -> None:
        """A job ended: claim again only if jobs may be waiting and a round could claim
        (a claim chained to the end may have taken the slot; a pause sets the timeout)."""
        now = asyncio.get_running_loop().time()
        if self._backlog and (any(self._claimable(now)) or self._paused.ends()):
            self._rouse()
        self._publish()

    def _rouse(self) -> None:
        self._woken = True
        if self._sleeper is not None and not self._sleeper.done():
            self._sleeper.set_result(None)

    async def _sleep(self, timeout: float) -> None:
        """Until roused, or for *timeout* seconds (a future and a timer: this runs
        after every submission, so no tasks are made for it)."""
        if self._woken:
            return
        loop = asyncio.get_running_loop()
        sleeper: asyncio.Future[None] = loop.create_future()
        self._sleeper = sleeper
        timer = loop.call_later(timeout, _settle, sleeper)
        try:
            await sleeper
        finally:
            timer.cancel()
            self._sleeper = None

    def take_over(self, start: StartingJob | None) -> None:
        """Follow a job a submission started itself (None: its reservation was given
        back). On the event loop, in the same step that drops its reservation."""
        if start is not None:
            self._start(start)
        self._publish()

    def _publish(self) -> None:
        """Offer submissions what a claim round would hand out (``daemon.dispatch``)."""
        if self._backlog or self.drained or self._closed or self._in_round:
            self.direct.publish(None)
            return
        destinations = direct_destinations(self.core.config, self.runners, self._paused)
        if not destinations:
            self.direct.publish(None)
            return
        fit = self._fit()
        slots = {runner: self._free(runner) for runner in set(destinations.values())}
        offer = SlotOffer(destinations, slots, fit.free_cores, fit.free_memory_mb, fit.free_gpus)
        self.direct.publish(offer)

    def job_callback(self, job_id: str) -> None:
        """A wrapper's callback ended *job_id* in the store: stop waiting on its runner."""
        told = self._finished_elsewhere.get(job_id)
        if told is not None and not told.done():
            told.set_result(None)

    @property
    def free_slots(self) -> int:
        return sum(self._free(name) for name in self.runners)

    def _free(self, runner: str) -> int:
        used = sum(1 for u in self._uses() if u.runner == runner)
        return max(0, self.slots.get(runner, 0) - used)

    def _uses(self) -> list[HeldResources]:
        """What the jobs this node follows use, and what submissions reserved."""
        reserved = [
            HeldResources(r.runner, r.destination, r.cores, r.memory_mb, r.gpus)
            for r in self.direct.reserved()
        ]
        return [*self._use.values(), *reserved]

    def _fit(self) -> transitions.NodeResources:
        return node_fit(self.core.node_capacity, self._uses())

    def usage(self) -> NodeUsage:
        """What this node has left for local and Docker jobs, and the jobs it follows."""
        fit = self._fit()
        return NodeUsage(fit.free_cores, fit.free_memory_mb, fit.free_gpus, len(self._use))

    def _claimable(self, now: float) -> tuple[list[str], list[str]]:
        """Destinations to claim from now: (using node resources, not using them)."""
        node: list[str] = []
        cluster: list[str] = []
        for name, dest in self.core.config.destinations.items():
            runner = dest.runner
            if runner not in self.runners or self._free(runner) <= 0:
                continue
            if self._paused.until(runner) > now:
                continue
            (node if runner in NODE_RUNNERS else cluster).append(name)
        return node, cluster

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and start jobs until *stop* is set."""
        loop = asyncio.get_running_loop()
        stopping = asyncio.ensure_future(stop.wait())
        stopping.add_done_callback(lambda _: self._rouse())
        try:
            await self._rounds(loop, stop)
        finally:
            stopping.cancel()
            self._closed = True
            self.direct.publish(None)

    async def _rounds(self, loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
        while not stop.is_set():
            while self._chained is not None:  # a chained claim is a round of its own
                await asyncio.wait({self._chained})
            self._woken = False
            self._in_round = True
            self.direct.publish(None)  # what this round hands out is not on offer meanwhile
            now = loop.time()
            node, cluster = ([], []) if self.drained else self._claimable(now)
            # Jobs may wait where this round cannot look (no free slot, a paused
            # runner, a drained node): then a freed slot must bring another round.
            backlog = self.drained or self._unclaimable(node + cluster)
            started = 0
            for destinations, fit in ((node, self._fit()), (cluster, None)):
                if not destinations:
                    continue
                try:
                    got = await self.core.call(self.claims.claim, destinations, fit)
                except Exception as exc:  # the store may be busy or down: retry on the tick
                    logger.error("claiming jobs failed: %s", exc)
                    backlog = True
                    break
                if got.start is not None:
                    self._start(got.start)
                    started += 1
                # More left, the head job reserved, or a destination full: jobs wait.
                backlog = backlog or got.backlog
            self._backlog = backlog
            self._in_round = False
            self._publish()
            if started and backlog:
                continue  # there are more queued
            # Jittered, so that nodes polling one store do not fall into step.
            timeout = TICK_S * random.uniform(0.8, 1.2)
            for until in self._paused.ends():
                if until > now:
                    timeout = min(timeout, until - now)
            await self._sleep(timeout)

    def _unclaimable(self, claimable: list[str]) -> bool:
        """Whether some destination of this daemon's runners is left out of a round."""
        return any(
            name not in claimable and dest.runner in self.runners
            for name, dest in self.core.config.destinations.items()
        )

    def _chain(self, ending: ClaimedJob) -> Then | None:
        """On the loop, right before *ending*'s end is recorded: the claim of the next
        job into its slot, to run in the same executor call (None: not now; the freed
        slot rouses a round as usual). A round of its own (``daemon.claims``)."""
        runner = self.runners.get(ending.runner)
        if runner is None or not runner.quick_submit or ending.runner not in NODE_RUNNERS:
            return None
        if not self._backlog or self.drained or self._closed or self._in_round:
            return None  # nothing waits, or no claim may be made now
        self.direct.publish(None)  # none while jobs wait; and the fit counts reservations
        held = self._use.pop(ending.job_id, None)  # free once its end is recorded
        node, _ = self._claimable(asyncio.get_running_loop().time())
        fit = self._fit()
        if held is not None:
            self._use[ending.job_id] = held
        if not node:
            return None
        self._in_round = True  # no offer and no other round until it is back
        self._chained = asyncio.get_running_loop().create_future()
        self._starting.add(self._chained)  # a stop waits for it, like a start in progress
        done = functools.partial(self._chain_done, node, self._chained)
        return Then(functools.partial(self.claims.claim, node, fit), done)

    def _chain_done(
        self,
        destinations: list[str],
        chained: asyncio.Future[None],
        got: Claimed | None,
        error: BaseException | None,
    ) -> None:
        """A chained claim is back: follow what it started, as a round would."""
        try:
            if error is not None:
                logger.error("claiming jobs failed: %s", error)
            if got is None:  # failed, or not run (the end was not recorded)
                self._backlog = True
                self._rouse()  # let a round claim (after the usual end's bookkeeping)
                return
            if got.start is not None:
                self._start(got.start)
            self._backlog = got.backlog or self.drained or self._unclaimable(destinations)
        finally:
            self._in_round = False
            self._chained = None
            self._starting.discard(chained)
            chained.set_result(None)
            self._publish()

    def _start(self, start: StartingJob) -> None:
        claimed = start.claimed  # its task's lines are about it (``daemon.logcontext``)
        self._account(claimed)
        self.running[claimed.job_id] = job_task(claimed, self.core.node_name, self._launch(start))

    def watch(self, claimed: ClaimedJob) -> None:
        """Follow *claimed*, a job with a handle, to its end (``daemon.recovery``)."""
        assert claimed.handle is not None
        self._account(claimed)
        self.running[claimed.job_id] = job_task(claimed, self.core.node_name, self._follow(claimed))

    def _account(self, claimed: ClaimedJob) -> None:
        old = self._claims.get(claimed.job_id)
        if old is not None and old.attempt != claimed.attempt:
            # A newer attempt of a job this node still followed (it was requeued while
            # this node was declared dead, and came back here): drop the old one.
            self.drop(old, kill=True)
        self._claims[claimed.job_id] = claimed
        spec = claimed.spec
        self._use[claimed.job_id] = HeldResources(
            claimed.runner, spec.destination, spec.cores, spec.memory_mb or 0, spec.gpus
        )

    async def _launch(self, start: StartingJob) -> None:
        claimed = start.claimed
        try:
            if start.handle is not None and start.state == JobState.RUNNING.value:
                handle: RunHandle | None = start.handle  # started and stored: nothing to await
                self._paused.resume(self.runners[claimed.runner].name)
            else:  # shielded: cancelling this task (a stop) must not lose a started process
                begin = asyncio.ensure_future(self._begin(start))
                self._starting.add(begin)
                begin.add_done_callback(self._starting.discard)
                handle = await asyncio.shield(begin)
            if handle is not None:
                current = self._claims.get(claimed.job_id)
                claimed = replace(claimed, handle=handle)
                if current is not None and current.attempt == claimed.attempt:
                    self._claims[claimed.job_id] = claimed
                await self._follow(claimed)
        finally:
            self._done(claimed)

    async def _begin(self, start: StartingJob) -> RunHandle | None:
        """Start the job's process and store its handle (unless ``_claim`` or a direct
        start did both); None if it did not start.

        Spawning and storing the handle are one executor call (one hop off the loop
        instead of two: this is on every job's path from submission to running)."""
        claimed = start.claimed
        runner = self.runners[claimed.runner]
        try:
            if start.error is not None:
                raise start.error
            if start.handle is not None:  # spawned, and its handle stored unless state is None
                handle, state = start.handle, start.state
                if state is None:
                    state = await self.core.call(self.claims.record, claimed, handle)
            else:
                handle, state = await self.core.call(self.claims.spawn_and_record, runner, claimed)
        except RunnerUnavailableError as exc:
            self._paused.pause(runner.name, asyncio.get_running_loop().time(), exc.message)
            extra = job_context(claimed, self.core.node_name)
            logger.info("job %s stays queued: %s", claimed.job_id, exc.message, extra=extra)
            await self._guard(self.core.call(self.execution.requeue, claimed, exc.message))
            return None
        except Exception as exc:
            message = exc.message if isinstance(exc, JobferryError) else f"{exc!r}"
            extra = job_context(claimed, self.core.node_name)
            logger.warning("job %s could not start: %s", claimed.job_id, message, extra=extra)
            await self._guard(self.core.call(self.execution.fail_to_start, claimed, message))
            return None
        self._paused.resume(runner.name)
        if state != JobState.RUNNING.value:  # cancelled (or ended by a callback) while starting
            if state == "gone":  # not this attempt's (on this node) any more
                await self._guard(self.core.call(runner.stop_stale, handle))
            elif state in (JobState.DELETING.value, JobState.DELETED.value):
                await self._guard(self.core.call(runner.cancel, handle, "cancelled"))
        return handle

    async def _follow(self, claimed: ClaimedJob) -> None:
        """Until its end is recorded (``daemon.endings``); then its slot is free."""
        elsewhere = self._finished_elsewhere.setdefault(claimed.job_id, asyncio.Future())
        try:
            runner = self.runners[claimed.runner]
            chain = functools.partial(self._chain, claimed)
            await follow_to_end(self.core, self.execution, runner, claimed, elsewhere, chain)
        finally:
            self._finished_elsewhere.pop(claimed.job_id, None)
            self._done(claimed)

    def _done(self, claimed: ClaimedJob) -> None:
        job_id = claimed.job_id
        current = self._claims.get(job_id)
        if current is not None and current.attempt != claimed.attempt:
            return  # a newer attempt of the job is followed now: its entries stay
        self._claims.pop(job_id, None)
        self.running.pop(job_id, None)
        self._use.pop(job_id, None)
        self._slot_freed()

    # --- what recovery needs (daemon.recovery) ---------------------------------------------

    def followed(self) -> Mapping[str, ClaimedJob]:
        """The attempt followed for each job this node follows (live, not a copy)."""
        return self._claims

    def drop(self, claimed: ClaimedJob, *, kill: bool) -> None:
        """Stop following *claimed* (another node has it now); *kill*: stop its process."""
        job_id = claimed.job_id
        task = self.running.get(job_id)
        self._done(claimed)
        self._finished_elsewhere.pop(job_id, None)
        if task is not None:
            task.cancel()
        handle = claimed.handle
        if handle is None or claimed.runner not in self.runners:
            return  # a start in progress: storing its handle fails and stops the process
        runner = self.runners[claimed.runner]

        def stop() -> None:
            if kill:
                runner.stop_stale(handle)
                runner.poll(handle)  # reap it if it is our child
            runner.cleanup(handle)

        future = job_task(claimed, self.core.node_name, self._guard(self.core.call(stop)))
        self._stopping.add(future)
        future.add_done_callback(self._stopping.discard)

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
        # Jobs that submissions started themselves are handed over within moments.
        loop = asyncio.get_running_loop()
        until = loop.time() + START_GRACE_S
        while self.direct.reserved() and loop.time() < until:
            await asyncio.sleep(0.01)
        if self._starting:
            _, pending = await asyncio.wait(set(self._starting), timeout=START_GRACE_S)
            if pending:
                logger.warning("%d job starts did not finish before the stop", len(pending))
        tasks = list(self.running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.running.clear()
        self._claims.clear()
        if self._stopping:  # stale attempts being killed: let that finish
            await asyncio.wait(set(self._stopping), timeout=START_GRACE_S)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
