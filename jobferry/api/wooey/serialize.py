"""Wooey 0.14.1's JSON shapes: its status strings and its job-details body.

Handlers build their answers here from the services' face-neutral records
(``JobView``, ``JobStatus``), so what a Wooey client sees is written in one
place (``reference/wooey-contract.md``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from jobferry.services.jobs import JobView
from jobferry.services.states import TERMINAL_VALUES, JobState

__all__ = ["TERMINAL_VALUES", "job_details", "status_body", "status_json", "wooey_status"]


def wooey_status(state: str, exit_code: int | None, reason: str | None) -> str:
    """Map the internal state onto Wooey 0.14.1's status strings."""
    if state == JobState.OK.value:
        return "completed"
    if state == JobState.ERROR.value:
        # A script that ran and failed is FAILURE; anything that stopped it is error.
        ran = exit_code not in (None, 0) and (reason or "").startswith("exit code")
        return "FAILURE" if ran else "error"
    if state == JobState.DELETED.value:
        return "REVOKED"
    if state in (JobState.RUNNING.value, JobState.DELETING.value):
        return "running"
    if state == JobState.NEW.value:
        return "submitted"
    return "queued"


def status_body(state: str, exit_code: int | None, reason: str | None) -> dict[str, Any]:
    """``GET /api/jobs/v1/<id>/status/``."""
    return {
        "status": wooey_status(state, exit_code, reason),
        "is_complete": state in TERMINAL_VALUES,
    }


#: status_body's JSON by (status string, is complete): a few entries at most.
_STATUS_JSON: dict[tuple[str, bool], str] = {}


def status_json(state: str, exit_code: int | None, reason: str | None) -> str:
    """``status_body`` as JSON text, encoded once per distinct answer: a poll is the
    most frequent request, and its two-key body has a handful of possible values."""
    status, complete = wooey_status(state, exit_code, reason), state in TERMINAL_VALUES
    text = _STATUS_JSON.get((status, complete))
    if text is None:
        text = _STATUS_JSON[(status, complete)] = json.dumps(
            {"status": status, "is_complete": complete}
        )
    return text


def job_details(
    view: JobView, stdout: str, stderr: str, asset_url: Callable[[str, str], str]
) -> dict[str, Any]:
    """``GET /api/jobs/v1/<id>/details/``; *asset_url* (job id, file id) gives a download link.

    Assets are listed once the job is complete: its outputs, never its inputs; none once
    retention deleted its files (``files_expired``, jobferry's extension: its asset URLs
    answer 410 Gone).
    """
    assets = []
    if view.is_terminal and not view.files_expired:
        for job_file in view.files:
            if job_file.kind != "output":
                continue
            assets.append(
                {
                    "name": job_file.name,
                    "url": asset_url(view.job.id, job_file.id),
                    "size": job_file.size,
                    "sha256": job_file.sha256,
                }
            )
    job = view.job
    return {
        "status": wooey_status(job.state, job.exit_code, job.state_reason),
        "is_complete": view.is_terminal,
        "uuid": job.uuid,
        "job_name": job.name,
        "job_description": job.description,
        "stdout": stdout,
        "stderr": stderr,
        "assets": assets,
        "job_id": job.id,
        "exit_code": job.exit_code,
        "reason": job.state_reason,
        "destination": job.destination,
        "runner": job.runner,
        "node": job.node,
        "files_expired": view.files_expired,
    }
