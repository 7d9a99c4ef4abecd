"""job_files: a job's own runner (or a Pulsar-style stager) reading and writing its files.

Authorised only by the job's ``job_key`` (never a user API key), in the order
of galaxy-contract.md §5.1: the job id's format, the key (compared in constant
time before the job is looked up, so a wrong key never tells whether a job
exists), the job, then the state gate: files are reachable while the job is
active (new, queued, running, deleting) and for ``jobs.files_grace_s`` seconds
after it finished, so that late output uploads land.

The root is the job's own directory (``inputs/``, ``work/``, ``stdout``,
``stderr``, ...): reads anywhere inside it, writes only inside ``work/`` (the
job's working directory, where outputs are collected from when it ends).
Paths are absolute (Pulsar's form, inside the job directory) or relative to
the job directory; confinement is ``jobferry.staging.confined``'s.

Uploads are written to the daemon's staging area (``<data_dir>/tmp/uploads``,
``jobferry.staging.uploads``) and renamed into the job's directory when
complete: a partial upload never sits where outputs are collected, and start-up
removes what a crash left.

Every method here blocks (SQL, file system): handlers run them through
``Core.call``. The exceptions are fed request body chunks on the event loop:
``body_receiver`` (the one ``jobferry.staging.forms.FormReceiver``, configured
for job_files) and the ``Upload`` that ``begin_upload`` hands the handler, which
writes file data straight to the job's confined writer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Literal, overload

from python_multipart.multipart import parse_options_header
from sqlalchemy import select

from jobferry.errors import (
    AttributeMissingError,
    MalformedIdError,
    NotAllowedByConfigError,
    NotFoundError,
    PermissionDeniedError,
    RequestError,
    TooManyRequestsError,
)
from jobferry.services.core import Core
from jobferry.services.disk import DiskGuard
from jobferry.services.retention import require_files
from jobferry.staging import confined
from jobferry.staging.confined import ConfinedWriter
from jobferry.staging.forms import ContentSink, FormReceiver
from jobferry.staging.paths import file_digest, make_job_dir
from jobferry.staging.uploads import upload_area
from jobferry.store.models import Job, JobState
from jobferry.store.records import replace_output_file

#: Job ids are opaque lower-case hex (``new_id``: 16 characters; the column holds 32).
JOB_ID = re.compile(r"[0-9a-f]{16,32}")
#: The one directory of a job's directory that job_files may write to.
WRITE_AREA = "work"
#: Files at the top of a job's directory that its wrapper posts back when it ran
#: without the daemon's disk (``staging: remote``).
WRAPPER_FILES = frozenset({"stdout", "stderr", "result"})
#: States in which a job's files are open regardless of time.
OPEN_STATES = frozenset(
    {JobState.NEW.value, JobState.QUEUED.value, JobState.RUNNING.value, JobState.DELETING.value}
)
#: States of a job that has not started: uploads into it wait for disk space.
NOT_STARTED = frozenset({JobState.NEW.value, JobState.QUEUED.value})
#: Names of the multipart parts that carry the content (Galaxy's precedence order).
FILE_FIELDS = ("file", "__file")
#: How many bodies of ``server.form_key_max_kb`` may be held in memory at once.
BUDGET_BODIES = 32
#: TUS session ids (galaxy-contract.md §5.5, §6.11).
SESSION_ID = re.compile(r"[A-Za-z0-9_-]+")

INVALID_KEY = "Invalid job_key supplied."
COMPLETED = "Attempting to read or modify the files of a job that has already completed."
MISSING_KEY = "Job files action requires a valid 'job_key'."
MISSING_PATH = confined.MISSING_PATH
NO_FILE = "No file uploaded."
FILE_PATH_REFUSED = "The server is not configured to accept __file_path uploads."


@dataclass(frozen=True)
class JobAccess:
    """A job whose key was checked and whose files are open: its id and root."""

    job_id: str
    root: Path
    #: The files at the top of the job's directory its wrapper may post (only for
    #: ``staging: remote`` destinations, whose wrapper runs without this disk).
    wrapper_files: frozenset[str] = frozenset()
    #: The job's state when its key was checked.
    state: str = ""


def check_job_id(job_id: str) -> None:
    """Raise MalformedIdError unless *job_id* has the shape of a job id."""
    if not JOB_ID.fullmatch(job_id):
        raise MalformedIdError("Malformed job id.")


class BodyBudget:
    """Bytes of request bodies held in memory before their key could be checked.

    Each such body is small (``server.form_key_max_kb``), but a thousand at once
    are not: past the budget (``BUDGET_BODIES`` bodies of the largest size) a new
    one is refused with 429 and Retry-After, before a byte of it is read. Used on
    the event loop only, so without a lock.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def reserve(self, size: int) -> int:
        """Take *size* bytes of the budget (returned, to release) or raise TooManyRequestsError."""
        if self.used + size > self.limit:
            raise TooManyRequestsError(
                "too many uploads are waiting for their job_key to be checked: try again, "
                "or give job_key in the query string",
                retry_after=1,
            )
        self.used += size
        return size

    def release(self, size: int) -> None:
        self.used -= size


class JobFilesService:
    def __init__(self, core: Core, disk: DiskGuard | None = None) -> None:
        self.core = core
        self.disk = disk or DiskGuard(core)
        self.buffers = BodyBudget(BUDGET_BODIES * core.config.server.form_key_max_kb * 1024)

    # --- authorisation ---------------------------------------------------------------------

    def authorize(self, job_id: str, job_key: str | None) -> JobAccess:
        """The access to one job's files, or an error in the order of §5.1.

        Raises MalformedIdError (400), RequestError (400, no key),
        PermissionDeniedError (403: wrong key, or the job ended more than
        ``jobs.files_grace_s`` ago), NotFoundError (404, valid key, no job),
        GoneError (410: retention deleted the job's files).
        """
        check_job_id(job_id)
        if not job_key:
            raise AttributeMissingError(MISSING_KEY)
        # compare_digest refuses non-ASCII str; such a key can never match a hex one.
        if not job_key.isascii() or not self.core.check_job_key(job_id, job_key):
            raise PermissionDeniedError(INVALID_KEY)
        return self._open_job(job_id)

    @overload
    def _open_job(self, job_id: str) -> JobAccess: ...

    @overload
    def _open_job(self, job_id: str, *, with_state: Literal[True]) -> str: ...

    def _open_job(self, job_id: str, *, with_state: bool = False) -> JobAccess | str:
        """The job, if its files are still open (the state gate); or just its state."""
        with self.core.sessions.begin() as session:
            row = session.execute(
                select(
                    Job.state,
                    Job.finished_at,
                    Job.updated_at,
                    Job.job_dir,
                    Job.destination,
                    Job.home_node,
                    Job.files_expired_at,
                ).where(Job.id == job_id)
            ).first()
        if row is None:
            raise NotFoundError("Job not found.")
        state, finished_at, updated_at, job_dir, destination, home_node, expired_at = row
        require_files(job_id, expired_at)  # retention deleted them: 410
        if state not in OPEN_STATES:
            ended = finished_at or updated_at
            grace = timedelta(seconds=self.core.config.jobs.files_grace_s)
            if ended is None or datetime.now(UTC) >= ended + grace:
                raise PermissionDeniedError(COMPLETED)
        if with_state:
            return str(state)
        dest = self.core.config.destinations.get(destination)
        wrapper = WRAPPER_FILES if dest is not None and dest.staging == "remote" else frozenset()
        here = self.core.config.node.shared_filesystem or home_node in (None, self.core.node_name)
        if state in (JobState.NEW.value, JobState.QUEUED.value) and here:
            make_job_dir(Path(job_dir))  # a submission without uploads did not make it
        return JobAccess(job_id, Path(job_dir), wrapper, str(state))

    # --- reading ---------------------------------------------------------------------------

    def open_for_read(self, job_id: str, job_key: str | None, path: str) -> tuple[IO[bytes], int]:
        """Authorise, then open one regular file of the job; return (file, size).

        Raises as ``authorize``, then PathRejectedError (403, outside the job's
        directory, whether or not it exists), NotFoundError (404, missing inside),
        RequestError (400, not a regular file).
        """
        if not path:
            raise AttributeMissingError(MISSING_PATH)
        access = self.authorize(job_id, job_key)
        return confined.open_for_read(access.root, path)

    # --- writing ---------------------------------------------------------------------------

    def begin_upload(self, access: JobAccess, path: str | None) -> Upload:
        """An upload for an authorised job, its temp file in the daemon's staging area
        (swept at start-up: a crash mid-upload leaves nothing in the job's directory).
        With *path* the target is checked now (403 before any byte is read); without,
        at ``Upload.finish``.

        While the disk is low (the disk guard), uploads into a job that has not started
        yet (input staging) are refused with 507; a running job's, or a just-ended
        one's (outputs, logs, its result), are taken: running jobs continue."""
        if access.state in NOT_STARTED:
            self.disk.require("uploads into a job that has not started")
        writer = ConfinedWriter(
            access.root,
            path or None,
            area=WRITE_AREA,
            top_level_files=access.wrapper_files,
            staging_dir=upload_area(self.core.tmp_path),
        )
        return Upload(self, access, writer)

    def store_buffered(self, access: JobAccess, path: str, data: bytes) -> int:
        """Store an upload that was held in memory until its form's key was checked."""
        upload = self.begin_upload(access, path)
        try:
            upload.write(data)
        except BaseException:
            upload.abort()
            raise
        return upload.finish(None)

    def body_receiver(
        self, content_type: str, content: ContentSink, *, max_body_bytes: int
    ) -> FormReceiver:
        """The receiver of one POST body: its file part (``file``, or ``__file``) goes to
        *content* as it arrives, other file parts are dropped, the fields (each and all
        together capped at ``server.max_form_kb``) are kept."""
        max_fields = self.core.config.server.max_form_kb * 1024
        return FormReceiver(
            content_type,
            max_body_bytes=max_body_bytes,
            max_field_bytes=max_fields,
            max_fields_bytes=max_fields,
            content=content,
            content_fields=FILE_FIELDS,
        )

    def _commit(self, access: JobAccess, writer: ConfinedWriter, path: str | None) -> int:
        """Re-check the state gate (the upload may have taken long), then put the
        upload in place; return its size. The writer's temp file is gone afterwards."""
        try:
            state = self._open_job(access.job_id, with_state=True)
        except BaseException:
            writer.abort()
            raise
        size = writer.commit(path) if writer.staged else writer.commit()
        if state not in OPEN_STATES:
            # The job already ended (its outputs were collected): a late upload within
            # the grace period becomes an output of its own.
            self._register_late_output(access, writer.parts)
        return size

    def _register_late_output(self, access: JobAccess, parts: list[str]) -> None:
        name = "/".join(parts[1:])  # parts[0] is the write area, "work"
        size, sha256 = file_digest(access.root.joinpath(*parts))
        with self.core.sessions.begin() as session:
            replace_output_file(session, access.job_id, name, size, sha256)

    def refuse_form_sources(self, fields: dict[str, list[str]]) -> None:
        """``__file_path`` (nginx upload store) and ``session_id`` (TUS) sources.

        This daemon has neither an nginx upload store nor a TUS endpoint: a
        ``__file_path`` is refused (and never opened), a ``session_id`` names no
        upload. Raises PermissionDeniedError / RequestError when either is given.
        """
        if fields.get("__file_path"):
            raise NotAllowedByConfigError(FILE_PATH_REFUSED)
        session_ids = fields.get("session_id")
        if session_ids:
            if not SESSION_ID.fullmatch(session_ids[-1]):
                raise RequestError("Invalid session id format.")
            raise RequestError("No upload found for session id.")


class Upload:
    """One job_files upload as its body arrives, handed to the handler by ``begin_upload``.

    The handler writes the file part's bytes here as they arrive (``write``, on
    the event loop), then either ``finish``es it (blocking: through
    ``Core.call``) or ``abort``s it; it never sees the job's directory, the
    writer or the rules. Not thread-safe: a handler gives up its upload before
    it hands ``finish`` to a worker thread.
    """

    def __init__(self, service: JobFilesService, access: JobAccess, writer: ConfinedWriter) -> None:
        self._service = service
        self._access = access
        self._writer = writer

    def write(self, chunk: bytes) -> None:
        self._writer.write(chunk)

    def finish(self, path: str | None) -> int:
        """Re-check that the job's files are open, then put the upload in place (at
        *path*, if none was given when it began); return its size. A late upload (the
        job ended within ``jobs.files_grace_s``) is recorded as an output. Either way
        the temp file is gone afterwards."""
        return self._service._commit(self._access, self._writer, path)

    def abort(self) -> None:
        """Drop the upload (idempotent)."""
        self._writer.abort()


def multipart_kind(content_type: str) -> str:
    """The lower-case media type of a Content-Type header (no parameters)."""
    mime, _ = parse_options_header(content_type or "")
    return mime.decode("latin-1").lower()
