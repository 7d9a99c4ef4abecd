"""A full disk under the daemon's data directory (SQLite store inside it).

Each test names the failure it guards (issue #10, items 1 and 6).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults._disk_helpers import (  # noqa: F401 - the fixture
    DEADLINE_S,
    DiskDaemon,
    disk_daemon,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.engine_independent]

EXIT_CODE = 117  # distinctive (not Python's own 120 for a failed flush at exit)
#: How long the disk stays full: longer than the old daemon kept retrying (3.5 s).
FULL_FOR_S = 8.0


def test_a_job_that_fills_the_disk_ends_with_its_true_exit_code_once_space_returns(
    disk_daemon: Callable[..., DiskDaemon],  # noqa: F811
) -> None:
    """Guards: "recording the end failed (database or disk is full)" three times, then
    the daemon gave up following the job: it answered `running` after space was freed,
    and only a restart ended it, as `error` "result file has no exit code"."""
    env = disk_daemon(20)
    job_id, ballast = env.fill_with_job(EXIT_CODE)
    # While the disk is full the end may not be recordable: the job is never lost.
    assert env.status(job_id)["status"] in ("running", "FAILURE")
    time.sleep(FULL_FOR_S)  # the outage's length (the scenario), not a synchronisation
    assert not env.status(job_id)["is_complete"]

    ballast.unlink()  # space returns; no restart

    wait_for("the job's end", lambda: env.status(job_id)["is_complete"])
    details = env.details(job_id)
    assert (details["status"], details["exit_code"]) == ("FAILURE", EXIT_CODE), details
    assert "disk" in (details.get("reason") or ""), details
    # The daemon serves new work as before.
    again = env.client.submit("disk_filler", "--mb 0 --exit-code 3")
    assert env.client.wait(again, timeout_s=DEADLINE_S)["exit_code"] == 3


def test_a_job_end_the_full_store_cannot_take_is_kept_and_recorded_once_space_returns(
    disk_daemon: Callable[..., DiskDaemon],  # noqa: F811
) -> None:
    """Guards: the daemon tried to record a job's end four times ("database or disk is
    full"), then gave up following the job, which answered `running` for good."""
    env = disk_daemon(20)
    # The job frees one page as it exits: its wrapper's result fits, the store's write not.
    job_id, ballast = env.fill_with_job(EXIT_CODE, reserve_kb=4)
    result = env.job_dir(job_id) / "result"
    wait_for("the wrapper's result", lambda: "exit_code=" in _text(result))
    time.sleep(FULL_FOR_S)  # the outage's length (the scenario), not a synchronisation
    assert not env.status(job_id)["is_complete"]

    ballast.unlink()

    wait_for("the job's end", lambda: env.status(job_id)["is_complete"])
    details = env.details(job_id)
    assert (details["status"], details["exit_code"]) == ("FAILURE", EXIT_CODE), details
    assert "disk was full" in details["reason"], details


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def test_a_job_end_pending_on_a_full_disk_survives_kill_9_of_the_daemon(
    disk_daemon: Callable[..., DiskDaemon],  # noqa: F811
) -> None:
    """Guards: the end of a job that finished while the disk was full lived only in the
    daemon's memory (the wrapper's result file was left empty): after kill -9 and a
    restart the job ended `error` "result file has no exit code"."""
    env = disk_daemon(20)
    job_id, ballast = env.fill_with_job(EXIT_CODE)
    assert not env.status(job_id)["is_complete"] or env.details(job_id)["exit_code"] == EXIT_CODE

    assert env.daemon.proc is not None
    os.kill(env.daemon.proc.pid, signal.SIGKILL)
    env.daemon.proc.wait(DEADLINE_S)
    ballast.unlink()
    env.restart()

    wait_for("the job's end", lambda: env.status(job_id)["is_complete"])
    details = env.details(job_id)
    assert (details["status"], details["exit_code"]) == ("FAILURE", EXIT_CODE), details
