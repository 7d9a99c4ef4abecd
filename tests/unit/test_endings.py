"""How a run's end on a full disk is recorded (issue #10, item 1: output collection)."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest

from jobferry.api.wooey.serialize import wooey_status
from jobferry.runners.base import RunSpec, RunState, RunStatus
from jobferry.runners.wrapper import read_result
from jobferry.services.core import Core
from jobferry.services.endings import DISK_FULL_REASON, outcome
from jobferry.services.execution import ClaimedJob, ExecutionService
from jobferry.store.models import JobState

pytestmark = pytest.mark.engine_independent


@pytest.mark.parametrize(("code", "wooey"), [(0, "error"), (117, "FAILURE")])
def test_a_job_that_ended_on_a_full_disk_is_an_error_with_its_true_exit_code(
    code: int, wooey: str
) -> None:
    """Guards: a job whose outputs were cut short by a full disk ended `ok` (exit 0), or
    lost its exit code altogether ("result file has no exit code")."""
    state, reason = outcome(RunStatus(RunState.EXITED, code), cancelled=False, disk_full=True)
    assert state is JobState.ERROR
    assert reason == f"exit code {code}; {DISK_FULL_REASON}"
    assert wooey_status(state.value, code, reason) == wooey
    # A cancel still wins; without a full disk nothing changes.
    assert outcome(RunStatus(RunState.EXITED, code), cancelled=True, disk_full=True)[0] is (
        JobState.DELETED
    )
    assert outcome(RunStatus(RunState.EXITED, 0), cancelled=False) == (JobState.OK, None)


def test_the_wrapper_result_says_when_the_disk_was_full(tmp_path: Path) -> None:
    result = tmp_path / "result"
    result.write_text("exit_code=117\ncpu=0m0.01s 0m0.00s\ndisk_full=1\n\n")
    found = read_result(str(result))
    assert found is not None and (found.exit_code, found.disk_full) == (117, True)
    result.write_text("exit_code=0\ncpu=0m0.01s 0m0.00s\n\n")
    found = read_result(str(result))
    assert found is not None and not found.disk_full


def test_collect_end__takes_disk_full_from_the_status_and_reads_the_file_only_without_it(
    tmp_path: Path,
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    result = tmp_path / "result"
    result.write_text("exit_code=0\ncpu=0m0.01s 0m0.00s\ndisk_full=1\n")
    spec = RunSpec("j1", ("true",), str(work), "", "", str(result), job_dir=str(tmp_path))
    claimed = ClaimedJob("j1", 1, "local", spec)
    execution = ExecutionService(cast(Core, None), base_url="")  # collect_end reads no store

    def disk_full(flag: bool | None) -> bool:
        return execution.collect_end(
            claimed, RunStatus(RunState.EXITED, 0, disk_full=flag)
        ).disk_full

    assert disk_full(None) is True  # the runner did not read the file: it is read here
    assert disk_full(True) is True
    assert disk_full(False) is False  # the runner read it: not read again
