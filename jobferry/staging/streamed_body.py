"""A streamed request body fed to a receiver: what the upload handlers of both faces
(``api.uploads.StreamingUpload``, the browser's script form) do alike.

``StreamedBody`` is a mixin for a ``@tornado.web.stream_request_body`` handler (put it
before the face's base class). Its ``prepare`` sets ``receiver``; ``data_received``
feeds it, and any failure answers (the face's error format) instead of dropping the
connection. Whatever ends the request, what a half-received body left behind goes
first (``drop_upload``, the handler's own): when the answer is sent, when feeding
fails, and when the client goes away mid-body (Tornado's own ``on_connection_close``
also fails the body future, so the handler ends at once instead of holding what it
has until the daemon stops).

It imports nothing of Tornado at run time: it relies only on the handler it is mixed
into, so both faces can use it without importing each other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import tornado.web

    _HandlerBase = tornado.web.RequestHandler
else:
    _HandlerBase = object


class Receiver(Protocol):
    """What a request body is fed to, chunk by chunk, on the event loop."""

    def feed(self, chunk: bytes) -> None: ...


class StreamedBody(_HandlerBase):
    """The body plumbing of a streaming upload handler."""

    receiver: Receiver | None = None

    def drop_upload(self) -> None:
        """Remove what a half-received body left (idempotent)."""

    def data_received(self, chunk: bytes) -> None:
        receiver = self.receiver
        if self._finished or receiver is None:
            return
        try:
            receiver.feed(chunk)
        except Exception as exc:  # any failure answers, never a dropped connection
            self.drop_upload()
            self.receiver = None
            self._handle_request_exception(exc)

    def on_connection_close(self) -> None:
        super().on_connection_close()
        self.drop_upload()
        self.receiver = None

    def finish(self, chunk: str | bytes | dict[str, Any] | None = None) -> Any:
        self.drop_upload()
        return super().finish(chunk)
