"""Tests of what only FakeRunner does: scripted outcomes and errors, ``finish``, the
calls it records, and runs kept apart unless runners share their ``FakeJobs``.

The Runner contract it keeps like the real runners is the contract suite's
(``tests/integration/test_runner_contract_suite.py``).
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from jobferry.errors import RunnerError, SubmitError
from jobferry.runners.base import RunSpec, RunState, RunStatus
from jobferry.runners.fake import FakeJobs, FakeRunner
from tests.helpers import DEADLINE_S

pytestmark = [pytest.mark.timeout(10), pytest.mark.engine_independent]


def spec(job_id: str) -> RunSpec:
    return RunSpec(job_id, ("true",), "/w", "/w/out", "/w/err", "/w/result")


def test_submit__reports_the_scripted_outcome_at_once() -> None:
    failed = RunStatus(RunState.EXITED, exit_code=2)
    runner = FakeRunner(outcomes={"bad": failed})

    ok, bad = runner.submit(spec("ok")), runner.submit(spec("bad"))

    assert runner.poll(ok).state is RunState.EXITED and runner.poll(ok).exit_code == 0
    status = asyncio.run(runner.wait(bad))
    assert (status.state, status.exit_code) == (RunState.EXITED, 2)
    assert status.finished_at is not None
    assert runner.running == []


def test_submit__raises_the_scripted_error_and_records_the_call() -> None:
    runner = FakeRunner(submit_errors={"j": SubmitError("no such image")})

    with pytest.raises(SubmitError, match="no such image"):
        runner.submit(spec("j"))

    assert runner.calls == [("submit", "j")]
    assert "j" not in runner.handles


def test_wait__blocks_until_the_test_finishes_the_job() -> None:
    runner = FakeRunner(default=None)

    async def main() -> RunStatus:
        handle = runner.submit(spec("j"))
        waiter = asyncio.ensure_future(runner.wait(handle))
        await asyncio.sleep(0.01)
        assert not waiter.done() and runner.running == ["j"]
        assert runner.poll(handle).state is RunState.RUNNING
        runner.finish("j", RunStatus(RunState.EXITED, exit_code=5))
        return await asyncio.wait_for(waiter, DEADLINE_S)

    status = asyncio.run(main())

    assert (status.state, status.exit_code) == (RunState.EXITED, 5)
    assert runner.calls == [("submit", "j"), ("wait", "j"), ("poll", "j")]


def test_finish__works_from_another_thread() -> None:
    runner = FakeRunner(default=None)

    async def main() -> RunStatus:
        handle = runner.submit(spec("j"))
        threading.Timer(0.05, runner.finish, args=("j",)).start()
        return await asyncio.wait_for(runner.wait(handle), DEADLINE_S)

    assert asyncio.run(main()).exit_code == 0


def test_cancel__wakes_waiters_with_killed_and_is_idempotent() -> None:
    runner = FakeRunner(default=None)

    async def main() -> RunStatus:
        handle = runner.submit(spec("j"))
        waiter = asyncio.ensure_future(runner.wait(handle))
        await asyncio.sleep(0)
        runner.cancel(handle, reason="walltime exceeded (1s)")
        runner.cancel(handle, reason="again")
        runner.finish("j")  # too late: already final
        return await asyncio.wait_for(waiter, DEADLINE_S)

    status = asyncio.run(main())

    assert (status.state, status.reason) == (RunState.KILLED, "walltime exceeded (1s)")


def test_adopt__of_a_run_its_jobs_do_not_hold_is_scripted_like_a_submit() -> None:
    old = FakeRunner(default=None)
    handle = old.submit(spec("j"))
    new = FakeRunner(default=None)

    new.adopt(handle, spec("j"))
    new.adopt(handle, spec("j"))

    assert new.poll(handle).state is RunState.RUNNING
    new.finish("j", RunStatus(RunState.LOST, reason="gone"))
    assert new.poll(handle).state is RunState.LOST


def test_runners_without_shared_jobs__know_only_their_own_runs() -> None:
    handle = FakeRunner().submit(spec("j"))

    with pytest.raises(RunnerError):
        FakeRunner().poll(handle)
    with pytest.raises(RunnerError):
        FakeRunner().finish("nobody")
    with pytest.raises(RunnerError):
        FakeJobs().end(handle.external_id, RunStatus(RunState.EXITED, exit_code=0))
