"""What the TES face sends: a task in one of the three views, and the service-info object.

Pure functions over a ``TaskRecord`` (the service builds it from the job, the stored
document and each attempt's state file). Strict TES clients build their models
from the response's keys, and py-tes refuses any key it does not know and any
state it does not list, so the output holds *only* the specification's keys, with
the specification's types, and never a ``null``:

- the document is the normalized one (``tes_doc.validate_task``), re-read key by
  key at the top level (a document stored by an older version cannot leak a key);
- the logs come from state files that a task program on another host wrote, so
  every field of theirs is checked on the way out: a value of the wrong type is
  left out rather than sent, times are re-emitted as RFC 3339 UTC, ``size_bytes``
  as the decimal string the specification asks for.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from jobferry.errors import ValidationError
from jobferry.services.tes_doc import TASK_KEYS, TES_STATES, VIEWS, rfc3339

__all__ = [
    "SERVICE_ID",
    "AttemptNotes",
    "TaskRecord",
    "attempt_notes",
    "parse_view",
    "render",
    "service_info",
]

#: The service-info ``id`` (reverse-domain style, as GA4GH service-info recommends).
SERVICE_ID = "org.jobferry.tes"


@dataclass(frozen=True)
class TaskRecord:
    """One TES task as the service knows it, for ``render``.

    ``attempts`` holds one entry per attempt of the job, in order: the task
    program's state file (``phase``, ``start_time``, ``end_time``, ``logs``,
    ``outputs``, ``system_logs``; ``{}`` if it wrote none) plus ``metadata``, a
    map the service fills (node, attempt number, ...).
    """

    id: str
    state: str
    doc: dict[str, Any]
    creation_time: datetime
    attempts: list[dict[str, Any]] = field(default_factory=list)


def parse_view(view: str | None) -> str:
    """The view a ``view`` parameter names (``MINIMAL`` when absent); case-insensitive."""
    if view is None or view == "":
        return "MINIMAL"
    name = view.upper() if isinstance(view, str) else ""
    if name not in VIEWS:
        message = "must be MINIMAL, BASIC or FULL"
        raise ValidationError(f"view: {message}", errors={"view": [message]})
    return name


def render(task: TaskRecord, view: str) -> dict[str, Any]:
    """*task* as a ``tesTask`` in *view* (``MINIMAL``, ``BASIC`` or ``FULL``).

    ``MINIMAL``: ``id`` and ``state``. ``BASIC``: the document, ``creation_time``
    and ``logs``, without executor logs' ``stdout``/``stderr``, inputs'
    ``content`` and task logs' ``system_logs``. ``FULL``: everything.
    Raises ValidationError for any other view.
    """
    name = parse_view(view)
    state = task.state if task.state in TES_STATES else "UNKNOWN"
    out: dict[str, Any] = {"id": task.id, "state": state}
    if name == "MINIMAL":
        return out
    full = name == "FULL"
    for key in TASK_KEYS:
        if task.doc.get(key) is not None:
            out[key] = copy.deepcopy(task.doc[key])
    if not full:
        for item in out.get("inputs") or []:
            if isinstance(item, dict):
                item.pop("content", None)
    out["logs"] = [_task_log(attempt, full) for attempt in task.attempts]
    out["creation_time"] = rfc3339(task.creation_time)
    return out


# --- logs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AttemptNotes:
    """What a task's notes say of one attempt: ``shared`` lines (known at create, for
    every attempt), ``ended`` lines (why this attempt ended: its requeue) and
    ``metadata`` (the node it ran on, as the requeue knew it)."""

    shared: list[str]
    ended: list[str]
    metadata: dict[str, str]


def attempt_notes(notes: object, number: int) -> AttemptNotes:
    """Attempt *number*'s share of ``tes_tasks.notes``: plain strings are task-wide; a
    map tagged ``attempt`` (``tes_end.record_requeue``: ``log``, ``node``) belongs to
    that attempt alone, so a requeued attempt's log says why it ended and where."""
    shared, ended, metadata = [], [], {}
    for note in notes if isinstance(notes, list) else []:
        if isinstance(note, str):
            shared.append(note)
        elif isinstance(note, Mapping) and _is_int(note.get("attempt"), number):
            if isinstance(note.get("log"), str):
                ended.append(note["log"])
            if isinstance(note.get("node"), str):
                metadata["node"] = note["node"]
    return AttemptNotes(shared, ended, metadata)


def _is_int(value: object, number: int) -> bool:
    """*value* is the integer *number* (``True`` is not 1 here)."""
    return isinstance(value, int) and not isinstance(value, bool) and value == number


def _time(value: object) -> str | None:
    """An RFC 3339 time from a state file (a string) or the service (a datetime)."""
    if isinstance(value, datetime):
        return rfc3339(value)
    if not isinstance(value, str):
        return None
    try:
        return rfc3339(datetime.fromisoformat(value))
    except ValueError:
        return None


def _strings(value: object) -> list[str]:
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


def _dicts(value: object) -> list[Mapping[str, Any]]:
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []


def _metadata(value: object) -> dict[str, str]:
    """A ``metadata`` map of strings: scalar values are written as text, others dropped."""
    if not isinstance(value, Mapping):
        return {}
    out: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or item is None:
            continue
        if isinstance(item, datetime):
            out[key] = rfc3339(item) or ""
        elif isinstance(item, bool):
            out[key] = "true" if item else "false"
        elif isinstance(item, str | int | float):
            out[key] = str(item)
    return out


def _executor_log(log: Mapping[str, Any], full: bool) -> dict[str, Any] | None:
    """A ``tesExecutorLog``; None when the entry has no integer ``exit_code`` (required)."""
    exit_code = log.get("exit_code")
    if isinstance(exit_code, bool) or not isinstance(exit_code, int):
        return None
    out: dict[str, Any] = {}
    for key in ("start_time", "end_time"):
        if (when := _time(log.get(key))) is not None:
            out[key] = when
    if full:
        for key in ("stdout", "stderr"):
            if isinstance(log.get(key), str):
                out[key] = log[key]
    out["exit_code"] = exit_code
    return out


def _output_log(log: Mapping[str, Any]) -> dict[str, Any] | None:
    """A ``tesOutputFileLog`` (``url``, ``path``, ``size_bytes`` as a string); None if bad."""
    url, path, size = log.get("url"), log.get("path"), log.get("size_bytes")
    if isinstance(size, int) and not isinstance(size, bool):
        size = str(size)
    if not (isinstance(url, str) and isinstance(path, str) and isinstance(size, str)):
        return None
    if not size.isdecimal():
        return None
    return {"url": url, "path": path, "size_bytes": size}


def _task_log(attempt: Mapping[str, Any], full: bool) -> dict[str, Any]:
    """A ``tesTaskLog`` from one attempt's state file and the service's metadata."""
    executors = [_executor_log(log, full) for log in _dicts(attempt.get("logs"))]
    out: dict[str, Any] = {"logs": [log for log in executors if log is not None]}
    if metadata := _metadata(attempt.get("metadata")):
        out["metadata"] = metadata
    for key in ("start_time", "end_time"):
        if (when := _time(attempt.get(key))) is not None:
            out[key] = when
    outputs = [_output_log(log) for log in _dicts(attempt.get("outputs"))]
    out["outputs"] = [log for log in outputs if log is not None]
    if full:
        out["system_logs"] = _strings(attempt.get("system_logs"))
    return out


# --- service info -------------------------------------------------------------------


def service_info(
    *,
    name: str,
    version: str,
    storage: list[str],
    backend_parameters: list[str],
    organization_name: str = "jobferry",
    organization_url: str = "https://localhost/",
    description: str | None = None,
    documentation_url: str | None = None,
    contact_url: str | None = None,
    environment: str | None = None,
    created_at: datetime | None = None,
    updated_at: datetime | None = None,
) -> dict[str, Any]:
    """The ``GET /service-info`` body: GA4GH service-info 1.0 with TES 1.1's additions.

    *storage* lists storage locations tasks may name (``file:///dir``,
    ``http://host:port``); *backend_parameters* the ``resources.backend_parameters``
    keys this server supports. ``organization_url`` must be a URL (service-info
    requires one): the face passes the address clients reach the server at.
    Optional fields that are None are left out.
    """
    out: dict[str, Any] = {
        "id": SERVICE_ID,
        "name": name,
        "type": {"group": "org.ga4gh", "artifact": "tes", "version": "1.1.0"},
        "description": description,
        "organization": {"name": organization_name, "url": organization_url},
        "contactUrl": contact_url,
        "documentationUrl": documentation_url,
        "createdAt": rfc3339(created_at),
        "updatedAt": rfc3339(updated_at),
        "environment": environment,
        "version": version,
        "storage": list(storage),
        "tesResources_backend_parameters": list(backend_parameters),
    }
    return {key: value for key, value in out.items() if value is not None}
