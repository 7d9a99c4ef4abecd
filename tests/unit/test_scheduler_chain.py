"""The claim chained to a job's end (``Scheduler._chain``): while jobs wait, the end
is recorded and the next job claimed, spawned and its handle stored in one executor
call. It must hand out no slot twice, keep the node's fit and the claims' order,
start every job exactly once, and survive a daemon stop (or the ending job's task
being cancelled) in the middle. And the end's own call polls the runner only for a
job that has ended."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from jobferry.daemon.claims import Claimed
from jobferry.runners.base import RunHandle, RunState, RunStatus
from jobferry.runners.fake import FakeRunner
from jobferry.services.core import Core
from jobferry.services.execution import Claim
from jobferry.store.models import JobState
from tests.unit.test_nodes import job as state
from tests.unit.test_scheduler import (
    CountingExecution,
    Running,
    core,  # noqa: F401 - the fixture
    queue,
    scheduling,
    until,
)

START = datetime(2026, 1, 1, tzinfo=UTC)


def queued_in_order(core: Core, count: int, **values: Any) -> list[str]:  # noqa: F811
    """*count* queued jobs, oldest first (claims take them in this order)."""
    return [queue(core, created_at=START + timedelta(seconds=i), **values) for i in range(count)]


def ended_ok(core: Core, job_id: str) -> bool:  # noqa: F811
    return state(core, job_id).state == JobState.OK.value


def settled(run: Running, job_id: str) -> bool:
    scheduler = run.scheduler
    return job_id not in scheduler.running and not scheduler._in_round


def count_chains(run: Running) -> list[Claimed | None]:
    """What each chained claim handed back to the loop (recorded as they come)."""
    seen: list[Claimed | None] = []
    done = run.scheduler._chain_done

    def spy(destinations: list[str], chained: Any, got: Any, error: Any) -> None:
        seen.append(got)
        done(destinations, chained, got, error)

    run.scheduler._chain_done = spy  # type: ignore[method-assign]
    return seen


@pytest.mark.parametrize(
    ("slots", "cores", "chained_at_least"),
    [
        # Two slots, small jobs: each end claims its successor (the first two jobs
        # come from a round; near the end nothing waits any more).
        (2, 1, 20),
        # Three slots, but two jobs of 2 cores fill the node's 4: the fit holds (the
        # free third slot rouses a round after each end, which finds nothing to fit).
        (3, 2, 20),
    ],
)
def test_burst__each_end_claims_the_next_job_in_order_and_starts_each_once(
    core: Core,  # noqa: F811
    slots: int,
    cores: int,
    chained_at_least: int,
) -> None:
    runner = FakeRunner(default=None, quick_submit=True)  # jobs run until finished here
    jobs = queued_in_order(core, 24, cores=cores)  # the node has 4 cores

    async def body(run: Running) -> None:
        chains = count_chains(run)
        run.scheduler.wake()
        finished: list[str] = []
        while len(finished) < len(jobs):
            await until(lambda: bool(runner.running) or len(finished) == len(jobs))
            running = runner.running
            assert len(running) <= 2, running  # the slots, or the node's cores
            oldest = running[0]
            runner.finish(oldest)
            finished.append(oldest)
            await until(functools.partial(ended_ok, core, oldest))
            # Its task is done (end, chained claim and all) and no round runs: the next
            # end does not overlap a claim in flight (it would fall back to a round).
            await until(functools.partial(settled, run, oldest))
        await until(lambda: not run.scheduler.running)
        submits = [job_id for method, job_id in runner.calls if method == "submit"]
        assert submits == jobs  # the claims' order, each job started once
        assert Counter(submits).most_common(1)[0][1] == 1
        assert all(state(core, j).state == JobState.OK.value for j in jobs)
        started = [got for got in chains if got is not None and got.start is not None]
        assert len(started) >= chained_at_least, len(started)

    scheduling(core, runner, body, slots=slots)


def test_drained_node__an_end_claims_nothing(core: Core) -> None:  # noqa: F811
    runner = FakeRunner(default=None, quick_submit=True)
    first, second = queued_in_order(core, 2)

    async def body(run: Running) -> None:
        chains = count_chains(run)
        run.scheduler.wake()
        await until(lambda: runner.running == [first])
        run.scheduler.drained = True  # as the heartbeat sets it when an admin drains
        runner.finish(first)
        await until(lambda: state(core, first).state == JobState.OK.value)
        await until(lambda: first not in run.scheduler.running)
        await asyncio.sleep(0.3)
        assert chains == [] and runner.running == []
        assert state(core, second).state == JobState.QUEUED.value
        run.scheduler.drained = False
        run.scheduler.wake()
        await until(lambda: runner.running == [second])

    scheduling(core, runner, body, slots=1)


class HeldClaims(CountingExecution):
    """Claims wait for ``go`` once ``hold`` is set (a claim caught mid-call)."""

    def __init__(self, core: Core) -> None:  # noqa: F811
        super().__init__(core)
        self.hold = threading.Event()
        self.held = threading.Event()
        self.go = threading.Event()

    def claim_next(self, destinations: list[str], fit: Any) -> Claim:
        if self.hold.is_set():
            self.held.set()
            self.go.wait(30)
        return super().claim_next(destinations, fit)


@dataclass
class HeldChain:
    """Two queued jobs on a one-slot scheduler whose claims can be held (``HeldClaims``):
    the set-up for catching the first job's chained claim mid-call."""

    runner: FakeRunner
    first: str
    second: str
    run: Running
    execution: HeldClaims
    stop: asyncio.Event
    task: asyncio.Task[None]


def start_held_chain(core: Core) -> HeldChain:  # noqa: F811
    """Queue the two jobs and start the scheduler (called on the test's loop; its task
    first runs at the caller's next ``await``, so a spy set before then sees it all)."""
    runner = FakeRunner(default=None, quick_submit=True)
    first, second = queued_in_order(core, 2)
    run = Running(core, runner, 1)
    execution = HeldClaims(core)
    run.scheduler.execution = execution
    run.scheduler.claims.execution = execution
    stop = asyncio.Event()
    task = asyncio.ensure_future(run.scheduler.run(stop))
    return HeldChain(runner, first, second, run, execution, stop, task)


def test_stop_during_a_chained_claim__waits_for_it_and_its_job_keeps_its_handle(
    core: Core,  # noqa: F811
) -> None:
    async def main() -> None:
        chain = start_held_chain(core)
        runner, first, second = chain.runner, chain.first, chain.second
        run, execution, stop, task = chain.run, chain.execution, chain.stop, chain.task
        chains = count_chains(run)  # before the scheduler's task first runs
        run.scheduler.wake()
        await until(lambda: runner.running == [first])
        execution.hold.set()
        runner.finish(first)  # its end's call records it, then claims (held there)
        await until(execution.held.is_set)
        stop.set()
        await asyncio.wait_for(task, 60)
        detaching = asyncio.ensure_future(run.scheduler.detach())
        await asyncio.sleep(0.2)
        assert not detaching.done()  # the stop waits for the start in progress
        execution.go.set()
        await asyncio.wait_for(detaching, 60)
        assert len(chains) == 1 and chains[0] is not None and chains[0].start is not None
        assert state(core, first).state == JobState.OK.value
        row = state(core, second)  # started once, its handle stored: the next daemon's
        assert row.state == JobState.RUNNING.value and row.handle is not None
        assert [j for m, j in runner.calls if m == "submit"] == [first, second]
        assert not run.scheduler.running  # nothing left followed (or pending) here

    asyncio.run(main())


class EndsEarly(FakeRunner):
    """Says a job ended (``wait_ended`` gives None: "poll now") before it has: the
    end's own call must not record a running job, but wait for its true end."""

    async def wait_ended(self, handle: RunHandle) -> RunStatus | None:
        return None


def test_end_call_polling_a_job_still_running__waits_for_its_true_end(
    core: Core,  # noqa: F811
) -> None:
    runner = EndsEarly(default=None, quick_submit=True)
    job_id = queue(core)

    async def body(run: Running) -> None:
        run.scheduler.wake()
        await until(lambda: runner.running == [job_id])
        await asyncio.sleep(0.3)
        assert state(core, job_id).state == JobState.RUNNING.value  # not ended by the poll
        runner.finish(job_id, RunStatus(RunState.EXITED, exit_code=5))
        await until(lambda: state(core, job_id).state == JobState.ERROR.value)
        assert state(core, job_id).exit_code == 5

    scheduling(core, runner, body)


def test_job_taken_over_while_its_end_claims__the_claimed_job_is_still_followed(
    core: Core,  # noqa: F811
) -> None:
    async def main() -> None:
        chain = start_held_chain(core)
        runner, first, second = chain.runner, chain.first, chain.second
        run, execution, stop, task = chain.run, chain.execution, chain.stop, chain.task
        try:
            run.scheduler.wake()
            await until(lambda: runner.running == [first])
            execution.hold.set()
            runner.finish(first)
            await until(execution.held.is_set)  # its end recorded, the claim in flight
            # Its task is cancelled meanwhile (as when another node takes the job over).
            run.scheduler.drop(run.scheduler.followed()[first], kill=False)
            execution.hold.clear()
            execution.go.set()
            await until(lambda: second in run.scheduler.running)  # followed all the same
            runner.finish(second)
            await until(lambda: state(core, second).state == JobState.OK.value)
            await until(lambda: not run.scheduler.running)
        finally:
            stop.set()
            await asyncio.wait_for(task, 60)
            await run.scheduler.detach()

    asyncio.run(main())
