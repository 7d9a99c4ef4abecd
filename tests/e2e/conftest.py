"""The e2e suite's watch for secrets in logs.

Every daemon of the suite runs with DEBUG logging and access logs
(``tests.helpers.WATCH_SECRETS_ENV``), and every API key or job_key the tests are
given or send (CLI output, key files, HTTP requests and answers) is recorded. At
the session's end every daemon log is searched for each of them, and for anything
shaped like an API key (``jf_...``); a find fails the session. (A job_key looks
like a checksum, so only values known to be job_keys are searched for.)
Passwords are watched too: those set with ``user passwd`` (``tests.helpers``) and
those sent to baseauth (``Authorization: Basic``), with their base64 form. Every
second daemon logs JSON lines (``logging.format: json``), so both formats are
searched; a secret is looked for as written and as JSON escapes it.
Guards: a log line carrying a key (e.g. Tornado's "Malformed HTTP message ...
'Bearer jf_...'") lets anyone who reads the logs act as that user or job.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests.adapters

from tests.helpers import (
    API_KEY,
    DAEMON_LOGS,
    ISSUED_SECRETS,
    WATCH_SECRETS_ENV,
    note_password,
    note_secrets,
)

os.environ[WATCH_SECRETS_ENV] = "1"

_send = requests.adapters.HTTPAdapter.send


def _watching_send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
    """requests' transport, noting the keys a test sends and the ones it is given."""
    for name in ("Authorization", "x-api-key"):
        note_secrets(str(request.headers.get(name, "")).split(" ")[-1])
    _note_basic(str(request.headers.get("Authorization", "")).split(" ")[-1])
    for name, value in parse_qsl(urlsplit(request.url).query):
        note_secrets(value, job_key=name == "job_key")
    response = _send(self, request, *args, **kwargs)
    if not kwargs.get("stream") and "json" in response.headers.get("Content-Type", ""):
        text = response.text[:1_000_000]
        note_secrets(text)
        for found in _JOB_KEY_FIELD.findall(text):
            note_secrets(found, job_key=True)
    return response


def _note_basic(credentials: str) -> None:
    """Note the password of Basic credentials (``user:password`` in base64), if any."""
    try:
        decoded = base64.b64decode(credentials, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return
    if ":" in decoded:
        note_password(decoded.split(":", 1)[1])
        note_password(credentials)


#: ``"job_key": "<hex>"`` in a JSON answer.
_JOB_KEY_FIELD = re.compile(r'"job_key"\s*:\s*"([0-9a-f]{64})"')


requests.adapters.HTTPAdapter.send = _watching_send  # type: ignore[method-assign]


def find_secrets(logs: set[Path], issued: set[str]) -> list[str]:
    """``log: line`` for every line of *logs* that holds an issued secret or looks like one."""
    # As written, and as a JSON line writes it (quotes, backslashes, non-ASCII escaped).
    wanted = issued | {json.dumps(secret)[1:-1] for secret in issued}
    found = []
    for log in sorted(logs):
        try:
            text = log.read_text(errors="replace")
        except FileNotFoundError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if API_KEY.search(line) or any(secret in line for secret in wanted):
                found.append(f"{log}:{number}: {line[:300]}")
    return found


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    found = find_secrets(DAEMON_LOGS, ISSUED_SECRETS)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            f"secrets watch: {len(DAEMON_LOGS)} daemon logs searched for {len(ISSUED_SECRETS)} "
            f"issued keys, job_keys and passwords: {len(found)} lines hold one"
        )
    if found:
        if reporter is not None:
            reporter.write_sep("=", "secrets in daemon logs", red=True)
            for line in found[:50]:
                reporter.write_line(line)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
