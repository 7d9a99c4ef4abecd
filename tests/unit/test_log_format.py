"""The JSON log format and the context filter (``daemon.logformat``), on real records
through a real handler: one valid JSON object per line, its fields, exceptions,
non-ASCII, newlines, secrets, and the context (request id, job) that the filter
adds, including in a worker thread of ``Core.call``."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobferry.api.access_log import REQUEST_ID, SANE_ID
from jobferry.config import parse_config
from jobferry.daemon import logformat, redact
from jobferry.daemon.logcontext import ContextExecutor, ContextFormatter, job_scope, job_task
from jobferry.runners.base import RunSpec
from jobferry.services.core import Core
from jobferry.services.execution import ClaimedJob
from tests.helpers import log_text

pytestmark = pytest.mark.engine_independent

#: ISO 8601, UTC, milliseconds.
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger whose lines go, as the daemon's do, through the filters and the JSON
    format into a buffer."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logformat.install(handler, json_lines=True, node="n1")
    handler.addFilter(redact.RedactingFilter())
    logger = logging.getLogger("jobferry.test_log_format")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    text = stream.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_json_line__has_time_level_logger_message_and_node(logged: Any) -> None:
    logger, stream = logged
    logger.info("serving on %s", "http://127.0.0.1:1")
    (line,) = lines(stream)
    assert TIME.fullmatch(line["time"]), line["time"]
    assert line["level"] == "INFO"
    assert line["logger"] == "jobferry.test_log_format"
    assert line["message"] == "serving on http://127.0.0.1:1"
    assert line["node"] == "n1"
    assert "exception" not in line and "request_id" not in line and "job_id" not in line


def test_json_line__with_newlines_and_non_ascii_stays_one_line(logged: Any) -> None:
    logger, stream = logged
    message = 'first\nsecond\r\n\tthird "quoted" \\ é 東京 \U0001f680 \udcff'
    logger.warning(message)
    assert stream.getvalue().count("\n") == 1
    assert stream.getvalue().isascii()
    (line,) = lines(stream)
    assert line["message"] == message
    assert line["level"] == "WARNING"


def test_json_line__carries_the_exception_text(logged: Any) -> None:
    logger, stream = logged
    try:
        raise ValueError("bad value\non two lines")
    except ValueError:
        logger.exception("it failed")
    (line,) = lines(stream)
    assert line["level"] == "ERROR"
    assert line["message"] == "it failed"
    assert line["exception"].startswith("Traceback (most recent call last):")
    assert "ValueError: bad value\non two lines" in line["exception"]


def test_json_line__extra_fields_are_keys_and_secrets_are_blanked(logged: Any) -> None:
    logger, stream = logged
    key = "jf_" + "A1b2" * 8
    logger.info(
        "key %s", key, extra={"route": "/api/jobs/{}/files", "count": 3, "path": Path("/x")}
    )
    (line,) = lines(stream)
    assert key not in stream.getvalue()
    assert line["message"] == "key jf_***"
    assert (line["route"], line["count"], line["path"]) == ("/api/jobs/{}/files", 3, "/x")


def claimed(job_id: str = "0123456789abcdef") -> ClaimedJob:
    spec = RunSpec(job_id, ("true",), "/w", "/o", "/e", "/r", attempt=2, destination="gpu")
    return ClaimedJob(job_id, 2, "local", spec)


def test_context_filter__puts_the_request_id_and_the_job_on_each_line(logged: Any) -> None:
    logger, stream = logged
    token = REQUEST_ID.set("req-1")
    try:
        logger.info("while serving")
        with job_scope(claimed(), "n1"):
            logger.info("about the job")
        logger.info("serving again")
    finally:
        REQUEST_ID.reset(token)
    logger.info("after")
    serving, job, again, after = lines(stream)
    assert serving["request_id"] == "req-1" and "job_id" not in serving
    # A job's lines are about the job, not about the request that started it.
    assert "request_id" not in job
    expected = {"job_id": "0123456789abcdef", "attempt": 2, "node": "n1", "destination": "gpu"}
    assert {k: job[k] for k in expected} == expected
    assert again["request_id"] == "req-1" and "job_id" not in again
    assert "request_id" not in after


def test_context_filter__reaches_the_worker_threads_of_core_call(
    logged: Any, tmp_path: Path
) -> None:
    logger, stream = logged
    config = parse_config({"data_dir": str(tmp_path / "data")})
    core = Core(config, node_name="n1")

    async def main() -> None:
        REQUEST_ID.set("req-2")
        await core.call(logger.info, "in a worker thread, for a request")
        with job_scope(claimed("fedcba9876543210"), "n1"):
            await core.call(logger.info, "in a worker thread, for a job")

    try:
        asyncio.run(main())
    finally:
        core.close()
    request_line, job_line = lines(stream)
    assert request_line["request_id"] == "req-2"
    assert job_line["job_id"] == "fedcba9876543210" and "request_id" not in job_line


def test_job_task_and_default_executor__lines_of_a_jobs_task_and_its_threads_are_about_it(
    logged: Any,
) -> None:
    """A job's task (``job_task``), and what it runs with ``run_in_executor(None, ...)``
    (a runner's poll) on the daemon's ``ContextExecutor``, log about the job."""
    logger, stream = logged

    async def follow() -> None:
        logger.info("in the job's task")
        await asyncio.get_running_loop().run_in_executor(None, logger.info, "in a poll")

    async def main() -> None:
        asyncio.get_running_loop().set_default_executor(ContextExecutor())
        REQUEST_ID.set("req-3")  # the submitting request's: not the job's lines
        await job_task(claimed("00000000000000aa"), "n1", follow())
        logger.info("back in the request")

    asyncio.run(main())
    task_line, poll_line, request_line = lines(stream)
    for line in (task_line, poll_line):
        assert (line["job_id"], line["destination"], line.get("request_id")) == (
            "00000000000000aa",
            "gpu",
            None,
        )
    assert request_line["request_id"] == "req-3" and "job_id" not in request_line


def test_text_format__shows_the_request_id_of_a_line_served_for_a_request() -> None:
    formatter = ContextFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("jobferry", logging.INFO, __file__, 1, "answered", None, None)
    record.request_id = "abc"
    assert formatter.format(record) == "INFO answered [request_id=abc]"


@pytest.mark.parametrize(
    ("incoming", "kept"),
    [
        ("abc-DEF_1.2", True),
        ("0" * 64, True),
        ("0" * 65, False),
        ("", False),
        ("a b", False),
        ("a\nb", False),
        ("é", False),
        ("x;rm", False),
    ],
)
def test_request_id__a_sane_incoming_one_is_kept(incoming: str, kept: bool) -> None:
    assert bool(SANE_ID.fullmatch(incoming)) is kept


def test_log_text__renders_json_lines_as_the_text_format_writes_them(
    logged: Any, tmp_path: Path
) -> None:
    """Tests that read a daemon's log as text (``tests.helpers.log_text``) read a JSON
    one alike: every second e2e daemon writes JSON."""
    logger, stream = logged
    logger.info("plain")
    try:
        raise KeyError("k")
    except KeyError:
        logger.exception("failed")
    log = tmp_path / "daemon.log"
    log.write_text("not json\n" + stream.getvalue())
    text = log_text(log).splitlines()
    assert text[0] == "not json"
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.fullmatch(stamp + " INFO jobferry.test_log_format: plain", text[1]), text[1]
    assert re.fullmatch(stamp + " ERROR jobferry.test_log_format: failed", text[2]), text[2]
    assert text[3] == "Traceback (most recent call last):" and text[-1] == "KeyError: 'k'"
