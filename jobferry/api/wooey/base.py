"""Handler bases of the Wooey face: its error JSON, and its streamed form bodies.

Errors answer in Wooey's shape, ``{"valid": false, "errors": {...}}`` (plus the
keys every face's errors carry). Bodies that may hold files (submissions,
script uploads) are streamed to disk as they arrive, after the key was checked.
"""

from __future__ import annotations

from typing import Any

import tornado.web

from jobferry import errors
from jobferry.api.base import ApiMixin
from jobferry.api.uploads import StreamingUpload
from jobferry.staging.forms import FormReceiver

MANAGE_SCRIPTS = "You do not have permission to manage scripts."


class WooeyMixin(ApiMixin):
    """Errors in Wooey's shape: ``{"valid": false, "errors": {...}}``."""

    def error_body(self, exc: BaseException | None, status: int, message: str) -> dict[str, Any]:
        body = super().error_body(exc, status, message)
        if isinstance(exc, errors.AuthenticationError):
            message = errors.AuthenticationError().message  # Wooey's one wording
            errs: dict[str, Any] = {"__all__": [message]}
        elif isinstance(exc, errors.ValidationError):
            errs = exc.errors
        else:
            field = "__all__"
            if isinstance(exc, errors.JobferryError):
                field = str(exc.details.get("field", "__all__"))
            errs = {field: [message]}
        return {"valid": False, "errors": errs, **body}


class WooeyHandler(WooeyMixin, tornado.web.RequestHandler):
    """Base of the Wooey face's handlers."""


@tornado.web.stream_request_body
class StreamingFormHandler(StreamingUpload, WooeyHandler):
    """Authenticates before reading the body, then streams it through a FormReceiver."""

    receiver: FormReceiver | None = None
    admin_only = False

    async def prepare(self) -> None:
        principal = await self.authenticate()
        if self.admin_only and not principal.is_admin:
            raise errors.PermissionDeniedError(MANAGE_SCRIPTS)
        # The disk guard, before a byte of the body is taken (507 while the disk is low).
        self.services.disk.require("uploads")
        cap = self.core.config.server.max_upload_mb * 1024 * 1024
        self.limit_body(cap, "exceeds server.max_upload_mb")
        self.receiver = FormReceiver(
            self.request.headers.get("Content-Type", ""),
            self.core.tmp_path,
            max_body_bytes=cap,
            max_field_bytes=self.core.config.server.max_form_kb * 1024,
        )

    def drop_upload(self) -> None:
        if self.receiver is not None:
            self.receiver.discard()

    def complete_body(self) -> FormReceiver | None:
        """The fully received body, or None if a response was already sent."""
        if self._finished or self.receiver is None:
            return None
        self.receiver.finish()
        return self.receiver
