"""The body bytes a handler wrote, face-neutral: ``CountsSentBytes``.

The access log line and the request metrics (``api.access_log``) read a handler's
``bytes_written``; both faces' handler bases (``api/base.py``'s ``ApiMixin``,
``web/base.py``'s ``WebHandler``) count it through this mixin. It lives here, below
both faces, because ``web`` may not import ``api``; it imports nothing of Tornado at
run time (it relies only on the handler it is mixed into).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import tornado.web

    _HandlerBase = tornado.web.RequestHandler
else:
    _HandlerBase = object


class CountsSentBytes(_HandlerBase):
    """Counts the body bytes written (``bytes_written``; reset by ``clear``)."""

    #: Body bytes written for the answer (the access log's ``bytes``).
    bytes_written = 0

    def clear(self) -> None:
        super().clear()
        self.bytes_written = 0

    def write(self, chunk: str | bytes | dict[str, Any]) -> None:
        super().write(chunk)
        if isinstance(chunk, bytes):
            self.bytes_written += len(chunk)
        elif isinstance(chunk, str):  # (a dict is rare here: its size is not counted)
            self.bytes_written += len(chunk) if chunk.isascii() else len(chunk.encode())
