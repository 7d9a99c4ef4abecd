"""The scheduler on a fake runner: claim rounds only when something can be claimed,
freed slots taking waiting jobs, and spawning in the claim's own call (quick runners)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from jobferry.config import parse_config
from jobferry.daemon.dispatch import Reservation
from jobferry.daemon.scheduler import TICK_S, Scheduler
from jobferry.errors import JobferryError, SubmitError
from jobferry.runners.base import RunState, RunStatus
from jobferry.runners.fake import FakeRunner
from jobferry.services.container import build as make_services
from jobferry.services.core import Core, Principal
from jobferry.services.execution import ClaimedJob, ExecutionService
from jobferry.services.job_files import JobFilesService
from jobferry.services.jobs import SubmitRequest
from jobferry.services.nodes import NodeService
from jobferry.services.scripts import ScriptUpload
from jobferry.store.engine import check_schema
from jobferry.store.models import Job, JobState, Node, User
from tests.db import with_database
from tests.helpers import DEADLINE_S
from tests.unit.test_nodes import add_job
from tests.unit.test_nodes import job as state


class CountingExecution(ExecutionService):
    """Counts claims."""

    def __init__(self, core: Core) -> None:
        super().__init__(core, base_url="http://127.0.0.1:1")
        self.claims = 0

    def claim_next(self, destinations: list[str], fit: Any) -> ClaimedJob | None | bool:
        self.claims += 1
        return super().claim_next(destinations, fit)


@pytest.fixture
def core(tmp_path: Path) -> Iterator[Core]:
    data = tmp_path / "data"
    config = {"data_dir": str(data), "node": {"name": "n1", "cores": 4, "memory_mb": 1000}}
    core = Core(parse_config(with_database(config, data)), node_name="n1")
    core.ensure_dirs()
    check_schema(core.engine)
    NodeService(core).register(url="http://127.0.0.1:1")
    with core.sessions.begin() as session:
        session.add(User(id="u1", username="admin", is_admin=True))
    yield core
    core.close()


def queue(core: Core, **values: Any) -> str:
    """Store a job with its directory (queued unless *values* say otherwise); its id."""
    values = {"state": JobState.QUEUED.value, "node": None, "attempt": 0, **values}
    job_id = add_job(core, home_node="n1", **values)
    (core.jobs_path / job_id / "work").mkdir(parents=True)
    return job_id


async def opened(run: Running, cores: int = 1) -> Reservation:
    """A reservation from the opening, once the scheduler's first round has ended."""
    got: list[Reservation] = []

    def take() -> bool:
        reservation = run.scheduler.direct.reserve("local", cores, None, 0)
        if reservation is not None:
            got.append(reservation)
        return bool(got)

    await until(take)
    return got[0]


async def until(check: Callable[[], bool], timeout_s: float = DEADLINE_S) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


class Running:
    def __init__(self, core: Core, runner: FakeRunner, slots: int) -> None:
        self.core = core
        self.runner = runner
        self.execution = CountingExecution(core)
        self.scheduler = Scheduler(core, self.execution, {"local": runner}, slots={"local": slots})


def scheduling(
    core: Core, runner: FakeRunner, body: Callable[[Running], Awaitable[None]], slots: int = 2
) -> None:
    """Run *body* while a scheduler runs on a fresh loop; stop it afterwards."""

    async def main() -> None:
        run = Running(core, runner, slots)
        stop = asyncio.Event()
        task = asyncio.ensure_future(run.scheduler.run(stop))
        try:
            await body(run)
        finally:
            stop.set()
            await asyncio.wait_for(task, DEADLINE_S)
            await run.scheduler.detach()

    asyncio.run(main())


@pytest.mark.parametrize("quick", [False, True])
def test_lone_job__costs_one_claim_and_no_round_follows_its_end(core: Core, quick: bool) -> None:
    async def body(run: Running) -> None:
        await until(lambda: run.execution.claims >= 1)  # the first round finds nothing
        first = run.execution.claims
        job_id = queue(core)
        run.scheduler.wake()
        await until(lambda: state(core, job_id).state == JobState.OK.value)
        await until(lambda: job_id not in run.scheduler.running)
        await asyncio.sleep(0.3)  # well inside the tick (TICK_S)
        assert TICK_S * 0.8 > 0.3
        assert run.execution.claims == first + 1

    scheduling(core, FakeRunner(quick_submit=quick), body)


def test_freed_slot__claims_the_job_that_waited_for_it(core: Core) -> None:
    runner = FakeRunner(default=None)  # jobs run until finished by hand

    async def body(run: Running) -> None:
        first, second = queue(core), queue(core)
        run.scheduler.wake()
        await until(lambda: runner.running == [first])
        runner.finish(first)
        # Claimed long before the tick: the freed slot woke the scheduler (a backlog).
        await until(lambda: runner.running == [second], timeout_s=TICK_S * 0.5)
        runner.finish(second)
        await until(lambda: state(core, second).state == JobState.OK.value)

    scheduling(core, runner, body, slots=1)


def test_quick_runner__spawns_in_the_claims_own_call_and_stores_the_handle(core: Core) -> None:
    runner = FakeRunner(default=None, quick_submit=True)

    async def body(run: Running) -> None:
        job_id = queue(core)
        run.scheduler.wake()
        await until(lambda: runner.running == [job_id])
        await until(lambda: state(core, job_id).handle is not None)
        assert state(core, job_id).state == JobState.RUNNING.value
        runner.finish(job_id, RunStatus(RunState.EXITED, exit_code=3))
        await until(lambda: state(core, job_id).state == JobState.ERROR.value)
        assert state(core, job_id).exit_code == 3

    scheduling(core, runner, body)


@pytest.mark.parametrize("quick", [False, True])
def test_runner_refusing_a_job__ends_it_in_error_with_the_reason(core: Core, quick: bool) -> None:
    job_id = queue(core)
    refused: dict[str, JobferryError] = {job_id: SubmitError("no such interpreter")}
    runner = FakeRunner(submit_errors=refused, quick_submit=quick)

    async def body(run: Running) -> None:
        run.scheduler.wake()
        await until(lambda: state(core, job_id).state == JobState.ERROR.value)
        assert "no such interpreter" in (state(core, job_id).state_reason or "")
        await until(lambda: not run.scheduler.running)

    scheduling(core, runner, body)


def test_claim__says_whether_more_jobs_were_left(core: Core) -> None:
    execution = ExecutionService(core, base_url="")
    queue(core), queue(core)
    first = execution.claim_next(["local"], None)
    second = execution.claim_next(["local"], None)
    assert isinstance(first, ClaimedJob) and first.more
    assert isinstance(second, ClaimedJob) and not second.more
    assert execution.claim_next(["local"], None) is None


def test_claim__a_destination_at_its_limit_holds_jobs_back(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = {
        "data_dir": str(data),
        "node": {"name": "n1", "cores": 4, "memory_mb": 1000},
        "destinations": {"local": {"runner": "local", "max_concurrent": 1}},
    }
    core = Core(parse_config(with_database(config, data)), node_name="n1")
    try:
        core.ensure_dirs()
        check_schema(core.engine)
        with core.sessions.begin() as session:
            session.add(User(id="u1", username="admin", is_admin=True))
        execution = ExecutionService(core, base_url="")
        queue(core), queue(core)
        first = execution.claim_next(["local"], None)
        assert isinstance(first, ClaimedJob)
        # Nothing claimable now, but a job waits: False (not None) keeps the backlog.
        assert execution.claim_next(["local"], None) is False
    finally:
        core.close()


def stored_running(core: Core) -> Job:
    """A job stored already claimed by this node, as a submission with a reservation does."""
    return state(core, queue(core, state=JobState.RUNNING.value, node="n1", attempt=1))


def test_idle_node__a_submission_starts_its_job_without_a_claim_round(core: Core) -> None:
    runner = FakeRunner(quick_submit=True)

    async def body(run: Running) -> None:
        reservation = await opened(run)
        claims = run.execution.claims
        job = stored_running(core)
        await asyncio.to_thread(run.scheduler.direct.start, reservation, job)
        await until(lambda: state(core, job.id).state == JobState.OK.value)
        assert state(core, job.id).handle is not None
        assert run.execution.claims == claims
        assert ("submit", job.id) in runner.calls

    scheduling(core, runner, body)


def test_reservation__holds_its_slot_until_the_scheduler_takes_the_job_over(core: Core) -> None:
    runner = FakeRunner(default=None, quick_submit=True)

    async def body(run: Running) -> None:
        reservation = await opened(run)
        assert run.scheduler.direct.reserve("local", 1, None, 0) is None  # one slot
        waiting = queue(core)
        run.scheduler.wake()  # a claim round: the reserved slot is not free
        await asyncio.sleep(0.2)
        assert runner.running == []
        job = stored_running(core)
        await asyncio.to_thread(run.scheduler.direct.start, reservation, job)
        await until(lambda: runner.running == [job.id])
        runner.finish(job.id)
        await until(lambda: runner.running == [waiting])  # the backlog took the freed slot
        runner.finish(waiting)
        await until(lambda: state(core, waiting).state == JobState.OK.value)

    scheduling(core, runner, body, slots=1)


def test_direct_start__is_refused_while_jobs_wait_and_when_it_does_not_fit(core: Core) -> None:
    runner = FakeRunner(default=None, quick_submit=True)

    async def body(run: Running) -> None:
        run.scheduler.direct.release(await opened(run))
        assert run.scheduler.direct.reserve("local", 5, None, 0) is None  # 4 cores here
        assert run.scheduler.direct.reserve("nowhere", 1, None, 0) is None
        first = queue(core)
        run.scheduler.wake()
        await until(lambda: runner.running == [first])
        queue(core)
        run.scheduler.wake()
        await asyncio.sleep(0.2)
        # The slot is taken and a job waits: submissions queue behind it.
        assert run.scheduler.direct.reserve("local", 1, None, 0) is None

    scheduling(core, runner, body, slots=1)


def test_released_reservation__opens_the_slot_again(core: Core) -> None:
    async def body(run: Running) -> None:
        reservation = await opened(run)
        run.scheduler.direct.release(reservation)  # the submission failed
        run.scheduler.direct.release(await opened(run))

    scheduling(core, FakeRunner(quick_submit=True), body, slots=1)


def test_drained_node__submissions_do_not_start_jobs_themselves(core: Core) -> None:
    async def body(run: Running) -> None:
        run.scheduler.direct.release(await opened(run))
        run.scheduler.drained = True  # as the heartbeat sets it when an admin drains
        assert run.scheduler.direct.reserve("local", 1, None, 0) is None

    scheduling(core, FakeRunner(quick_submit=True), body)


def test_direct_start_on_a_node_drained_in_the_store__stores_the_job_queued(core: Core) -> None:
    with core.sessions.begin() as session:
        session.execute(update(Node).where(Node.name == "n1").values(drained=True))
    # The node has not heard of the drain yet: the submission stored it as claimed.
    job_id = queue(core, state=JobState.RUNNING.value, node="n1", attempt=1)
    row = state(core, job_id)
    assert (row.state, row.node, row.attempt) == (JobState.QUEUED.value, None, 0)


def test_submission_without_uploads__makes_its_directory_only_when_claimed(
    core: Core, tmp_path: Path
) -> None:
    services = make_services(core)
    admin = Principal("u1", "admin", True)
    copy = tmp_path / "noop.py"
    copy.write_bytes((Path(__file__).parent.parent / "data" / "jobs" / "noop.py").read_bytes())
    slug = services.scripts.add_or_update(admin, [ScriptUpload("noop", copy, "noop.py")])[0]["slug"]
    job_id = services.jobs.submit(admin, SubmitRequest(slug=slug, job_name="j"), [])
    job_dir = core.job_dir(job_id)
    assert not job_dir.exists()
    claimed = ExecutionService(core, base_url="").claim_next(["local"], None)
    assert isinstance(claimed, ClaimedJob) and claimed.job_id == job_id
    assert (job_dir / "work").is_dir() and claimed.spec.workdir == str(job_dir / "work")


def test_job_files_write_to_a_queued_job_without_a_directory__makes_it(core: Core) -> None:
    job_id = queue(core)
    shutil.rmtree(core.jobs_path / job_id)  # as a submission without uploads leaves it
    job_dir = core.job_dir(job_id)  # where a submission puts it (not there yet)
    with core.sessions.begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(job_dir=str(job_dir)))
    files = JobFilesService(core)
    access = files.authorize(job_id, core.job_key(job_id))
    writer = files.open_writer(access, "work/early.txt")
    writer.write(b"staged before the job ran")
    files.commit(access, writer, None)
    assert (job_dir / "work" / "early.txt").read_bytes() == b"staged before the job ran"
