"""Request ids and the access log.

Every request gets an id (``jobferry.request_ids``, face-neutral: a sane
``X-Request-Id`` a proxy sent, else a new one; its names are re-exported here). The
id is sent back as ``X-Request-Id`` on every answer (``ApiMixin.set_default_headers``
and ``web.base``'s handlers, so errors, 404s and redirects too) and is set in
``REQUEST_ID``, a context variable, while Tornado works on the request:
``RequestIdApplication`` wraps each request's delegate, so the handler's task
(which copies the context when Tornado creates it), its streamed body chunks,
and the worker threads of ``Core.call`` (which copies the context too) all see
it. The daemon's log filter
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
from typing import Any

import tornado.httputil
import tornado.web

from jobferry.api.route_names import route_template
from jobferry.request_ids import HEADER as HEADER
from jobferry.request_ids import REQUEST_ID as REQUEST_ID
from jobferry.request_ids import SANE_ID as SANE_ID
from jobferry.request_ids import request_id as request_id

access_log = logging.getLogger("jobferry.access")


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
