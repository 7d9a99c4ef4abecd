"""One runner contract, at the interface level: local, Docker, Slurm and the fake.

Every case here is written against ``jobferry.runners.base.Runner`` and what its
docstrings (and ``RunSpec``, ``RunHandle``, ``RunStatus``) promise, never against
a runner's internals; ``runner_kinds`` says how to make and drive each runner.
What only one runner does (process trees, containers, Slurm states and commands,
the fake's scripting) is tested in that runner's own module; the same script
through a whole daemon is ``tests/e2e/test_runner_contract.py``.

Docker and Slurm need the real services (``scripts/services``): skipped without
them on a developer's machine, failed under ``CI=true``. Cases that watch what a
program does (its argv, output and files) do not apply to the fake runner, which
runs none: they are parametrised over the other three only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobferry.errors import RunnerError
from jobferry.runners.base import Capacity, RunHandle, RunSpec, RunState
from tests.helpers import DEADLINE_S, wait_for
from tests.integration.runner_kinds import KINDS, NAMES, Blocks, Exits, Kind, wait

pytestmark = [pytest.mark.timeout(180), pytest.mark.engine_independent]


def kinds(*, programs: bool = False) -> list[Any]:
    """Every runner; with *programs*, those that run a program (not the fake, which
    has no argv, stdout, stderr or files to observe: those cases do not apply to it)."""
    return [pytest.param(name, id=name) for name in NAMES if not (programs and name == "fake")]


PROGRAMS = kinds(programs=True)


@pytest.fixture(params=kinds())
def kind(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Kind]:
    made = KINDS[request.param](tmp_path)
    yield made
    made.close()


def started(kind: Kind, spec: RunSpec) -> None:
    wait_for(f"job {spec.job_id} to start", lambda: kind.started(spec))


def files(root: str) -> dict[str, str]:
    base = Path(root)
    return {str(p.relative_to(base)): p.read_text() for p in base.rglob("*") if p.is_file()}


# --- a job that ends by itself --------------------------------------------------------


def test_exit_code__the_jobs_own_code_is_recorded(kind: Kind) -> None:
    runner = kind.make()
    specs = {code: kind.job(Exits(code)) for code in (0, 3)}
    handles = {code: runner.submit(spec) for code, spec in specs.items()}

    async def main() -> list[Any]:
        waits = (runner.wait(h) for h in handles.values())
        return await asyncio.wait_for(asyncio.gather(*waits), DEADLINE_S)

    statuses = dict(zip(handles, asyncio.run(main()), strict=True))

    for code, status in statuses.items():
        assert (status.state, status.exit_code, status.reason) == (RunState.EXITED, code, None)
        assert status.is_final and status.finished_at is not None
        handle = handles[code]
        assert runner.poll(handle) == status  # final statuses are remembered
        assert handle.runner == runner.name
        assert RunHandle.loads(handle.dumps()) == handle


def test_wait_ended__gives_the_final_status_or_leaves_it_to_poll(kind: Kind) -> None:
    runner = kind.make()
    spec = kind.job(Exits(3))
    handle = runner.submit(spec)

    async def main() -> Any:
        return await asyncio.wait_for(runner.wait_ended(handle), DEADLINE_S)

    ended = asyncio.run(main())
    status = runner.poll(handle) if ended is None else ended  # None: poll says it now

    assert (status.state, status.exit_code, status.reason) == (RunState.EXITED, 3, None)
    assert status.disk_full in (None, False)  # read from the result file, or left to us
    assert runner.poll(handle) == status


@pytest.mark.parametrize("kind", PROGRAMS, indirect=True)
def test_streams__stdout_and_stderr_land_in_their_files(kind: Kind) -> None:
    runner = kind.make()
    spec = kind.job(Exits(0, stdout="to-out\nline 2\n", stderr="to-err\n"))

    status = wait(runner, runner.submit(spec))

    assert (status.state, status.exit_code) == (RunState.EXITED, 0)
    assert Path(spec.stdout_path).read_text() == "to-out\nline 2\n"
    assert Path(spec.stderr_path).read_text() == "to-err\n"


@pytest.mark.parametrize("kind", PROGRAMS, indirect=True)
def test_outputs__what_the_job_writes_in_its_work_dir_is_there(kind: Kind) -> None:
    runner = kind.make()
    script = 'echo hello > out.txt; mkdir sub; printf "%s\\n" "$GREETING" > sub/deep; pwd'
    spec = kind.spec(("/bin/sh", "-c", script), env={"GREETING": "hi there"})

    status = wait(runner, runner.submit(spec))

    assert (status.state, status.exit_code) == (RunState.EXITED, 0)
    assert files(spec.workdir) == {"out.txt": "hello\n", "sub/deep": "hi there\n"}
    assert Path(spec.stdout_path).read_text() == f"{spec.workdir}\n"


HOSTILE = [
    "two  spaces and\ttab",
    "'single' \"double\" `back` \\slash",
    "$(touch pwned1)",
    "`touch pwned2`",
    "; touch pwned3",
    "&& touch pwned4 || true | cat > pwned5",
    "line1\nline2\n#SBATCH --job-name=evil\n",
    "$HOME ${PATH} $1 $@ * ? ~ [a-z]",
    "ünïcødé ✓ 日本語 🚀",
    "-n",
    "--help",
    "-",
    "%s %d \\n",
    "",
]


@pytest.mark.parametrize("kind", PROGRAMS, indirect=True)
def test_argv__hostile_strings_reach_the_program_unchanged(kind: Kind) -> None:
    runner = kind.make()
    evil_env = "'; touch pwned6; echo '\n$(touch pwned7) `touch pwned8`"
    script = 'for a; do printf "[%s]\\n" "$a"; done; printf "{%s}\\n" "$JF_EVIL"'
    spec = kind.spec(("/bin/sh", "-c", script, "argv0", *HOSTILE), env={"JF_EVIL": evil_env})

    status = wait(runner, runner.submit(spec))

    assert (status.state, status.exit_code) == (RunState.EXITED, 0)
    expected = "".join(f"[{arg}]\n" for arg in HOSTILE) + f"{{{evil_env}}}\n"
    assert Path(spec.stdout_path).read_text(encoding="utf-8") == expected
    assert not list(Path(spec.workdir).iterdir())
    assert not list(kind.tmp_path.rglob("pwned*"))


# --- a job the runner ends -------------------------------------------------------------


def test_walltime__ends_the_job_killed_with_the_walltime_reason(kind: Kind) -> None:
    runner = kind.make()
    spec = kind.job(Blocks(), walltime_s=1)

    handle = runner.submit(spec)
    status = wait(runner, handle)

    assert (status.state, status.reason) == (RunState.KILLED, "walltime exceeded (1s)")
    assert status.finished_at is not None  # (Slurm's own end times are whole seconds)
    assert time.time() >= handle.started_at + 1  # not ended before its walltime


def test_cancel__ends_a_running_job_and_later_cancels_change_nothing(kind: Kind) -> None:
    runner = kind.make()
    spec = kind.job(Blocks())
    handle = runner.submit(spec)
    started(kind, spec)
    assert runner.poll(handle).state is RunState.RUNNING

    runner.cancel(handle, "user asked")
    runner.cancel(handle, "again")  # idempotent: the first reason stays
    status = wait(runner, handle)
    runner.cancel(handle, "after the end")

    assert (status.state, status.reason) == (RunState.KILLED, "user asked")
    assert runner.poll(handle) == status
    # A restarted daemon's runner reports the same from the stored handle.
    again = kind.make()
    stored = RunHandle.loads(handle.dumps())
    again.adopt(stored, spec)
    assert (again.poll(stored).state, again.poll(stored).reason) == (RunState.KILLED, "user asked")


def test_cancel__of_a_job_that_ended_by_itself_changes_nothing(kind: Kind) -> None:
    runner = kind.make()
    spec = kind.job(Exits(1))
    handle = runner.submit(spec)
    status = wait(runner, handle)

    runner.cancel(handle)
    runner.stop_stale(handle)

    assert (status.state, status.exit_code) == (RunState.EXITED, 1)
    assert runner.poll(handle) == status
    assert wait(runner, handle) == status
    # Nor does a restarted daemon's runner take it for killed.
    again = kind.make()
    again.adopt(handle, spec)
    assert (again.poll(handle).state, again.poll(handle).exit_code) == (RunState.EXITED, 1)


def test_stop_stale__ends_a_running_job(kind: Kind) -> None:
    runner = kind.make()
    spec = kind.job(Blocks())
    handle = runner.submit(spec)
    started(kind, spec)

    runner.stop_stale(handle)
    runner.stop_stale(handle)  # idempotent

    assert wait(runner, handle).state is RunState.KILLED


def test_wait__cancelling_it_leaves_the_job_running(kind: Kind) -> None:
    runner = kind.make()
    spec = kind.job(Blocks(5))
    handle = runner.submit(spec)
    started(kind, spec)

    async def abandon() -> None:
        waiting = asyncio.ensure_future(runner.wait(handle))
        await asyncio.sleep(0.2)  # let it get going; it must not end the job either way
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    asyncio.run(abandon())

    assert runner.poll(handle).state is RunState.RUNNING
    kind.release(spec, handle)
    status = wait(runner, handle)
    assert (status.state, status.exit_code) == (RunState.EXITED, 5)


# --- handles ----------------------------------------------------------------------------


def test_garbage_handles__are_refused_with_runner_error(kind: Kind) -> None:
    runner = kind.make()
    spec = kind.job(Exits(0))
    garbage = RunHandle(runner.name, "no such run", 0.0, {})
    foreign = RunHandle("some-other-runner", "42", time.time(), {"job_id": spec.job_id})

    for handle in (garbage, foreign):
        with pytest.raises(RunnerError):
            runner.poll(handle)
        with pytest.raises(RunnerError):
            runner.cancel(handle)
        with pytest.raises(RunnerError):
            wait(runner, handle)
    with pytest.raises(RunnerError):
        runner.adopt(foreign, spec)


def test_restart__a_new_runner_finds_adopts_and_follows_a_running_job_to_its_end(
    kind: Kind,
) -> None:
    first = kind.make()
    spec = kind.job(Blocks(4))
    stored = first.submit(spec).dumps()
    started(kind, spec)
    first.close()  # the daemon stops without waiting; the job keeps running

    second = kind.make()
    handle = RunHandle.loads(stored)
    found = second.find(spec)
    assert found is not None
    assert (found.runner, found.external_id) == (handle.runner, handle.external_id)
    assert second.find(kind.job(Exits(0))) is None  # never submitted
    second.adopt(handle, spec)
    second.adopt(handle, spec)  # idempotent
    assert second.poll(handle).state is RunState.RUNNING

    kind.release(spec, handle)
    status = wait(second, handle)

    assert (status.state, status.exit_code) == (RunState.EXITED, 4)
    assert status.finished_at is not None


def test_leftovers__name_this_runners_jobs_and_cleanup_releases_them(kind: Kind) -> None:
    runner = kind.make()
    spec = kind.job(Exits(0))
    handle = runner.submit(spec)
    wait(runner, handle)

    fresh = kind.make()  # a restarted daemon cleans up after jobs that ended meanwhile
    for job_id, held in fresh.leftovers():
        assert held.runner == fresh.name
        assert job_id == spec.job_id  # this test's runner configuration ran nothing else
        fresh.cleanup(held)
        fresh.cleanup(held)  # idempotent

    assert fresh.leftovers() == []
    runner.cleanup(handle)  # idempotent, also after another instance's
    runner.cleanup(handle)


def test_capacity__is_unknown_or_a_capacity(kind: Kind) -> None:
    capacity = kind.make().capacity()

    assert capacity is None or isinstance(capacity, Capacity)


# --- readiness ------------------------------------------------------------------------


def test_check_usable__a_working_runner_is_usable(kind: Kind) -> None:
    assert kind.make().check_usable() is None


def test_check_usable__an_unusable_runner_says_why_without_raising(kind: Kind) -> None:
    runner = kind.unusable()

    reason = runner.check_usable()

    assert isinstance(reason, str) and reason.strip(), reason
    assert "\n" not in reason  # one line, for /readyz
    assert runner.check_usable() == reason  # and again, the same way
