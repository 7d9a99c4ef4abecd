"""Handler base: JSON responses, authentication, and the one error-to-HTTP table.

Handlers never set error statuses themselves: they raise (a JobferryError or
tornado's HTTPError) and ``write_error`` answers with JSON, the status coming
from ``STATUS_BY_ERROR`` (``jobferry.http_status``, the one table, shared with the
browser face). A third-party exception that means the disk is full
(ENOSPC/EDQUOT, SQLite "database or disk is full") is turned into
InsufficientStorageError here (507), wherever in a request it was raised.
Client errors are logged without a traceback, server errors with one; internal
details never reach the client.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Awaitable
from typing import Any

import tornado.web

from jobferry import errors
from jobferry.http_status import http_status, lookup_status
from jobferry.request_ids import HEADER as REQUEST_ID_HEADER
from jobferry.request_ids import request_id
from jobferry.sent_bytes import CountsSentBytes
from jobferry.services.container import Services
from jobferry.services.core import Core, Principal

logger = logging.getLogger(__name__)

#: Where the Galaxy face answers differently (galaxy-contract.md §1.2-1.3).
GALAXY_STATUS_BY_ERROR: dict[type[errors.JobferryError], int] = {
    errors.InvalidKeyError: 401,
    errors.InvalidCredentialsError: 401,
    errors.FormError: 400,
    errors.ScriptNotFoundError: 404,
}

#: Galaxy's six-digit err_code by exception class (HTTP status x 1000 + n).
GALAXY_ERR_CODES: dict[type[errors.JobferryError], int] = {
    errors.ScriptNotFoundError: 404001,
    errors.AttributeMissingError: 400005,
    errors.ParameterMissingError: 400007,
    errors.MalformedIdError: 400009,
    errors.ValidationError: 400008,
    errors.RequestError: 400008,
    errors.IntrospectionError: 400008,
    errors.InvalidKeyError: 401001,
    errors.InvalidCredentialsError: 401001,
    errors.AuthenticationError: 403001,
    errors.AdminRequiredError: 403006,
    errors.NotAllowedByConfigError: 403004,
    errors.PathRejectedError: 403002,
    errors.PermissionDeniedError: 403002,
    errors.NotFoundError: 404001,
    errors.ConflictError: 409001,
    errors.GoneError: 410001,
    errors.PayloadTooLargeError: 413001,
    errors.RangeNotSatisfiableError: 416001,
    errors.TooManyRequestsError: 429001,
    errors.InsufficientStorageError: 507001,
}


_KEY_IN_URI = re.compile(r"((?:^|[?&])(?:job_key|key)=)[^&]*")


def scrub(uri: str) -> str:
    """*uri* with job keys and API keys blanked: what logs may show of a request."""
    return _KEY_IN_URI.sub(r"\1***", uri)


def status_for(exc: BaseException, *, galaxy: bool = False) -> int:
    """The HTTP status for an exception; *galaxy* applies the Galaxy face's differences."""
    if galaxy:
        found = lookup_status(GALAXY_STATUS_BY_ERROR, exc)
        if found is not None:
            return found
    return http_status(exc)


def galaxy_err_code(exc: BaseException | None, status: int) -> int:
    found = lookup_status(GALAXY_ERR_CODES, exc) if exc is not None else None
    return found or status * 1000 + 1


class ApiMixin(CountsSentBytes):
    """JSON in and out, authentication, errors mapped in one place.

    A mixin so that handlers built on other Tornado handlers (StaticFileHandler
    for downloads) share it; ``ApiHandler`` is the usual base.
    """

    services: Services
    principal: Principal | None
    #: Handlers of the Galaxy face answer with Galaxy's statuses and error JSON.
    galaxy_face = False

    def initialize(self, services: Services) -> None:
        self.services = services
        self.principal = None

    @property
    def core(self) -> Core:
        return self.services.core

    def set_default_headers(self) -> None:
        # Straight into the header map: ``set_header`` checks each value for
        # control characters, on every request; these are constants and a request
        # id (``request_ids.SANE_ID`` or fresh hex: no CR, LF or control character).
        headers = self._headers
        headers["Content-Type"] = "application/json; charset=UTF-8"
        headers["X-Content-Type-Options"] = "nosniff"
        headers["Cache-Control"] = "no-store"
        headers[REQUEST_ID_HEADER] = request_id(self.request)

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        return self.core.call(fn, *args, **kwargs)

    def send_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(data, default=str))

    def send_text(self, text: str, status: int = 200) -> None:
        """Answer with *text*, JSON already encoded (a hot path's fixed shape)."""
        self.set_status(status)
        self.finish(text)

    # --- authentication ---------------------------------------------------------------

    def presented_key(self) -> str | None:
        """The API key from ``Authorization: Bearer <key>`` (Wooey's exact form)."""
        header = self.request.headers.get("Authorization", "")
        parts = header.split(" ")
        if len(parts) == 2 and parts[0] == "Bearer" and parts[1]:
            return parts[1]
        return None

    async def authenticate(self) -> Principal:
        if not self.core.config.api.enable_api_keys:
            raise errors.AuthenticationError()
        key = self.presented_key()
        principal = self.services.auth.cached(key)
        if principal is None:
            principal = await self.call(self.services.auth.authenticate, key)
        self.principal = principal
        return principal

    # --- errors -----------------------------------------------------------------------

    def face_status(self, exc: errors.JobferryError) -> int | None:
        """Where this face's status for *exc* differs from the table (None: it does not);
        a face's own small table, like the Galaxy face's differences."""
        return None

    def error_body(self, exc: BaseException | None, status: int, message: str) -> dict[str, Any]:
        """The JSON body for an error; faces override this for their own shape."""
        code = exc.code if isinstance(exc, errors.JobferryError) else _http_code(status)
        body: dict[str, Any] = {
            "error": code,
            "message": message,
            # Galaxy's shape, in every face, so any client finds its keys.
            "err_msg": message,
            "err_code": galaxy_err_code(exc, status),
        }
        if isinstance(exc, errors.ValidationError):
            body["errors"] = exc.errors
        if isinstance(exc, errors.GoneError):
            body["details"] = exc.details  # files_expired: true, the job, when
        elif isinstance(exc, errors.InsufficientStorageError):
            # The disk guard's figures (what is free, what is required); never a path.
            shown = {k: v for k, v in exc.details.items() if k in errors.STORAGE_FIGURES}
            if shown:
                body["details"] = shown
        return body

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if exc is not None and not isinstance(exc, errors.JobferryError | tornado.web.HTTPError):
            exc = errors.no_space(exc) or exc
        if isinstance(exc, errors.JobferryError):
            status_code = self.face_status(exc) or status_for(exc, galaxy=self.galaxy_face)
            message = exc.message
        elif isinstance(exc, tornado.web.HTTPError):
            status_code = exc.status_code
            message = exc.log_message if exc.log_message and status_code < 500 else ""
            message = message or self._reason
        else:
            message = "Internal server error."
        self.clear()
        self.set_default_headers()
        body_future = getattr(self.request, "_body_future", None)
        if body_future is not None and not body_future.done():
            # Answered before the body was read (e.g. a refused upload): Tornado will
            # close the connection, so say so, or a client reusing it sees a reset.
            self.set_header("Connection", "close")
        if isinstance(exc, errors.ElsewhereError):
            # The same request, on the node that holds the job's files (307 keeps the
            # method and body, so uploads are redirected too).
            self.set_header("Location", exc.node_url.rstrip("/") + (self.request.uri or "/"))
        if isinstance(exc, errors.TooManyRequestsError):
            self.set_header("Retry-After", str(exc.retry_after))
        if isinstance(exc, errors.RangeNotSatisfiableError) and "size" in exc.details:
            self.set_header("Content-Range", f"bytes */{exc.details['size']}")
        self.set_status(status_code)
        self.finish(json.dumps(self.error_body(exc, status_code, message), default=str))

    def _request_summary(self) -> str:
        uri = scrub(self.request.uri or "")
        return f"{self.request.method} {uri} ({self.request.remote_ip})"

    def log_exception(self, typ: Any, value: BaseException | None, tb: Any) -> None:
        uri = scrub(self.request.uri or "")
        if isinstance(value, errors.JobferryError) and status_for(value) < 500:
            logger.debug("%s %s: %s", self.request.method, uri, value.message)
            return
        if isinstance(value, tornado.web.HTTPError) and (
            value.status_code < 500 or value.status_code == 501
        ):
            return
        if value is not None and errors.means_no_space(value):
            # A full disk, not a bug: one line per request (answered 507).
            logger.warning("%s %s: out of disk space: %s", self.request.method, uri, value)
            return
        if isinstance(value, errors.StoreUnavailableError):
            # An outage, not a bug: one line per request, no traceback.
            reason = value.details.get("reason", value.message)
            logger.warning("%s %s: store unavailable: %s", self.request.method, uri, reason)
            self.core.telemetry.store_error("http")
            return
        logger.error("error handling %s %s", self.request.method, uri, exc_info=value)

    def absolute_url(self, path: str) -> str:
        base = self.core.config.server.base_url
        if base:
            return base.rstrip("/") + path
        return f"{self.request.protocol}://{self.request.host}{path}"


def _http_code(status: int) -> str:
    return {
        400: "bad_request",
        403: "forbidden",
        404: "not_found",
        405: "method_not_allowed",
        413: "payload_too_large",
        410: "gone",
        416: "range_not_satisfiable",
        429: "too_many_requests",
        507: "insufficient_storage",
        501: "not_implemented",
    }.get(status, "internal_error" if status >= 500 else "error")


class ApiHandler(ApiMixin, tornado.web.RequestHandler):
    """Base of every API handler."""


@tornado.web.stream_request_body
class NotFoundHandler(ApiHandler):
    """Every unknown path: a JSON 404 (answered before any body is read)."""

    def data_received(self, chunk: bytes) -> None:
        pass

    def prepare(self) -> None:
        raise errors.NotFoundError(f"no such endpoint: {self.request.path}")


def decode_baseauth(header: str) -> tuple[str, str]:
    """``Basic <b64>`` or bare ``<b64>`` (bioblend's form) -> (identity, password): the
    Galaxy face's baseauth and the TES face's Basic credentials alike."""
    parts = header.split()
    if len(parts) == 2 and parts[0].lower() == "basic":
        encoded = parts[1]
    elif len(parts) == 1:
        encoded = parts[0]
    else:
        raise errors.RequestError("Invalid Authorization header: expected Basic credentials.")
    try:
        decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise errors.RequestError("Invalid Authorization header: not base64 credentials.") from None
    identity, colon, password = decoded.partition(":")
    if not colon or not identity:
        raise errors.RequestError("Invalid Authorization header: expected identity:password.")
    return identity, password
