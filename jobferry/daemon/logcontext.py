"""Context on log records: which job, which attempt, which node a line is about.

Lines the daemon logs about one job (the scheduler, recovery, endings) pass
``extra=job_context(...)``, so their records carry ``job_id``, ``attempt`` (when
known) and ``node`` (the node that logs the line: the one following the job) as
attributes, for any handler: a structured (JSON) format can emit them as fields,
and a reader can filter on them. Heartbeat lines carry ``node`` only
(``node_context``).

In the text format (``ContextFormatter``, installed by
``daemon.server.configure_logging``) a line with a ``job_id`` ends with
`` [job_id=... attempt=... node=...]``; every other line looks as it always did,
so start-up, heartbeat and HTTP lines are not cluttered.
"""

from __future__ import annotations

import logging
from typing import Any

from jobferry.services.execution import ClaimedJob

#: The record attributes this module sets, in the order the text format shows them.
FIELDS = ("job_id", "attempt", "node")


def job_context(job: ClaimedJob | str, node: str, attempt: int | None = None) -> dict[str, Any]:
    """``extra=`` for a line about *job* (a claimed attempt, or a job id), logged by *node*."""
    if isinstance(job, ClaimedJob):
        return {"job_id": job.job_id, "attempt": job.attempt, "node": node}
    return {"job_id": job, "attempt": attempt, "node": node}


def node_context(node: str) -> dict[str, Any]:
    """``extra=`` for a line about *node* itself (its heartbeat, its row)."""
    return {"node": node}


class ContextFormatter(logging.Formatter):
    """The text format, plus `` [job_id=... attempt=... node=...]`` on job lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        text = super().formatMessage(record)
        if getattr(record, "job_id", None) is None:
            return text
        shown = [
            f"{name}={value}"
            for name in FIELDS
            if (value := getattr(record, name, None)) is not None
        ]
        return f"{text} [{' '.join(shown)}]"
