"""Context on log records: which job, which attempt, which node, which destination.

Lines the daemon logs about one job (the scheduler, recovery, endings) pass
``extra=job_context(...)``, so their records carry ``job_id``, ``attempt`` (when
known), ``node`` (the node that logs the line: the one following the job) and
``destination`` as attributes, for any handler: the JSON format
(``daemon.logformat``) emits them as keys, and a reader can filter on them.
Heartbeat lines carry ``node`` only (``node_context``).

Lines logged about a job by code that knows nothing of jobs' context (a runner's
"started job ... as pid ...", a store write in a worker thread) get the same
fields from ``JOB``, a context variable: each task that starts or follows one job
runs in a context of its own where it is set (``job_task``), and ``job_scope``
sets it around other work for one job (a direct start in a submitting thread,
a recovery), and ``daemon.logformat.ContextFilter`` copies it onto every record
logged in that context, including in the worker threads of ``Core.call``, which
runs its function in a copy of the caller's context.

In the text format (``ContextFormatter``, installed by
``daemon.server.configure_logging``) a line with a ``job_id`` ends with
`` [job_id=... attempt=... node=... destination=...]``, and a line logged while
serving a request with `` [request_id=...]``; every other line looks as it always
did, so start-up and heartbeat lines are not cluttered.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from jobferry.request_ids import REQUEST_ID
from jobferry.services.execution import ClaimedJob
from jobferry.services.logfields import job_fields

T = TypeVar("T")

#: The record attributes of a job line, in the order the text format shows them.
FIELDS = ("job_id", "attempt", "node", "destination")

#: The job the current task (or thread) works for: ``job_context``'s fields, or None.
JOB: ContextVar[dict[str, Any] | None] = ContextVar("jobferry_job", default=None)


def job_context(
    job: ClaimedJob | str,
    node: str,
    attempt: int | None = None,
    destination: str | None = None,
) -> dict[str, Any]:
    """``extra=`` for a line about *job* (a claimed attempt, or a job id), logged by *node*."""
    if isinstance(job, ClaimedJob):
        return job_fields(job.job_id, job.attempt, node, job.spec.destination)
    return job_fields(job, attempt, node, destination)


def node_context(node: str) -> dict[str, Any]:
    """``extra=`` for a line about *node* itself (its heartbeat, its row)."""
    return {"node": node}


@contextmanager
def job_scope(job: ClaimedJob, node: str) -> Iterator[None]:
    """Within, in this task or thread, every line is about *job* (``JOB``).

    The request id is cleared meanwhile: a job started by a submission inherits the
    submitting request's context, but its start and follow are not that request's."""
    job_token = JOB.set(job_context(job, node))
    request_token = REQUEST_ID.set(None)
    try:
        yield
    finally:
        REQUEST_ID.reset(request_token)
        JOB.reset(job_token)


def job_task(job: ClaimedJob, node: str, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """*coro* as a task of its own whose lines are about *job* (``job_scope``'s context,
    for the task's whole life)."""
    context = contextvars.copy_context()
    context.run(_enter_job, job, node)
    return asyncio.get_running_loop().create_task(coro, context=context)


def _enter_job(job: ClaimedJob, node: str) -> None:
    JOB.set(job_context(job, node))
    REQUEST_ID.set(None)


class ContextExecutor(ThreadPoolExecutor):
    """A thread pool whose tasks run in a copy of the submitter's context.

    ``loop.run_in_executor`` copies no context; the daemon makes this its event
    loop's default executor, so what a runner logs from ``run_in_executor(None,
    ...)`` (a job's end, found by a poll) is still about the job it follows."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        return super().submit(contextvars.copy_context().run, fn, *args, **kwargs)


class ContextFormatter(logging.Formatter):
    """The text format, plus `` [job_id=... attempt=... node=... destination=...]`` on
    job lines and `` [request_id=...]`` on lines logged while serving a request."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        text = super().formatMessage(record)
        shown: list[str] = []
        if getattr(record, "job_id", None) is not None:
            shown = [
                f"{name}={value}"
                for name in FIELDS
                if (value := getattr(record, name, None)) is not None
            ]
        rid = getattr(record, "request_id", None)
        if rid is not None:
            shown.append(f"request_id={rid}")
        return f"{text} [{' '.join(shown)}]" if shown else text
