"""The HTTP transport of ``jobferry remote``: the standard library's ``http.client``.

Why the standard library: the client needs exact control over the few things it
does (a streamed multipart body of a known length, a ``Range`` request whose
answer is appended to a ``.part`` file, socket timeouts per request) and must
tell a refused connection, an unknown host and a server that is not jobferry
apart; ``http.client`` gives all of that directly, and a laptop install needs no
further dependency (requests stays a test dependency).

Every failure becomes a ``RemoteError`` whose message is one plain line: the
daemon's own message for its errors, and what went wrong for a wrong URL or key.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from jobferry import __version__
from jobferry.errors import JobferryError

#: Seconds a request may wait for the daemon's next bytes (a long poll adds its wait).
TIMEOUT_S = 60.0
#: Largest JSON answer read, bytes.
MAX_JSON_BYTES = 64 * 1024 * 1024
#: The error codes (``error`` of the daemon's JSON) that mean the key is wrong.
KEY_ERRORS = frozenset({"authentication_required", "invalid_key", "invalid_credentials"})
KEY_HINT = "check --key-file, $JOBFERRY_KEY or the client file"


class RemoteError(JobferryError):
    """The daemon could not be asked, or answered with an error."""

    code = "remote_error"


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def error_line(payload: Mapping[str, Any]) -> str:
    """The daemon's message with its per-field messages, on one line."""
    message = str(payload.get("message") or payload.get("err_msg") or "").strip()
    details: list[str] = []
    found = payload.get("errors")
    if isinstance(found, Mapping):
        for field, problems in found.items():
            for problem in problems if isinstance(problems, list) else [problems]:
                text = str(problem)
                if text and text != message and text not in message:
                    details.append(text if field == "__all__" else f"{field}: {text}")
    if details:
        message = f"{message.rstrip('.')}: {'; '.join(details)}" if message else "; ".join(details)
    return " ".join(message.split()) or "the daemon gave no reason"


class Remote:
    """One jobferry daemon, asked with one API key."""

    def __init__(self, url: str, key: str, *, timeout_s: float = TIMEOUT_S) -> None:
        parts = urlsplit(url)
        self.url = url
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port
        self.prefix = parts.path.rstrip("/")
        self.timeout_s = timeout_s
        self._key = key

    # --- requests ---------------------------------------------------------------------

    def path(self, path: str, query: Mapping[str, Any] | None = None) -> str:
        target = self.prefix + path
        if query:
            target += "?" + urlencode({k: v for k, v in query.items() if v is not None}, True)
        return target

    def connect(self, timeout_s: float | None = None) -> http.client.HTTPConnection:
        timeout = timeout_s or self.timeout_s
        if self.https:
            return http.client.HTTPSConnection(
                self.host, self.port, timeout=timeout, context=ssl.create_default_context()
            )
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self._key}",
            "User-Agent": f"jobferry-remote/{__version__}",
            "Accept": "application/json",
            **(extra or {}),
        }

    def open(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: bytes | Iterable[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send a request; the open connection and its response (the caller reads it)."""
        conn = self.connect(timeout_s)
        target = self.path(path, query)
        try:
            try:
                conn.request(method, target, body=body, headers=self.headers(headers))
            except (BrokenPipeError, ConnectionResetError):
                pass  # the daemon answered before taking the whole body: read its answer
            return conn, conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise self.unreachable(exc) from None

    def call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: bytes | Iterable[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        """One request whose answer is JSON; its parsed body, or a RemoteError."""
        conn, response = self.open(
            method, path, query=query, body=body, headers=headers, timeout_s=timeout_s
        )
        try:
            data = response.read(MAX_JSON_BYTES + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise self.unreachable(exc) from None
        finally:
            conn.close()
        answer = Answer(response.status, response.headers, data)
        payload = self.parse(method, path, answer)
        if answer.status >= 400 or (isinstance(payload, dict) and payload.get("valid") is False):
            raise self.refused(answer.status, payload)
        return payload

    # --- what went wrong --------------------------------------------------------------

    def parse(self, method: str, path: str, answer: Answer) -> Any:
        """The JSON of *answer*, or a RemoteError saying this is no jobferry daemon."""
        kind = answer.headers.get_content_type()
        try:
            if kind != "application/json" or len(answer.body) > MAX_JSON_BYTES:
                raise ValueError(kind)
            payload = json.loads(answer.body)
        except ValueError:
            raise self.not_jobferry(answer, f"a {kind} answer to {method} {path}") from None
        if answer.status >= 400 and not (isinstance(payload, dict) and "error" in payload):
            raise self.not_jobferry(answer, f"an error without jobferry's shape to {method} {path}")
        return payload

    def not_jobferry(self, answer: Answer, what: str) -> RemoteError:
        return RemoteError(
            f"{self.url} does not look like a jobferry daemon "
            f"(HTTP {answer.status}, {what}): check --url"
        )

    def refused(self, status: int, payload: Mapping[str, Any]) -> RemoteError:
        line = error_line(payload)
        code = str(payload.get("error") or "")
        if status in (401, 403) and code in KEY_ERRORS:
            return RemoteError(
                f"the daemon at {self.url} refused the API key (HTTP {status}: {line}): {KEY_HINT}",
                status=status,
                error=code,
            )
        return RemoteError(f"{line} (HTTP {status})", status=status, error=code)

    def unreachable(self, exc: BaseException) -> RemoteError:
        where = f"the daemon at {self.url}"
        if isinstance(exc, socket.gaierror):
            why = f"cannot resolve host {self.host!r} ({exc.strerror or exc})"
        elif isinstance(exc, ConnectionRefusedError):
            why = "connection refused (is the daemon running, is the port right?)"
        elif isinstance(exc, TimeoutError | socket.timeout):
            why = "no answer in time"
        elif isinstance(exc, ssl.SSLError):
            why = f"TLS failed ({exc.reason or exc})"
        elif isinstance(exc, http.client.HTTPException):
            why = f"it does not speak HTTP as expected ({type(exc).__name__}: {exc})"
        elif isinstance(exc, OSError):
            why = exc.strerror or str(exc) or type(exc).__name__
        else:
            why = str(exc)
        return RemoteError(f"cannot reach {where}: {' '.join(why.split())}")


def segment(value: str) -> str:
    """*value* as one path segment (a job id typed by a user cannot leave its route)."""
    return quote(value, safe="")
