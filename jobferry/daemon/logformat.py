"""The JSON log format (``logging.format: json``) and the filter that adds context.

``JsonFormatter`` writes one JSON object per line: ``time`` (ISO 8601, UTC, with
milliseconds, ``Z``), ``level``, ``logger``, ``message``, ``exception`` (the
traceback) when there is one, ``stack`` when asked for, then every context field
present on the record: ``job_id``/``attempt``/``node``/``destination`` on job
lines, ``request_id`` on lines logged while serving a request, and the access
log's ``user_id``/``method``/``route``/``status``/``bytes``/``duration_ms``/
``remote_ip`` (``api.access_log``). Any other ``extra=`` field a caller passes is
emitted too (a value JSON does not know, as its ``str``). ``json.dumps`` escapes
newlines, so a multi-line message or a traceback stays on its line; the output is
ASCII (non-ASCII text as ``\\u`` escapes, which every JSON reader decodes), so no
stream encoding can break a line.

A small formatter of our own rather than python-json-logger: it is some thirty
lines; it gives exactly the field names and time format above without
configuring a library's renaming and timestamp options; its context fields pass
through ``daemon.redact`` like the message does; and it adds no dependency to a
daemon deployed on compute nodes.

``ContextFilter`` (on the root logger's handler, like ``daemon.redact``'s filter,
so records of every logger pass it) sets ``request_id`` from
``request_ids.REQUEST_ID``, the job's fields from ``daemon.logcontext.JOB``
when the call did not pass them, and ``node`` (this daemon's) on every record:
two context-variable reads per record.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from jobferry.daemon.logcontext import JOB
from jobferry.daemon.redact import redact
from jobferry.request_ids import REQUEST_ID

#: Attributes every LogRecord has: not context fields.
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)
_PLAIN = (str, int, float, bool, type(None))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, exception, context."""

    def format(self, record: logging.LogRecord) -> str:
        created = time.gmtime(record.created)
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", created) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        for name, value in record.__dict__.items():
            if name in _STANDARD or name in out:
                continue
            if isinstance(value, str):
                value = redact(value)
            elif not isinstance(value, _PLAIN):
                value = redact(str(value))
            out[name] = value
        return json.dumps(out, default=str)


class ContextFilter(logging.Filter):
    """Puts the request id, the job's fields and this node on every record."""

    def __init__(self, node: str | None = None) -> None:
        super().__init__()
        self.node = node

    def filter(self, record: logging.LogRecord) -> bool:
        rid = REQUEST_ID.get()
        if rid is not None and not hasattr(record, "request_id"):
            record.request_id = rid
        job = JOB.get()
        if job is not None and not hasattr(record, "job_id"):
            record.__dict__.update(job)
        if self.node is not None and not hasattr(record, "node"):
            record.node = self.node
        return True


def install(handler: logging.Handler, *, json_lines: bool, node: str | None = None) -> None:
    """Give *handler* the context filter, and the JSON format if *json_lines*."""
    handler.addFilter(ContextFilter(node))
    if json_lines:
        handler.setFormatter(JsonFormatter())
