"""A crashed background task stops the daemon loudly (issue #11, item 7).

Guards: the scheduler and heartbeat tasks were started and only awaited at
shutdown: if one raised, nobody noticed, and jobs silently stopped being
scheduled. Now (``daemon.supervisor``) the crash is logged at CRITICAL with its
traceback and the daemon stops as on SIGTERM (running jobs keep running) with a
non-zero exit status, for systemd or the operator to start it again.

The end-to-end tests crash a real daemon's task from outside through the
test-only hook (``JOBFERRY_TEST_CRASH_TASK`` names the task, SIGUSR1 crashes it);
the others hold the supervisor itself to its contract on a loop of their own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobferry.daemon.supervisor import CRASH_TASK_ENV, EXIT_CRASHED, Supervisor
from tests.e2e.test_recovery import Env, gone
from tests.helpers import DEADLINE_S, JOB_SCRIPTS, DaemonProcess, wait_for

pytestmark = [pytest.mark.engine_independent, pytest.mark.timeout(300)]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    environment = Env(tmp_path)
    try:
        yield environment
    finally:
        environment.close()


@pytest.mark.e2e
@pytest.mark.parametrize("task", ["scheduler", "heartbeat"])
def test_crashed_task__daemon_exits_non_zero_saying_which_and_jobs_keep_running(
    env: Env, task: str
) -> None:
    crashing = DaemonProcess(env.data, env.config)
    crashing.command_prefix = ["env", f"{CRASH_TASK_ENV}={task}"]
    env.daemons.append(crashing)
    crashing.start()
    client = crashing.client()
    client.add_script("counter", JOB_SCRIPTS / "counter.py")
    env.scripts_added = True
    gate = env.runs.parent / "gate"  # the job ends only when the test opens it
    job_id = env.counter(client, f"--touch done.txt --gate {gate}")
    job = env.started(crashing, job_id)
    wait_for("the crash hook", lambda: "crash hook armed" in crashing.log_path.read_text())

    assert crashing.proc is not None
    os.kill(crashing.proc.pid, signal.SIGUSR1)
    assert crashing.proc.wait(DEADLINE_S) == EXIT_CRASHED
    log = crashing.log_text()  # either format (tests.helpers)
    assert f"CRITICAL jobferry.daemon.supervisor: background task {task} crashed" in log
    assert "InjectedCrash: crash injected into task" in log  # the traceback
    assert "stopping: no new work accepted; running jobs keep running" in log
    assert not gone(job), "a crash of a task must leave the jobs running, as SIGTERM does"
    assert env.row(job_id)["state"] == "running"

    gate.touch()
    details = env.daemon().client().wait(job_id)  # a restart re-attaches to it
    assert (details["status"], details["exit_code"]) == ("completed", 0)
    assert env.run_counts() == {job_id: 1}


def supervise(
    body: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
) -> tuple[Supervisor, bool]:
    """Run the supervisor with the background task *body* (a coroutine function) on a
    fresh loop; (the supervisor, whether the stop was set within the deadline)."""

    async def main() -> tuple[Supervisor, bool]:
        stop = asyncio.Event()
        supervisor = Supervisor(stop)
        supervisor.start("worker", body(stop))
        try:
            await asyncio.wait_for(stop.wait(), DEADLINE_S)
        except TimeoutError:
            return supervisor, False
        stop.set()
        await supervisor.join()
        return supervisor, True

    return asyncio.run(main())


def test_a_task_that_raises__is_logged_critical_with_its_traceback_and_stops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def body(stop: asyncio.Event) -> None:
        await asyncio.sleep(0)
        raise ZeroDivisionError("a bug")

    supervisor, stopped = supervise(body)
    assert stopped
    assert (supervisor.crashed, supervisor.exit_status) == (["task worker"], EXIT_CRASHED)
    [record] = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert "background task worker crashed" in record.getMessage()
    assert record.exc_info is not None and isinstance(record.exc_info[1], ZeroDivisionError)


def test_a_task_that_ends_before_the_stop__stops_the_daemon_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def body(stop: asyncio.Event) -> None:
        return None

    supervisor, stopped = supervise(body)
    assert stopped and supervisor.exit_status == EXIT_CRASHED
    assert any(
        "background task worker ended before the daemon stopped" in r.getMessage()
        for r in caplog.records
        if r.levelno == logging.CRITICAL
    )


def test_a_task_that_ends_at_the_stop__is_no_crash(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> Supervisor:
        stop = asyncio.Event()
        supervisor = Supervisor(stop)
        supervisor.start("worker", stop.wait())
        await asyncio.sleep(0)
        stop.set()
        await asyncio.wait_for(supervisor.join(), DEADLINE_S)
        return supervisor

    supervisor = asyncio.run(main())
    assert (supervisor.crashed, supervisor.exit_status) == ([], 0)
    assert not [r for r in caplog.records if r.levelno == logging.CRITICAL]


def test_a_jobferry_thread_that_dies__stops_the_daemon(caplog: pytest.LogCaptureFixture) -> None:
    def die() -> None:
        raise OSError("the listener's socket broke")

    async def main() -> tuple[Supervisor, bool]:
        stop = asyncio.Event()
        supervisor = Supervisor(stop)
        supervisor.watch_threads()
        try:
            thread = threading.Thread(target=die, name="jobferry-test", daemon=True)
            thread.start()
            await asyncio.wait_for(stop.wait(), DEADLINE_S)
            return supervisor, stop.is_set()
        finally:
            supervisor.close()

    before = threading.excepthook
    supervisor, stopped = asyncio.run(main())
    assert stopped and supervisor.crashed == ["thread jobferry-test"]
    assert threading.excepthook is before  # close() puts the previous hook back
    [record] = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert record.exc_info is not None and isinstance(record.exc_info[1], OSError)
