"""The fields a log line about one job carries, for services and the daemon alike.

A line about a job passes ``extra=job_fields(...)``: its record then has
``job_id``, ``attempt``, ``node`` (the node that logs the line) and
``destination`` as attributes, which the JSON log format emits as keys and the
text format shows at the line's end (``daemon.logcontext``). Unknown values are
None, and still present, so every job line has the same four keys.
"""

from __future__ import annotations

from typing import Any


def job_fields(
    job_id: str, attempt: int | None, node: str | None, destination: str | None
) -> dict[str, Any]:
    """``extra=`` for a line about job *job_id*, logged by *node*."""
    return {"job_id": job_id, "attempt": attempt, "node": node, "destination": destination}
