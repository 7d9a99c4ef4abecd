"""Streamed request bodies: what every upload handler does the same way.

Handlers that take files (Wooey's submissions and script uploads, Galaxy's
job_files POST) are ``@tornado.web.stream_request_body`` handlers built on
``StreamingUpload``. Their order is always the same: ``prepare`` checks the key
(and everything else that can refuse the request) before a byte of the body
is read, then calls ``limit_body`` (413 on a declared length over the cap, and
the transport's limit raised to it) and sets ``receiver``; ``data_received``
feeds the receiver, and any failure answers with JSON instead of a dropped
connection; ``post`` runs once the body is complete.

Whatever ends the request, what a half-received body left behind goes first
(``drop_upload``, the handler's own): when the answer is sent (a client that
sees the answer never sees a half-kept file), when feeding fails, and when the
client goes away mid-body. That part is ``staging.streamed_body.StreamedBody``,
which the browser's script form shares.
"""

from __future__ import annotations

from jobferry import errors
from jobferry.api.base import ApiMixin
from jobferry.staging.streamed_body import StreamedBody


class StreamingUpload(StreamedBody, ApiMixin):
    """The body plumbing of a streaming upload handler (put it before the face's mixin):
    ``staging.streamed_body.StreamedBody``'s, with JSON errors and ``limit_body``."""

    def limit_body(self, cap: int, too_large: str, *, slack: int = 0) -> int | None:
        """Refuse a declared body over *cap* bytes (413: "the request body (N bytes)
        *too_large*") and let the transport take up to *cap* + *slack*. Returns the
        declared length, if any."""
        length = self.request.headers.get("Content-Length")
        if length is not None:
            if not length.isdigit():
                raise errors.RequestError("invalid Content-Length")
            if int(length) > cap:
                raise errors.PayloadTooLargeError(f"the request body ({length} bytes) {too_large}")
        self.request.connection.set_max_body_size(cap + slack)  # type: ignore[union-attr]
        return int(length) if length is not None else None

    def client_gone(self) -> bool:
        """Whether the client already closed the connection (checked after an await)."""
        stream = getattr(self.request.connection, "stream", None)
        return stream is not None and bool(stream.closed())
