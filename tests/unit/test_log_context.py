"""Log records carry context: a job line has the job's id, its attempt and the node
(``daemon.logcontext``), and the text format shows them on job lines only."""

from __future__ import annotations

import logging

import pytest

from jobferry.daemon.logcontext import ContextFormatter
from jobferry.runners.fake import FakeRunner
from jobferry.services.core import Core
from tests.unit.test_nodes import job as state
from tests.unit.test_scheduler import Running, core, queue, scheduling, until

__all__ = ["core"]  # the store fixture, shared with the scheduler's tests


def test_a_job_line__carries_job_id_attempt_node_and_destination(
    core: Core, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="jobferry.daemon")
    runner = FakeRunner(default=None)  # jobs run until finished by hand
    job_id = ""

    def ended() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage().startswith(f"job {job_id} ended")]

    async def body(run: Running) -> None:
        nonlocal job_id
        job_id = queue(core)
        run.scheduler.wake()
        await until(lambda: runner.running == [job_id])
        runner.finish(job_id)
        await until(lambda: bool(ended()))

    scheduling(core, runner, body)
    record = ended()[0]
    attempt = state(core, job_id).attempt
    assert attempt >= 1
    assert (getattr(record, "job_id", None), getattr(record, "attempt", None)) == (job_id, attempt)
    assert getattr(record, "node", None) == "n1"
    assert getattr(record, "destination", None) == "local"
    text = ContextFormatter("%(levelname)s %(message)s").format(record)
    assert text.endswith(f"[job_id={job_id} attempt={attempt} node=n1 destination=local]")


def test_text_format__leaves_lines_without_a_job_as_they_are() -> None:
    formatter = ContextFormatter("%(levelname)s %(message)s")
    plain = logging.LogRecord("jobferry", logging.INFO, __file__, 1, "serving", None, None)
    assert formatter.format(plain) == "INFO serving"
    node_line = logging.LogRecord("jobferry", logging.INFO, __file__, 1, "beat", None, None)
    node_line.node = "n1"
    assert formatter.format(node_line) == "INFO beat"
