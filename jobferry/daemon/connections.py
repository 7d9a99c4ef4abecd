"""The HTTP server's defences against slow and greedy clients.

Tornado's HTTPServer closes a connection that sends no whole request head within
``idle_connection_timeout`` (its header timeout is that same timer), but it
accepts any number of connections and lets a body trickle in for as long as the
overall body timeout allows. So a few clients could hold every file descriptor
until ``accept`` fails with EMFILE, which Tornado logs as a traceback per attempt.
``GuardedHTTPServer`` adds:

* a cap on open connections per client address (the TCP peer: behind a reverse
  proxy, the proxy) and a total cap below the descriptor limit; a connection
  over either is answered with a short JSON 503 and closed;
* a minimum average upload rate, enforced once a body has taken a grace period.

It also keeps Tornado's two timers itself: the header timeout (a whole request
head within ``idle_connection_timeout`` of the connection opening or its last
answer) and the body timeout. Tornado arms both per request with
``gen.with_timeout`` (a timer, a future chained to the read, the timer removed
again): a py-spy profile of the acceptance benchmark put that at ~5-8 % of the
event loop's time per request. Here each request costs a dict entry instead
(``_heads``, the connections waiting for a head, in the order they began to
wait), and one sweep timer closes what is overdue, to within ``_sweep_every``
(one second at most): the same limits, enforced a little later at worst.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
import time
from collections.abc import Awaitable
from typing import Any

import tornado.httpserver
import tornado.httputil
import tornado.iostream
from tornado.http1connection import HTTP1Connection
from tornado.ioloop import IOLoop

logger = logging.getLogger(__name__)

#: Descriptors kept for everything but client connections (store, job files, logs).
RESERVED_FDS = 256
#: Refusals being answered at once; more are closed without an answer.
MAX_REFUSING = 64
#: Seconds a refused client has to send its request head (read so that closing does
#: not reset the connection before the client reads the 503).
REFUSE_READ_S = 2.0


def raise_fd_limit() -> int:
    """Raise the soft limit on open files to the hard one; return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 65536)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


def _busy_answer(message: str) -> bytes:
    body = json.dumps(
        {"error": "busy", "message": message, "err_msg": message, "err_code": 503001}
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json; charset=UTF-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 5\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


class GuardedHTTPServer(tornado.httpserver.HTTPServer):
    """HTTPServer with per-address and total connection caps and a minimum body rate."""

    def initialize(  # type: ignore[override]
        self,
        *args: Any,
        max_per_address: int,
        min_body_rate: float = 0.0,
        body_grace_s: float = 30.0,
        max_total: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().initialize(*args, **kwargs)
        # Tornado's per-request timers off: the sweep enforces both (module docstring).
        params = self.conn_params
        self.header_timeout: float = params.header_timeout or 3600.0
        self.body_timeout: float | None = params.body_timeout
        params.header_timeout = None
        params.body_timeout = None
        #: Connections waiting for a request head -> (since when, that request's
        #: connection); insertion order is waiting order.
        self._heads: dict[object, tuple[float, HTTP1Connection]] = {}
        self.max_per_address = max_per_address
        self.max_total = (
            max_total if max_total is not None else max(64, raise_fd_limit() - RESERVED_FDS)
        )
        #: Bytes per second; 0: no minimum.
        self.min_body_rate = min_body_rate
        self.body_grace_s = body_grace_s
        self._uploads: set[_RateGuard] = set()
        self._sweeper: object | None = None
        #: How often open uploads are checked (a check is due after the grace period,
        #: then every min(5, grace) seconds).
        self._sweep_every = min(1.0, body_grace_s / 4, self.header_timeout / 4)
        self._per_address: dict[str, int] = {}
        self._address_of: dict[int, str] = {}
        self.open_connections = 0
        self._refusing = 0
        self.refused = 0

    def handle_stream(self, stream: tornado.iostream.IOStream, address: Any) -> None:
        ip = str(address[0]) if isinstance(address, tuple) and address else ""
        count = self._per_address.get(ip, 0)
        if count >= self.max_per_address or self.open_connections >= self.max_total:
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                logger.warning(
                    "refusing connections (503): %s has %d open, %d in all (caps %d, %d); "
                    "%d refused so far",
                    ip or "?",
                    count,
                    self.open_connections,
                    self.max_per_address,
                    self.max_total,
                    self.refused,
                )
            self._refuse(stream)
            return
        self._per_address[ip] = count + 1
        self.open_connections += 1
        self._address_of[id(stream)] = ip
        super().handle_stream(stream, address)

    def on_close(self, server_conn: object) -> None:
        self._heads.pop(server_conn, None)
        stream = getattr(server_conn, "stream", None)
        ip = self._address_of.pop(id(stream), None)
        if ip is not None:
            self.open_connections -= 1
            left = self._per_address.get(ip, 1) - 1
            if left > 0:
                self._per_address[ip] = left
            else:
                self._per_address.pop(ip, None)
        super().on_close(server_conn)

    def _refuse(self, stream: tornado.iostream.IOStream) -> None:
        if self._refusing >= MAX_REFUSING:
            stream.close()
            return
        self._refusing += 1
        IOLoop.current().add_future(
            asyncio.ensure_future(self._answer_busy(stream)), lambda _: None
        )

    async def _answer_busy(self, stream: tornado.iostream.IOStream) -> None:
        try:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    stream.read_until_regex(b"\r?\n\r?\n", max_bytes=65536), REFUSE_READ_S
                )
            with contextlib.suppress(tornado.iostream.StreamClosedError):
                await stream.write(_busy_answer("Too many connections: try again later."))
        finally:
            stream.close()
            self._refusing -= 1

    def start_request(
        self, server_conn: object, request_conn: tornado.httputil.HTTPConnection
    ) -> tornado.httputil.HTTPMessageDelegate:
        delegate = super().start_request(server_conn, request_conn)
        assert isinstance(request_conn, HTTP1Connection)  # what HTTPServer serves
        self._heads[server_conn] = (time.monotonic(), request_conn)
        if self._sweeper is None:
            self._sweeper = IOLoop.current().call_later(self._sweep_every, self._sweep)
        return _RateGuard(delegate, request_conn, self, server_conn)

    # The heads and uploads under watch: one sweep timer for all of them, armed while
    # any is open, instead of timers added and removed per request (the common
    # request's head and body are complete long before any limit: it costs a dict
    # entry, and a set add and discard when it has a body).

    def _watch(self, guard: _RateGuard) -> None:
        self._uploads.add(guard)
        if self._sweeper is None:
            self._sweeper = IOLoop.current().call_later(self._sweep_every, self._sweep)

    def _unwatch(self, guard: _RateGuard) -> None:
        self._uploads.discard(guard)

    def _sweep(self) -> None:
        self._sweeper = None
        now = time.monotonic()
        overdue = now - self.header_timeout
        late = []
        for since, request_conn in self._heads.values():  # oldest first
            if since > overdue:
                break
            late.append(request_conn)
        for request_conn in late:
            request_conn.close()  # no head in time: closed, as Tornado's timeout did
        for guard in [g for g in self._uploads if g.due <= now]:
            guard.check(now)
        if self._heads or self._uploads:
            self._sweeper = IOLoop.current().call_later(self._sweep_every, self._sweep)


class _RateGuard(tornado.httputil.HTTPMessageDelegate):
    """One request's limits: its head arrived (no longer under the header timeout);
    its body within the body timeout, and not slower than the minimum average rate.

    The body is checked first after the grace period (or the body timeout, when no
    minimum rate is set), then every few seconds until it is complete (by the
    server's sweep, to within ``_sweep_every``). The rate is the average since the
    head arrived, so a pause is fine as long as the upload has been fast enough
    overall.
    """

    __slots__ = ("inner", "conn", "server", "server_conn", "received", "started", "due", "watched")

    def __init__(
        self,
        inner: tornado.httputil.HTTPMessageDelegate,
        conn: HTTP1Connection,
        server: GuardedHTTPServer,
        server_conn: object,
    ) -> None:
        self.inner = inner
        self.conn = conn
        self.server = server
        self.server_conn = server_conn
        self.received = 0
        self.started = 0.0
        self.due = 0.0
        self.watched = False

    def headers_received(
        self,
        start_line: tornado.httputil.RequestStartLine | tornado.httputil.ResponseStartLine,
        headers: tornado.httputil.HTTPHeaders,
    ) -> Awaitable[None] | None:
        server = self.server
        server._heads.pop(self.server_conn, None)
        if headers.get("Content-Length", "0") != "0" or "Transfer-Encoding" in headers:
            if server.min_body_rate > 0 or server.body_timeout is not None:
                self.started = time.monotonic()
                first = server.body_grace_s if server.min_body_rate > 0 else server.body_timeout
                self.due = self.started + (first or 0.0)
                self.watched = True
                server._watch(self)
        return self.inner.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        self.received += len(chunk)
        return self.inner.data_received(chunk)

    def check(self, now: float) -> None:
        """Close the connection if the body so far is too slow, else check again later."""
        server = self.server
        elapsed = now - self.started
        if server.body_timeout is not None and elapsed >= server.body_timeout:
            logger.info("closing an upload still unfinished after %.0f s", elapsed)
            self._stop()
            self.conn.close()
            return
        if self.received < server.min_body_rate * elapsed:
            logger.info(
                "closing a slow upload: %d bytes in %.0f s (minimum %.0f bytes/s)",
                self.received,
                elapsed,
                server.min_body_rate,
            )
            self._stop()
            self.conn.close()
            return
        self.due = now + min(5.0, server.body_grace_s)
        if server.body_timeout is not None:
            self.due = min(self.due, self.started + server.body_timeout)

    def _stop(self) -> None:
        if self.watched:
            self.watched = False
            self.server._unwatch(self)

    def finish(self) -> None:
        self._stop()
        self.inner.finish()

    def on_connection_close(self) -> None:
        self._stop()
        self.inner.on_connection_close()
