"""Downloads: the one Range parser and the one base every file-serving route builds on.

Every route that sends a job's file answers ``Range`` the same way
(``parse_range``: one ``bytes=`` range → 206, a range past the end → our JSON
416, anything else → the whole file). Two ways of sending exist, chosen by
where the file was confined:

- ``DownloadHandler`` (Wooey's assets, Galaxy's dataset display): a job's
  recorded file, found by a service call (which confines it with
  ``jobferry.staging.confined.locate_file``) and served by Tornado's
  StaticFileHandler, which already implements byte ranges, HEAD, conditional
  requests and chunked streaming from disk. The base adds authentication, the
  stored-checksum ETag (instead of Tornado's whole-file hash), the
  Content-Disposition and the JSON 416; a route only says how to find its file
  and how to name it (``locate`` returning a ``Download``).
- ``OpenFileSender`` (job_files GET): a client-named path opened by the
  confinement check itself (``confined.open_for_read``), streamed from that
  very descriptor (re-opening it by name would let a symlink swapped in
  between be followed), with job_files' own headers (no ETag, no
  Last-Modified; a 416 names the size in Content-Range).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import tornado.iostream
import tornado.web

from jobferry import errors
from jobferry.api.base import ApiMixin, Services
from jobferry.services.core import Principal

#: Bytes read from disk and handed to the socket at a time, on descriptor downloads.
READ_CHUNK = 1 << 20


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive (start, end) of a single ``bytes=`` range, or None for the whole file.

    A missing, malformed or multi-range header is ignored (RFC 9110 allows
    serving the whole representation). Raises RangeNotSatisfiableError when the
    range lies outside the file.
    """
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    first, last = first.strip(), last.strip()
    if not dash or not (first.isdigit() or (not first and last.isdigit())):
        return None
    if last and not last.isdigit():
        return None
    if not first:  # suffix: the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise errors.RangeNotSatisfiableError("Requested range not satisfiable.", size=size)
        return max(0, size - suffix), size - 1
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise errors.RangeNotSatisfiableError("Requested range not satisfiable.", size=size)
    return start, (min(int(last), size - 1) if last else size - 1)


@dataclass(frozen=True)
class Download:
    """One file to send: where it lies (already confined), its size and checksum,
    and how the client should see it."""

    path: Path
    size: int
    sha256: str
    #: The Content-Disposition header's value.
    disposition: str
    content_type: str = "application/octet-stream"


class DownloadHandler(ApiMixin, tornado.web.StaticFileHandler):
    """GET/HEAD of one recorded job file, for a principal the route's service lets see it.

    Subclasses put a face's mixin first (its key sources and error shape) and
    implement ``locate``.
    """

    def initialize(self, services: Services) -> None:  # type: ignore[override]
        ApiMixin.initialize(self, services)
        self.download: Download | None = None
        tornado.web.StaticFileHandler.initialize(self, path=os.sep)

    async def locate(self, principal: Principal, *args: str) -> Download:
        """The file the route's arguments name, found (and confined) by a service."""
        raise NotImplementedError

    async def get(self, *args: str, include_body: bool = True) -> None:  # type: ignore[override]
        principal = await self.authenticate()
        download = self.download = await self.locate(principal, *args)
        self.root = str(download.path.parent)
        self.set_header("Content-Disposition", download.disposition)
        self.set_header("Cache-Control", "private, no-cache")
        # A range past the end answers with our JSON 416 (StaticFileHandler's is empty).
        parse_range(self.request.headers.get("Range"), download.size)
        await super().get(download.path.name, include_body=include_body)

    async def head(self, *args: str) -> None:
        await self.get(*args, include_body=False)

    def compute_etag(self) -> str | None:
        download = self.download
        return f'"{download.sha256}"' if download is not None and download.sha256 else None

    def get_content_type(self) -> str:
        return self.download.content_type if self.download else "application/octet-stream"

    @classmethod
    def get_content_version(cls, abspath: str) -> str:
        return ""


class OpenFileSender(ApiMixin):
    """Send a file from the descriptor the confinement check opened, with Range."""

    _unsatisfiable_size: int | None = None

    def set_default_headers(self) -> None:
        super().set_default_headers()
        size = self._unsatisfiable_size
        if size is not None:  # survives write_error's clear(): a 416 names the size
            self.set_header("Content-Range", f"bytes */{size}")

    async def send_open_file(self, handle: IO[bytes], size: int, *, include_body: bool) -> None:
        """Answer with *handle*'s content (or the requested range of it), then close it."""
        with handle:
            try:
                byte_range = parse_range(self.request.headers.get("Range"), size)
            except errors.RangeNotSatisfiableError:
                self._unsatisfiable_size = size
                raise
            start, end = byte_range if byte_range is not None else (0, size - 1)
            length = max(0, end - start + 1)
            if byte_range is not None:
                self.set_status(206)
                self.set_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.set_header("Content-Type", "application/octet-stream")
            self.set_header("Accept-Ranges", "bytes")
            self.set_header("Content-Length", str(length))
            if include_body and length:
                if start:
                    handle.seek(start)
                if not await self._stream(handle, length):
                    return
            self.finish()

    async def _stream(self, handle: IO[bytes], length: int) -> bool:
        """Send *length* bytes of *handle*, one chunk in flight; False if the client left.

        Reads happen on the event loop (like StaticFileHandler's): a page-cache
        read of a chunk costs less than an executor hop.
        """
        remaining = length
        while remaining:
            chunk = handle.read(min(READ_CHUNK, remaining))
            if not chunk:
                raise errors.TransferError("the file shrank while it was being sent")
            remaining -= len(chunk)
            self.write(chunk)
            try:
                await self.flush()
            except tornado.iostream.StreamClosedError:
                return False
        return True
