"""A job's page (``/ui/jobs/<id>``), its permalink by uuid, its live log stream (SSE)
and its files (downloads as attachments; images inline only when previewed).

- The page shows the state (reason, exit code), the tail of stdout/stderr, the
  metrics, the files with previews (``JobPageService``: text, CSV as a table,
  known image types), the command, Cancel and Rerun. The permalink
  ``/ui/jobs/uuid/<uuid>`` is the same page read-only, for the same people
  (owner or admin; others get a 404).
- ``/ui/jobs/<id>/events`` is Server-Sent Events, authenticated by the session:
  the log bytes appended since the page's offsets (``?stdout=&stderr=``, or the
  ``Last-Event-ID`` a reconnecting EventSource sends), the state when it
  changes, a heartbeat comment, and ``end`` when the job ends. It runs on the
  event loop (a stat per stream every ``TICK_S``; the store read once a second
  or when this daemon records the job's change), so a stream costs no thread.
  Streams are bounded per user and in all, and each lasts at most
  ``MAX_STREAM_S`` (EventSource reconnects from its last id).
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import time
from typing import Any, ClassVar
from urllib.parse import quote

import tornado.iostream
import tornado.web

from jobferry import errors
from jobferry.services.core import Principal
from jobferry.services.job_pages import LogChunk, Preview, image_type, preview, read_from
from jobferry.services.jobs import JobView
from jobferry.services.states import TERMINAL_VALUES
from jobferry.web.base import UI, WebHandler, signed_in
from jobferry.web.jobs import (
    CancelHandler,
    JobRowsHandler,
    JobsHandler,
    rerun_url,
    state_badge,
    state_label,
)

logger = logging.getLogger(__name__)

#: Output files previewed on a job's page, at most.
MAX_PREVIEWS = 6
#: How often a stream looks for new log bytes (a stat), and reads the job's state.
TICK_S = 0.25
STATE_EVERY_S = 1.0
HEARTBEAT_S = 15.0
#: A stream's longest life; the browser reconnects from its last event id.
MAX_STREAM_S = 3600.0
#: Concurrent streams per user and in all (one per open job page).
MAX_STREAMS_PER_USER = 8
MAX_STREAMS = 256
STREAMS = ("stdout", "stderr")


def _offsets(raw: str | None) -> dict[str, int]:
    parts = (raw or "").split(":")
    found = {}
    for stream, value in zip(STREAMS, parts, strict=False):
        found[stream] = int(value) if value.isdigit() and len(value) < 16 else 0
    return {s: found.get(s, 0) for s in STREAMS}


def _size(value: int) -> str:
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{value} B"


class JobPageHandler(WebHandler):
    """``GET /ui/jobs/<id>``: one job, for its owner or an admin (others: 404)."""

    read_only = False

    async def find(self, key: str) -> JobView:
        view: JobView = await self.call(self.services.jobs.get, self.principal, key)
        return view

    @signed_in
    async def get(self, key: str) -> None:
        view = await self.find(key)
        pages = self.services.job_pages
        logs_note = ""
        try:
            tails = {s: await self.call(pages.tail, view, s) for s in STREAMS}
        except (errors.ElsewhereError, errors.NodeDownError) as exc:  # on another node's disk
            tails = {s: LogChunk("", 0, 0) for s in STREAMS}
            logs_note = exc.message
        job = view.job
        previews: dict[str, Preview] = {}
        if view.is_terminal and not view.files_expired:
            for job_file in [f for f in view.files if f.kind == "output"][:MAX_PREVIEWS]:
                previews[job_file.id] = await self.call(self._preview, job.id, job_file.id)
        cpu = None
        if job.cpu_user_s is not None or job.cpu_sys_s is not None:
            cpu = (job.cpu_user_s or 0.0) + (job.cpu_sys_s or 0.0)
        self.render_page(
            "job.html",
            title=f"Job {job.name}",
            nav="jobs",
            css=("jobs.css",),
            scripts=("job.js",),
            view=view,
            job=job,
            label=state_label(job.state, job.exit_code, job.state_reason),
            badge=state_badge(job.state),
            terminal=view.is_terminal,
            tails=tails,
            previews=previews,
            cpu_s=cpu,
            command=shlex.join(str(a) for a in job.argv or ()),
            rerun=rerun_url(view.script_slug, job.id),
            read_only=self.read_only,
            logs_note=logs_note,
            size=_size,
            permalink=f"{UI}/jobs/uuid/{job.uuid}",
        )

    def _preview(self, job_id: str, file_id: str) -> Preview:
        assert self.principal is not None
        try:
            path, job_file = self.services.jobs.output_path(self.principal, job_id, file_id)
            return preview(path, job_file.name)
        except (errors.NotFoundError, errors.GoneError, OSError):
            return Preview("none")
        except (errors.ElsewhereError, errors.NodeDownError):  # on another node's disk
            return Preview("none")


class PermalinkHandler(JobPageHandler):
    """``GET /ui/jobs/uuid/<uuid>``: Wooey's permalink, the job page read-only."""

    read_only = True

    async def find(self, key: str) -> JobView:
        view: JobView = await self.call(self.services.job_pages.by_uuid, self.principal, key)
        return view


class JobFileHandler(WebHandler, tornado.web.StaticFileHandler):
    """``GET /ui/jobs/<id>/files/<file>``: a job file as an attachment (Range, ETag from
    its checksum); ``.../view``: a known image type inline (the previews' ``<img>``)."""

    def initialize(self, services: Any) -> None:  # type: ignore[override]
        WebHandler.initialize(self, services)
        tornado.web.StaticFileHandler.initialize(self, path=os.sep)
        self.sha256 = ""
        self.content_type = "application/octet-stream"

    async def get(self, *args: str, include_body: bool = True) -> None:  # type: ignore[override]
        if self.principal is None:  # as @signed_in (whose wrapper hides this signature)
            self.redirect(self.sign_in_url())
            return
        job_id, file_id, view = args
        path, job_file = await self.call(
            self.services.jobs.output_path, self.principal, job_id, file_id
        )
        if view:
            kind = await self.call(image_type, path, job_file.name)
            if kind is None:
                raise errors.NotFoundError("this file has no inline view")
            self.content_type = kind
            self.set_header("Content-Disposition", "inline")
        else:
            name = quote(os.path.basename(job_file.name), safe="")
            self.set_header("Content-Disposition", f"attachment; filename*=UTF-8''{name}")
        self.sha256 = job_file.sha256
        self.root = str(path.parent)
        self.set_header("Cache-Control", "private, no-cache")
        await tornado.web.StaticFileHandler.get(self, path.name, include_body=include_body)

    async def head(self, *args: str) -> None:
        await self.get(*args, include_body=False)

    def compute_etag(self) -> str | None:
        return f'"{self.sha256}"' if self.sha256 else None

    def get_content_type(self) -> str:
        return self.content_type

    @classmethod
    def get_content_version(cls, abspath: str) -> str:
        return ""


class JobEventsHandler(WebHandler):
    """``GET /ui/jobs/<id>/events``: the live tail and state of a job (see the module)."""

    open_streams: ClassVar[dict[str, int]] = {}
    closed = False

    def on_connection_close(self) -> None:
        self.closed = True

    def _claim(self, principal: Principal) -> None:
        counts = JobEventsHandler.open_streams
        if sum(counts.values()) >= MAX_STREAMS or counts.get(principal.user_id, 0) >= (
            MAX_STREAMS_PER_USER
        ):
            raise errors.TooManyRequestsError("Too many live job pages open.", retry_after=5)
        counts[principal.user_id] = counts.get(principal.user_id, 0) + 1

    def _release(self, principal: Principal) -> None:
        counts = JobEventsHandler.open_streams
        counts[principal.user_id] -= 1
        if counts[principal.user_id] <= 0:
            del counts[principal.user_id]

    def event(self, kind: str, data: dict[str, Any], event_id: str | None = None) -> None:
        head = f"id: {event_id}\n" if event_id is not None else ""
        self.write(f"{head}event: {kind}\ndata: {json.dumps(data)}\n\n")

    @signed_in
    async def get(self, job_id: str) -> None:
        principal = self.principal
        assert principal is not None
        view: JobView = await self.call(self.services.jobs.get, principal, job_id)
        pages = self.services.job_pages
        paths = {s: await self.call(pages.log_path, view, s) for s in STREAMS}
        resumed = self.request.headers.get("Last-Event-ID")
        if resumed:
            offsets = _offsets(resumed)
        else:
            offsets = _offsets(":".join(self.get_query_argument(s, "0") for s in STREAMS))
        self._claim(principal)
        try:
            await self._stream(principal, view, paths, offsets)
        finally:
            self._release(principal)

    async def _stream(
        self, principal: Principal, view: JobView, paths: dict[str, Any], offsets: dict[str, int]
    ) -> None:
        job_id = view.job.id
        self.set_header("Content-Type", "text/event-stream; charset=UTF-8")
        self.set_header("X-Accel-Buffering", "no")
        self.write("retry: 2000\n\n")
        state = (view.job.state, view.job.exit_code, view.job.state_reason)
        self._state_event(*state)
        started = last_state = last_beat = time.monotonic()
        while not self.closed:
            ended = state[0] in TERMINAL_VALUES
            for stream in STREAMS:
                while True:  # all that is there (bounded reads), every byte once the job ended
                    chunk: LogChunk = read_from(paths[stream], offsets[stream], final=ended)
                    if chunk.end == offsets[stream]:
                        break
                    offsets[stream] = chunk.end
                    event_id = ":".join(str(offsets[s]) for s in STREAMS)
                    self.event("log", {"stream": stream, "text": chunk.text}, event_id)
                    if not ended:
                        break
            now = time.monotonic()
            if ended or now - started > MAX_STREAM_S:
                if ended:
                    self.event("end", {"state": state[0]})
                await self._flush()
                break
            if now - last_beat >= HEARTBEAT_S:
                self.write(": heartbeat\n\n")
                last_beat = now
            if not await self._flush():
                break
            change = await self.core.wait_job_change(job_id, TICK_S)
            if change is not None or time.monotonic() - last_state >= STATE_EVERY_S:
                last_state = time.monotonic()
                status = await self.call(self.services.jobs.status, principal, job_id)
                new = (status.state, status.exit_code, status.state_reason)
                if new != state:
                    state = new
                    self._state_event(*state)
        self.finish()

    def _state_event(self, state: str, exit_code: int | None, reason: str | None) -> None:
        self.event(
            "state",
            {
                "state": state,
                "label": state_label(state, exit_code, reason),
                "badge": state_badge(state),
                "exit_code": exit_code,
                "reason": reason,
                "terminal": state in TERMINAL_VALUES,
            },
        )

    async def _flush(self) -> bool:
        try:
            await self.flush()
        except tornado.iostream.StreamClosedError:
            self.closed = True
            return False
        return True

    def finish(self, chunk: Any = None) -> Any:
        if self.closed:
            return None
        try:
            return super().finish(chunk)
        except tornado.iostream.StreamClosedError:
            return None


def job_routes(s: dict[str, Any]) -> list[tuple[str, type, dict[str, Any]]]:
    job = r"([0-9a-f]{1,32})"
    return [
        (rf"{UI}/jobs", JobsHandler, s),
        (rf"{UI}/jobs/rows", JobRowsHandler, s),
        (rf"{UI}/jobs/uuid/([0-9a-f-]{{1,36}})", PermalinkHandler, s),
        (rf"{UI}/jobs/{job}", JobPageHandler, s),
        (rf"{UI}/jobs/{job}/events", JobEventsHandler, s),
        (rf"{UI}/jobs/{job}/cancel", CancelHandler, s),
        (rf"{UI}/jobs/{job}/files/([0-9a-f]{{1,32}})(?:/(view))?", JobFileHandler, s),
    ]
