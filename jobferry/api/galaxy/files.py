"""job_files: a job's runner fetching inputs and posting outputs (galaxy-contract.md §5).

``GET``/``HEAD /api/jobs/{id}/files?job_key=&path=`` serve one file of the
job's directory (``Range`` → 206, unsatisfiable → 416), streamed from the
descriptor the confinement check opened, one chunk at a time.
``POST /api/jobs/{id}/files`` takes ``multipart/form-data`` (part ``file`` or
``__file``; ``path`` and ``job_key`` from the query or the form, the query
winning) or ``application/x-www-form-urlencoded`` (``session_id``/``__file_path``
sources, which this daemon refuses). Only the job's key authorises (§4, §6):
user API keys are ignored here.

A key in the query (Pulsar's form, and the wrapper's) is checked before any
byte of the body is read, and so is a path in the query; the body is then
written to a temp file in the daemon's staging area as it arrives and moved
into place once complete. A key that only comes in the form is checked after
the body: such a body is capped at ``server.form_key_max_kb`` and held in
memory until then, so a client without a valid key never gets a byte stored.
A connection that closes mid-body ends the request at once (Tornado's own
``on_connection_close`` fails the body future) and drops what it had written.
Rules and errors live in ``jobferry.services.job_files``.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import tornado.web

from jobferry import errors
from jobferry.api.base import Services
from jobferry.api.downloads import OpenFileSender
from jobferry.api.galaxy.base import GalaxyMixin
from jobferry.api.uploads import StreamingUpload
from jobferry.services.job_files import (
    MISSING_KEY,
    MISSING_PATH,
    NO_FILE,
    JobAccess,
    Upload,
    check_job_id,
    multipart_kind,
)
from jobferry.staging.forms import FormReceiver

logger = logging.getLogger(__name__)

#: Slack above server.max_upload_mb for the transport's own check, so that the
#: receiver's cap (a JSON 413) is what a client over the limit meets.
BODY_SLACK = 1 << 20
FORM_KINDS = ("multipart/form-data", "application/x-www-form-urlencoded")


@tornado.web.stream_request_body
class JobFilesHandler(StreamingUpload, OpenFileSender, GalaxyMixin, tornado.web.RequestHandler):
    """``/api/jobs/{id}/files``: GET, HEAD and streamed POST, job_key only."""

    staging = "job_files"  # counted in jobferry_staging_bytes_total

    SUPPORTED_METHODS = ("GET", "HEAD", "POST")

    def initialize(self, services: Services) -> None:
        super().initialize(services)
        self.job_files = services.job_files
        self.access: JobAccess | None = None
        #: Where the file part goes once the key was checked, else ``buffered``.
        self.upload: Upload | None = None
        #: The file part of a body whose key only comes in the form, held in memory.
        self.buffered: io.BytesIO | None = None
        self.receiver: FormReceiver | None = None
        self._reserved = 0

    def compute_etag(self) -> str | None:
        return None

    # --- request values --------------------------------------------------------------------

    def query_value(self, name: str) -> str | None:
        """A query parameter decoded exactly once, unstripped, control characters kept
        (NUL must reach the path check); given twice with different values → 400."""
        raw = self.request.query_arguments.get(name)
        if not raw:
            return None
        if any(v != raw[0] for v in raw):
            raise errors.RequestError(f"the query gives {name!r} more than once")
        try:
            return raw[0].decode("utf-8")
        except UnicodeDecodeError:
            raise errors.RequestError(f"the query parameter {name!r} is not UTF-8") from None

    # --- GET / HEAD ------------------------------------------------------------------------

    async def get(self, job_id: str) -> None:
        await self._send_file(job_id, include_body=True)

    async def head(self, job_id: str) -> None:
        await self._send_file(job_id, include_body=False)

    async def _send_file(self, job_id: str, *, include_body: bool) -> None:
        path, key = self.query_value("path"), self.query_value("job_key")
        if not path:
            raise errors.AttributeMissingError(MISSING_PATH)
        if not key:
            raise errors.AttributeMissingError(MISSING_KEY)
        handle, size = await self.core.call(self.job_files.open_for_read, job_id, key, path)
        await self.send_open_file(handle, size, include_body=include_body)

    # --- POST ------------------------------------------------------------------------------

    async def prepare(self) -> None:
        """Everything that can refuse a POST, before a byte of its body is read.

        A key in the query is checked now (and a path in the query too), so an
        unauthorised client never gets a byte stored. A key that only comes in the
        form (Galaxy allows it) cannot be checked before the body is read: such a
        body may be at most ``server.form_key_max_kb`` and is held in memory (within
        a shared budget: 429 beyond it), never written to disk, until the key is
        checked in ``post``.
        """
        if self.request.method != "POST":
            return
        job_id = self.path_args[0]
        check_job_id(job_id)
        key = self.query_value("job_key")
        if key is not None:  # authorise before reading a byte of the body
            self.access = await self.core.call(self.job_files.authorize, job_id, key)
        server = self.core.config.server
        if self.access is not None:
            cap = server.max_upload_mb * 1024 * 1024
            too_large = f"exceeds {cap} bytes (server.max_upload_mb)"
        else:
            cap = server.form_key_max_kb * 1024
            too_large = (
                f"exceeds {cap} bytes, the most accepted before the job_key is checked: "
                "give job_key in the query string (server.form_key_max_kb)"
            )
        length = self.limit_body(cap, too_large, slack=BODY_SLACK)
        content_type = self.request.headers.get("Content-Type", "")
        if multipart_kind(content_type) not in FORM_KINDS:
            raise errors.RequestError(
                "POST job files as multipart/form-data or application/x-www-form-urlencoded."
            )
        if self.access is None:
            self._reserved = self.job_files.buffers.reserve(length if length is not None else cap)
        if self.access is not None and multipart_kind(content_type) == "multipart/form-data":
            path = self.query_value("path")
            self.upload = await self.core.call(self.job_files.begin_upload, self.access, path)
        if self.client_gone():  # it left while the key or the upload was being checked
            self.drop_upload()
            return
        self.buffered = io.BytesIO() if self.upload is None else None
        sink = self.upload or self.buffered
        assert sink is not None
        try:
            self.receiver = self.job_files.body_receiver(content_type, sink, max_body_bytes=cap)
        except errors.JobferryError:
            self.drop_upload()
            raise

    async def post(self, job_id: str) -> None:
        receiver = self.receiver
        if self._finished or receiver is None:
            return
        receiver.finish()
        key = self.query_value("job_key") or receiver.single_field("job_key")
        access = self.access
        if access is None:
            if not key:
                raise errors.AttributeMissingError(MISSING_KEY)
            access = await self.core.call(self.job_files.authorize, job_id, key)
        self.job_files.refuse_form_sources(receiver.fields)
        if not receiver.has_content:
            raise errors.ParameterMissingError(NO_FILE)
        path = self.query_value("path") or receiver.single_field("path")
        if not path:
            raise errors.AttributeMissingError(MISSING_PATH)
        upload, self.upload = self.upload, None  # from here on, finish owns it
        if upload is None:  # held in memory until the form's key was checked
            assert self.buffered is not None
            content = self.buffered.getvalue()
            self._release()
            await self.core.call(self.job_files.store_buffered, access, path, content)
        else:
            await self.core.call(upload.finish, path)
        self.send_json({"message": "ok"})

    def drop_upload(self) -> None:
        """Remove a half-received upload (never one being finished on a worker thread)
        and let go of a body held in memory."""
        if self.upload is not None:
            self.upload.abort()
            self.upload = None
        self._release()

    def _release(self) -> None:
        if self._reserved:
            self.job_files.buffers.release(self._reserved)
            self._reserved = 0
        if self.buffered is not None:
            self.buffered.close()  # frees its buffer (the receiver still refers to it)
            self.buffered = None

    def on_finish(self) -> None:
        self._release()


def files_routes(services: Services) -> list[Any]:
    init = {"services": services}
    return [(r"/api/jobs/([^/]+)/files/?", JobFilesHandler, init)]
