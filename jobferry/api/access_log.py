"""Request ids and the access log.

Every request gets an id: a sane ``X-Request-Id`` a proxy sent
(``[A-Za-z0-9._-]{1,64}``), else 16 fresh hex digits (one ``secrets`` call). The
id is sent back as ``X-Request-Id`` on every answer (``ApiMixin.set_default_headers``,
so errors and 404s too) and is set in ``REQUEST_ID``, a context variable, while
Tornado works on the request: ``RequestIdApplication`` wraps each request's
delegate, so the handler's task (which copies the context when Tornado creates
it), its streamed body chunks, and the worker threads of ``Core.call`` (which
copies the context too) all see it. The daemon's log filter
(``daemon.logformat.ContextFilter``) puts it on every record logged meanwhile.

``log_access`` writes one ``jobferry.access`` line per request. Its fields are
record attributes, so the JSON format has them as keys: ``request_id``,
``user_id`` (the caller's user id, never the key; None when not
authenticated), ``method``, ``route`` (the route TEMPLATE, never the raw path or
query, which may hold a job_key), ``status``, ``bytes`` (the body bytes the
handler wrote), ``duration_ms`` and ``remote_ip``. It is called only when the
access log is on (or for a 5xx): off, a request costs nothing more than its id.
"""

from __future__ import annotations

import logging
import re
import secrets
from contextvars import ContextVar
from typing import Any

import tornado.httputil
import tornado.web

from jobferry.api.route_names import route_template

#: The id of the request being served in this context (None: no request).
REQUEST_ID: ContextVar[str | None] = ContextVar("jobferry_request_id", default=None)
HEADER = "X-Request-Id"
#: An incoming id we keep: what a proxy (nginx's $request_id, a UUID) sends.
SANE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
#: The attribute of the HTTPServerRequest that holds its id.
_ATTR = "jobferry_request_id"

access_log = logging.getLogger("jobferry.access")


def request_id(request: tornado.httputil.HTTPServerRequest) -> str:
    """*request*'s id: chosen once (the proxy's if sane, else a new one), then kept."""
    found: str | None = getattr(request, _ATTR, None)
    if found is None:
        incoming = request.headers.get(HEADER)
        found = incoming if incoming and SANE_ID.fullmatch(incoming) else secrets.token_hex(8)
        setattr(request, _ATTR, found)
    return found


class _InRequest(tornado.httputil.HTTPMessageDelegate):
    """A request's delegate, run with ``REQUEST_ID`` set to the request's id."""

    __slots__ = ("_inner", "_id")

    def __init__(self, inner: tornado.httputil.HTTPMessageDelegate, rid: str) -> None:
        self._inner = inner
        self._id = rid

    def headers_received(self, start_line: Any, headers: tornado.httputil.HTTPHeaders) -> Any:
        token = REQUEST_ID.set(self._id)
        try:
            return self._inner.headers_received(start_line, headers)
        finally:
            REQUEST_ID.reset(token)

    def data_received(self, chunk: bytes) -> Any:
        token = REQUEST_ID.set(self._id)
        try:
            return self._inner.data_received(chunk)
        finally:
            REQUEST_ID.reset(token)

    def finish(self) -> None:
        token = REQUEST_ID.set(self._id)
        try:
            self._inner.finish()
        finally:
            REQUEST_ID.reset(token)

    def on_connection_close(self) -> None:
        token = REQUEST_ID.set(self._id)
        try:
            self._inner.on_connection_close()
        finally:
            REQUEST_ID.reset(token)


class RequestIdApplication(tornado.web.Application):
    """The Tornado application, serving each request with its id in ``REQUEST_ID``.

    The id is set around each of the request's delegate calls only, so lines Tornado
    logs between two requests of a kept-alive connection carry no stale id.
    """

    def find_handler(  # type: ignore[override]
        self, request: tornado.httputil.HTTPServerRequest, **kwargs: Any
    ) -> tornado.httputil.HTTPMessageDelegate:
        return _InRequest(super().find_handler(request, **kwargs), request_id(request))


def log_access(handler: tornado.web.RequestHandler, status: int) -> None:
    """One ``jobferry.access`` line for *handler*'s finished request."""
    request = handler.request
    principal = getattr(handler, "principal", None)
    user_id = principal.user_id if principal is not None else None
    route = route_template(handler)
    duration_ms = round(1000.0 * request.request_time(), 3)
    sent = getattr(handler, "bytes_written", 0)
    rid = request_id(request)
    access_log.info(
        "%d %s %s %.1fms %dB user=%s",
        status,
        request.method,
        route,
        duration_ms,
        sent,
        user_id or "-",
        extra={
            "request_id": rid,
            "user_id": user_id,
            "method": request.method,
            "route": route,
            "status": status,
            "bytes": sent,
            "duration_ms": duration_ms,
            "remote_ip": request.remote_ip,
        },
    )
