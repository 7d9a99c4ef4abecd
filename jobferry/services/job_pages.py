"""What the browser's job pages read: a keyset-paged job list, a job by its uuid, the
live tail of its logs from a byte offset, and bounded previews of its files.

Face-neutral (records and plain values); ``jobferry.web.jobs`` and ``web.job_page``
render them. The list is ordered by (created_at, id), newest first: a stable order
(a running job does not move between pages) that the ``ix_jobs_created`` and
``ix_jobs_user_created`` indexes walk, so a page costs the same on page 1 and page
1,000 (no OFFSET); a filter on a rare state walks ``ix_jobs_created`` past the other
states' rows. Visibility is ``JobService``'s: a user sees their own jobs, an
admin everyone's; another user's job is "not found".
"""

from __future__ import annotations

import base64
import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import and_, bindparam, or_, select

from jobferry.errors import NotFoundError, ValidationError
from jobferry.services.core import Core, Principal
from jobferry.services.jobs import JobService, JobView
from jobferry.services.states import TERMINAL_VALUES, parse_state
from jobferry.store.models import Base, Job

JOBS = Base.metadata.tables["jobs"]
VERSIONS = Base.metadata.tables["script_versions"]
SCRIPTS = Base.metadata.tables["scripts"]
USERS = Base.metadata.tables["users"]

#: A page's rows by id, built once (building a statement costs more than running it).
_ROWS_SELECT = (
    select(
        JOBS.c.id,
        JOBS.c.name,
        JOBS.c.state,
        JOBS.c.state_reason,
        JOBS.c.exit_code,
        JOBS.c.created_at,
        JOBS.c.destination,
        USERS.c.username,
        SCRIPTS.c.slug,
    )
    .select_from(
        JOBS.join(USERS, USERS.c.id == JOBS.c.user_id)
        .outerjoin(VERSIONS, VERSIONS.c.id == JOBS.c.script_version_id)
        .outerjoin(SCRIPTS, SCRIPTS.c.id == VERSIONS.c.script_id)
    )
    .where(JOBS.c.id.in_(bindparam("ids", expanding=True)))
)

#: Rows on one page of the list.
PAGE_SIZE = 50
#: Bytes of a log shown when the page opens (the live tail appends from there).
TAIL_BYTES = 64 * 1024
#: Most bytes one live-tail read returns.
CHUNK_BYTES = 64 * 1024
#: Preview bounds: bytes read of a text or CSV file, rows and columns of a CSV table.
PREVIEW_BYTES = 64 * 1024
PREVIEW_ROWS = 100
PREVIEW_COLUMNS = 30
#: Image types shown inline, recognised by their first bytes (never SVG: it can script).
IMAGE_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
IMAGE_SUFFIXES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
IMAGE_SUFFIXES[".gif"] = "image/gif"
TEXT_SUFFIXES = frozenset({".txt", ".log", ".out", ".json", ".md", ".tsv", ".fa", ".fasta"})
CSV_SUFFIXES = frozenset({".csv"})


@dataclass(frozen=True)
class ListFilter:
    """The list's filters, already checked (``parse_filter``)."""

    states: tuple[str, ...] = ()
    script: str | None = None
    destination: str | None = None
    #: Jobs created on or after / before these (UTC) instants.
    created_from: datetime | None = None
    created_until: datetime | None = None
    #: An admin's choice of whose jobs (a username); ignored for others.
    username: str | None = None


@dataclass(frozen=True)
class JobRow:
    """One row of the job list."""

    id: str
    name: str
    state: str
    state_reason: str | None
    exit_code: int | None
    created_at: datetime
    username: str
    script: str | None
    destination: str

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_VALUES


@dataclass(frozen=True)
class JobPage:
    rows: list[JobRow]
    #: Cursor of the next (older) page, and of the previous (newer) one; None: none.
    older: str | None
    newer: str | None


@dataclass(frozen=True)
class LogChunk:
    """Bytes of a log from *start* to *end*, decoded (a split UTF-8 character waits)."""

    text: str
    start: int
    end: int


@dataclass(frozen=True)
class Preview:
    """A file's inline preview: ``kind`` is text, csv or image (or none)."""

    kind: str
    text: str = ""
    rows: list[list[str]] = field(default_factory=list)
    truncated: bool = False
    content_type: str = ""


def parse_date(value: str, what: str) -> datetime:
    """A day (``YYYY-MM-DD``, or an ISO instant) as an aware UTC datetime."""
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValidationError(errors={what: ["Enter a date as YYYY-MM-DD."]}) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def parse_filter(
    states: Sequence[str] = (),
    script: str = "",
    destination: str = "",
    date_from: str = "",
    date_until: str = "",
    username: str = "",
) -> ListFilter:
    """The list's filters from a query string's values (ValidationError naming the field)."""
    parsed = []
    for name in states:
        if name.strip():
            try:
                parsed.append(parse_state(name))
            except ValidationError as exc:
                raise ValidationError(errors={"state": [exc.message]}) from None
    start = parse_date(date_from, "from") if date_from.strip() else None
    until = parse_date(date_until, "until") + timedelta(days=1) if date_until.strip() else None
    return ListFilter(
        states=tuple(sorted(set(parsed))),
        script=script.strip()[:100] or None,
        destination=destination.strip()[:64] or None,
        created_from=start,
        created_until=until,
        username=username.strip()[:150] or None,
    )


def encode_cursor(created_at: datetime, job_id: str) -> str:
    raw = f"{created_at.isoformat()}|{job_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, job_id = raw.split("|", 1)
        moment = datetime.fromisoformat(stamp)
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)), job_id[:64]
    except (ValueError, UnicodeDecodeError):
        raise ValidationError(errors={"cursor": ["This page link is damaged."]}) from None


def utf8_boundary(data: bytes) -> int:
    """The length of *data*'s longest prefix that does not end inside a UTF-8 character."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:  # a continuation byte: look further back
            continue
        if byte & 0x80 == 0:
            return len(data)
        needed = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4
        return len(data) if back >= needed else len(data) - back
    return len(data)


class JobPageService:
    """Reads of the browser's job list and job pages."""

    def __init__(self, core: Core, jobs: JobService) -> None:
        self.core = core
        self.jobs = jobs

    # --- the list ---------------------------------------------------------------------

    def list_page(
        self,
        principal: Principal,
        query: ListFilter,
        *,
        older: str | None = None,
        newer: str | None = None,
        limit: int = PAGE_SIZE,
    ) -> JobPage:
        """One page of the jobs *principal* may see, newest first, after cursor *older*
        (the next page) or before *newer* (the previous one)."""
        with self.core.sessions.read() as session:  # read-only: no ORM session, no lock
            page = select(JOBS.c.id)  # the rows (and cursors) come from _rows
            if not principal.is_admin:
                page = page.where(JOBS.c.user_id == principal.user_id)
            elif query.username:
                user_id = session.execute(
                    select(USERS.c.id).where(USERS.c.username == query.username)
                ).scalar()
                if user_id is None:
                    return JobPage([], None, None)
                page = page.where(JOBS.c.user_id == user_id)
            if query.states:
                page = page.where(JOBS.c.state.in_(query.states))
            if query.script:
                versions = select(VERSIONS.c.id).join(SCRIPTS, SCRIPTS.c.id == VERSIONS.c.script_id)
                versions = versions.where(SCRIPTS.c.slug == query.script)
                page = page.where(JOBS.c.script_version_id.in_(versions.scalar_subquery()))
            if query.destination:
                page = page.where(JOBS.c.destination == query.destination)
            if query.created_from:
                page = page.where(JOBS.c.created_at >= query.created_from)
            if query.created_until:
                page = page.where(JOBS.c.created_at < query.created_until)
            backwards = newer is not None and older is None
            cursor = newer if backwards else older
            if cursor:
                stamp, job_id = decode_cursor(cursor)
                # (created_at, id) beyond the cursor, written so that both engines walk
                # the created_at index from the cursor on (a bare OR would not).
                if backwards:
                    after = and_(
                        JOBS.c.created_at >= stamp,
                        or_(JOBS.c.created_at > stamp, JOBS.c.id > job_id),
                    )
                else:
                    after = and_(
                        JOBS.c.created_at <= stamp,
                        or_(JOBS.c.created_at < stamp, JOBS.c.id < job_id),
                    )
                page = page.where(after)
            if backwards:
                page = page.order_by(JOBS.c.created_at.asc(), JOBS.c.id.asc())
            else:
                page = page.order_by(JOBS.c.created_at.desc(), JOBS.c.id.desc())
            ids = list(session.execute(page.limit(limit + 1)).scalars())
            more = len(ids) > limit
            ids = ids[:limit]
            if backwards:
                ids.reverse()
            rows = self._rows(session, ids)
        if not rows:
            return JobPage([], None, None)
        first, last = rows[0], rows[-1]
        has_older, has_newer = (True, more) if backwards else (more, cursor is not None)
        return JobPage(
            rows,
            older=encode_cursor(last.created_at, last.id) if has_older else None,
            newer=encode_cursor(first.created_at, first.id) if has_newer else None,
        )

    def _rows(self, session: Any, ids: Sequence[str]) -> list[JobRow]:
        if not ids:
            return []
        stmt = _ROWS_SELECT
        found = {r.id: r for r in session.execute(stmt, {"ids": list(ids)}).all()}
        return [
            JobRow(
                id=r.id,
                name=r.name,
                state=r.state,
                state_reason=r.state_reason,
                exit_code=r.exit_code,
                created_at=r.created_at,
                username=r.username,
                script=r.slug,
                destination=r.destination,
            )
            for r in (found[i] for i in ids if i in found)
        ]

    def rows(self, principal: Principal, job_ids: Sequence[str]) -> list[JobRow]:
        """The list rows of these jobs that *principal* may see (the list's live refresh)."""
        with self.core.sessions.read() as session:
            rows = self._rows(session, list(job_ids)[:PAGE_SIZE])
        if principal.is_admin:
            return rows
        return [r for r in rows if r.username == principal.username]

    # --- one job ----------------------------------------------------------------------

    def by_uuid(self, principal: Principal, job_uuid: str) -> JobView:
        """The job with this uuid (Wooey's permalink), if *principal* may see it."""
        if not job_uuid or len(job_uuid) > 36:
            raise NotFoundError("no such job")
        with self.core.sessions.begin() as session:
            job_id = session.execute(select(Job.id).where(Job.uuid == job_uuid)).scalar()
        if job_id is None:
            raise NotFoundError("no such job")
        return self.jobs.get(principal, job_id)

    def log_path(self, view: JobView, stream: str) -> Path | None:
        """Where the job's *stream* (stdout or stderr) is written (None: files expired)."""
        if stream not in ("stdout", "stderr") or view.files_expired:
            return None
        self.core.require_files_here(view.job.home_node)
        return Path(view.job.job_dir) / stream

    def tail(self, view: JobView, stream: str, limit: int = TAIL_BYTES) -> LogChunk:
        """The last *limit* bytes of a log (starting on a line if one starts within)."""
        path = self.log_path(view, stream)
        if path is None:
            return LogChunk("", 0, 0)
        try:
            with open(path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                start = max(0, size - limit)
                handle.seek(start)
                data = handle.read(size - start)
        except FileNotFoundError:
            return LogChunk("", 0, 0)
        if start:
            newline = data.find(b"\n")
            if 0 <= newline < len(data) - 1:
                data, start = data[newline + 1 :], start + newline + 1
        end = start + utf8_boundary(data)
        return LogChunk(data[: end - start].decode("utf-8", "replace"), start, end)


def read_from(
    path: Path | None, offset: int, limit: int = CHUNK_BYTES, final: bool = False
) -> LogChunk:
    """The bytes of *path* from *offset* (at most *limit*); a file that shrank (a log
    cap rewrote it) restarts at 0. Cheap enough for the event loop (one stat and a
    page-cache read); *final*: the writer is done, a split character is decoded as is."""
    if path is None:
        return LogChunk("", offset, offset)
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size < offset:
                offset = 0
            if size == offset:
                return LogChunk("", offset, offset)
            handle.seek(offset)
            data = handle.read(min(limit, size - offset))
    except FileNotFoundError:
        return LogChunk("", offset, offset)
    keep = len(data) if final else utf8_boundary(data)
    return LogChunk(data[:keep].decode("utf-8", "replace"), offset, offset + keep)


def image_type(path: Path, name: str) -> str | None:
    """The image type of a file whose name and first bytes agree on a known type."""
    expected = IMAGE_SUFFIXES.get(Path(name).suffix.lower())
    if expected is None:
        return None
    with open(path, "rb") as handle:
        head = handle.read(16)
    for magic, kind in IMAGE_MAGIC:
        if head.startswith(magic):
            return kind if kind == expected else None
    return None


def preview(path: Path, name: str) -> Preview:
    """A bounded preview of a job file: text, a CSV table, an image, or none."""
    suffix = Path(name).suffix.lower()
    kind = image_type(path, name)
    if kind is not None:
        return Preview("image", content_type=kind)
    if suffix not in TEXT_SUFFIXES | CSV_SUFFIXES:
        return Preview("none")
    with open(path, "rb") as handle:
        data = handle.read(PREVIEW_BYTES + 1)
    truncated = len(data) > PREVIEW_BYTES
    data = data[:PREVIEW_BYTES]
    if b"\0" in data:
        return Preview("none")
    text = data[: utf8_boundary(data)].decode("utf-8", "replace")
    if suffix not in CSV_SUFFIXES:
        return Preview("text", text=text, truncated=truncated)
    if truncated and "\n" in text:
        text = text[: text.rindex("\n")]  # no half row
    rows: list[list[str]] = []
    try:
        for row in csv.reader(io.StringIO(text)):
            if len(rows) == PREVIEW_ROWS:
                truncated = True
                break
            truncated = truncated or len(row) > PREVIEW_COLUMNS
            rows.append(row[:PREVIEW_COLUMNS])
    except csv.Error:
        return Preview("text", text=text, truncated=truncated)
    return Preview("csv", rows=rows, truncated=truncated)
