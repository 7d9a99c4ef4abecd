"""Streaming request bodies: multipart to disk, small forms and JSON in memory.

``FormReceiver`` is fed the body chunk by chunk (from a Tornado
``@stream_request_body`` handler). File parts go straight to files in a private
temporary directory, with size and sha256 computed on the way; other fields are
kept in memory up to a cap. python-multipart does the multipart parsing (a
well-kept streaming parser; hand-writing one is how upload bugs are born).
Nothing here is visible to anyone until the caller moves the files into place;
``discard`` removes everything for a truncated or refused request.
"""

from __future__ import annotations

import abc
import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qsl

from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header

from jobferry.errors import PayloadTooLargeError, RequestError
from jobferry.staging.json_body import parse_json
from jobferry.staging.paths import safe_filename


@dataclass
class UploadedFile:
    """A file part written to disk."""

    field: str
    filename: str
    path: Path
    size: int = 0
    sha256: str = ""


@dataclass
class _Part:
    name: str = ""
    upload: UploadedFile | None = None
    handle: IO[bytes] | None = None
    digest: Any = None
    buffer: bytearray = field(default_factory=bytearray)


class MultipartStream(abc.ABC):
    """The multipart plumbing both request-body receivers share.

    ``_start_multipart`` sets ``kind`` and, for ``multipart/form-data``, a
    python-multipart parser whose callbacks land here; the part's headers are
    collected by this class, and subclasses handle each part through
    ``_on_part_begin``, ``_on_headers_finished`` (``_disposition()`` gives the
    part's Content-Disposition options), ``_on_part_data`` and ``_on_part_end``.
    """

    kind: str
    max_body_bytes: int
    max_field_bytes: int
    received: int
    _raw: bytearray
    _parser: MultipartParser | None
    _ended: bool

    def _start_multipart(self, content_type: str) -> None:
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._part_headers: dict[str, str] = {}
        self._ended = False
        self._parser = None
        mime, options = parse_options_header(content_type or "")
        self.kind = mime.decode("latin-1").lower()
        if self.kind != "multipart/form-data":
            return
        boundary = options.get(b"boundary")
        if not boundary:
            raise RequestError("multipart body without a boundary")
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._begin_part,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_end": self._on_end,
            },
        )

    def feed(self, chunk: bytes) -> None:
        """Take the next chunk of the body: parsed at once if multipart, else buffered.

        Raises PayloadTooLargeError past ``max_body_bytes`` (or ``max_field_bytes``
        for a buffered body), RequestError for a malformed multipart body.
        """
        self.received += len(chunk)
        if self.received > self.max_body_bytes:
            raise PayloadTooLargeError(
                f"the request body exceeds {self.max_body_bytes} bytes (server.max_upload_mb)"
            )
        if self._parser is None:
            if len(self._raw) + len(chunk) > self.max_field_bytes:
                raise PayloadTooLargeError(
                    f"a {self.kind or 'non-multipart'} body may not exceed "
                    f"{self.max_field_bytes} bytes"
                )
            self._raw += chunk
            return
        self._write_multipart(chunk)

    def _write_multipart(self, chunk: bytes) -> None:
        assert self._parser is not None
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise RequestError(f"malformed multipart body: {exc}") from exc

    def _finish_multipart(self) -> None:
        assert self._parser is not None
        self._parser.finalize()
        if not self._ended:
            raise RequestError("the multipart body ended before its closing boundary")

    def _disposition(self) -> dict[bytes, bytes]:
        _, options = parse_options_header(self._part_headers.get("content-disposition", ""))
        return dict(options)

    def _begin_part(self) -> None:
        self._part_headers = {}
        self._on_part_begin()

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        key = self._header_field.decode("latin-1").lower()
        # Latin-1 keeps the raw bytes; names and file names are decoded as UTF-8 later.
        self._part_headers[key] = self._header_value.decode("latin-1")
        self._header_field.clear()
        self._header_value.clear()

    def _on_end(self) -> None:
        self._ended = True

    @abc.abstractmethod
    def _on_part_begin(self) -> None:
        """Handle one step of the current part."""

    @abc.abstractmethod
    def _on_headers_finished(self) -> None:
        """Handle one step of the current part."""

    @abc.abstractmethod
    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        """Handle one step of the current part."""

    @abc.abstractmethod
    def _on_part_end(self) -> None:
        """Handle one step of the current part."""


class FormReceiver(MultipartStream):
    """Parse one request body incrementally.

    Args:
        content_type: the request's Content-Type header.
        tmp_root: directory under which a private temp directory is made.
        max_body_bytes: cap on the whole body (PayloadTooLargeError beyond).
        max_field_bytes: cap on a non-file field, and on a non-multipart body.
    """

    def __init__(
        self, content_type: str, tmp_root: Path, *, max_body_bytes: int, max_field_bytes: int
    ) -> None:
        self.max_body_bytes = max_body_bytes
        self.max_field_bytes = max_field_bytes
        self.received = 0
        self.fields: dict[str, list[str]] = {}
        self.files: list[UploadedFile] = []
        self.json: Any = None
        self._raw = bytearray()
        self._dir: Path | None = None
        self._tmp_root = tmp_root
        self._part: _Part | None = None
        self._start_multipart(content_type)
        if self._parser is None:
            self._ended = True

    @property
    def directory(self) -> Path:
        if self._dir is None:
            self._tmp_root.mkdir(parents=True, exist_ok=True)
            self._dir = Path(tempfile.mkdtemp(prefix="upload-", dir=self._tmp_root))
        return self._dir

    def finish(self) -> None:
        """The body is complete: parse a buffered body, check a multipart one ended."""
        if self._parser is not None:
            self._finish_multipart()
            return
        text = self._raw.decode("utf-8", "replace")
        if "json" in self.kind:
            # Size: capped by max_field_bytes while it was fed.
            self.json = parse_json(text, max_bytes=None, empty={})
            if not isinstance(self.json, dict):
                raise RequestError("the JSON body must be an object")
            for key, value in self.json.items():
                self.fields.setdefault(str(key), []).append(_as_text(value))
        elif text:
            for key, value in parse_qsl(text, keep_blank_values=True):
                self.fields.setdefault(key, []).append(value)

    def field(self, name: str) -> str | None:
        values = self.fields.get(name)
        return values[-1] if values else None

    def discard(self) -> None:
        """Remove every file received (idempotent)."""
        if self._part is not None and self._part.handle is not None:
            self._part.handle.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    # --- multipart callbacks ---------------------------------------------------------

    def _on_part_begin(self) -> None:
        self._part = _Part()

    def _on_headers_finished(self) -> None:
        part = self._part
        assert part is not None
        options = self._disposition()
        part.name = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in options:
            filename = options[b"filename"].decode("utf-8", "replace")
            index = len(self.files)
            path = self.directory / f"{index}-{safe_filename(filename)}"
            part.upload = UploadedFile(field=part.name, filename=filename, path=path)
            part.handle = open(path, "wb")  # noqa: SIM115 - closed in _on_part_end/discard
            part.digest = hashlib.sha256()

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        assert part is not None
        chunk = data[start:end]
        if part.handle is not None:
            part.handle.write(chunk)
            part.digest.update(chunk)
            assert part.upload is not None
            part.upload.size += len(chunk)
        else:
            if len(part.buffer) + len(chunk) > self.max_field_bytes:
                raise PayloadTooLargeError(
                    f"form field {part.name!r} exceeds {self.max_field_bytes} bytes"
                )
            part.buffer += chunk

    def _on_part_end(self) -> None:
        part = self._part
        assert part is not None
        if part.handle is not None and part.upload is not None:
            part.handle.close()
            part.handle = None
            part.upload.sha256 = part.digest.hexdigest()
            self.files.append(part.upload)
        else:
            value = part.buffer.decode("utf-8", "replace")
            self.fields.setdefault(part.name, []).append(value)
        self._part = None


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value)
