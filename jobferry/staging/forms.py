"""Streaming request bodies: multipart to disk, small forms and JSON in memory.

``FormReceiver`` is the one receiver of every upload route, fed the body chunk
by chunk (from a Tornado ``@stream_request_body`` handler). File parts go
straight to files in a private temporary directory, with size and sha256
computed on the way (Wooey's submissions and script uploads), or the form's one
content part goes to a sink as it arrives (job_files: the service's upload, or
a buffer while the key is unknown); other fields are kept in memory up to a cap.
python-multipart does the multipart parsing (a well-kept streaming parser;
hand-writing one is how upload bugs are born).
Nothing here is visible to anyone until the caller moves the files into place;
``discard`` removes everything for a truncated or refused request.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol
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


class ContentSink(Protocol):
    """Where the bytes of a form's content part go as they arrive (an upload, a buffer)."""

    def write(self, chunk: bytes, /) -> object: ...


@dataclass
class _Part:
    """The part being parsed: a field (buffered), a file written to disk, the content
    part (to the sink), or a part whose data is dropped."""

    name: str = ""
    sink: ContentSink | None = None
    upload: UploadedFile | None = None
    handle: IO[bytes] | None = None
    digest: Any = None
    dropped: bool = False
    buffer: bytearray = field(default_factory=bytearray)


class FormReceiver:
    """Parse one request body incrementally (the one receiver of every upload route).

    ``multipart/form-data`` is parsed as it arrives. A part named in
    *content_fields* is the form's content: its bytes go to *content* as they
    arrive (one such part per body). Any other part with a file name is written
    to a file of its own below *tmp_root* (size and sha256 computed on the way,
    listed in ``files``), or dropped without *tmp_root*. Other named parts are
    fields, kept in memory. Any other body (urlencoded, JSON) is buffered and parsed at
    ``finish``.

    Args:
        content_type: the request's Content-Type header.
        tmp_root: directory under which a private temp directory is made for file parts.
        max_body_bytes: cap on the whole body (PayloadTooLargeError beyond).
        max_field_bytes: cap on a field, and on a non-multipart body.
        max_fields_bytes: cap on all the fields together, if any.
        content: where the content part's bytes go.
        content_fields: the names of the content part (in no particular order).
    """

    def __init__(
        self,
        content_type: str,
        tmp_root: Path | None = None,
        *,
        max_body_bytes: int,
        max_field_bytes: int,
        max_fields_bytes: int | None = None,
        content: ContentSink | None = None,
        content_fields: tuple[str, ...] = (),
    ) -> None:
        assert content is not None or not content_fields, "content fields need a sink"
        self.max_body_bytes = max_body_bytes
        self.max_field_bytes = max_field_bytes
        self.max_fields_bytes = max_fields_bytes
        self.received = 0
        self.fields: dict[str, list[str]] = {}
        self.files: list[UploadedFile] = []
        self.json: Any = None
        #: How many content parts the body held (more than one is refused).
        self.content_parts = 0
        self._content = content
        self._content_fields = content_fields
        self._field_bytes = 0
        self._raw = bytearray()
        self._dir: Path | None = None
        self._tmp_root = tmp_root
        self._part: _Part | None = None
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._part_headers: dict[str, str] = {}
        self._parser: MultipartParser | None = None
        mime, options = parse_options_header(content_type or "")
        self.kind = mime.decode("latin-1").lower()
        self._ended = self.kind != "multipart/form-data"
        if self._ended:
            return
        boundary = options.get(b"boundary")
        if not boundary:
            raise RequestError("multipart body without a boundary")
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_end": self._on_end,
            },
        )

    @property
    def has_content(self) -> bool:
        return self.content_parts > 0

    @property
    def directory(self) -> Path:
        if self._dir is None:
            assert self._tmp_root is not None
            self._tmp_root.mkdir(parents=True, exist_ok=True)
            self._dir = Path(tempfile.mkdtemp(prefix="upload-", dir=self._tmp_root))
        return self._dir

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
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise RequestError(f"malformed multipart body: {exc}") from exc

    def finish(self) -> None:
        """The body is complete: parse a buffered body, check a multipart one ended."""
        if self._parser is not None:
            self._parser.finalize()
            if not self._ended:
                raise RequestError("the multipart body ended before its closing boundary")
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
        """A field's value (the last one, if given more than once)."""
        values = self.fields.get(name)
        return values[-1] if values else None

    def single_field(self, name: str) -> str | None:
        """A field's value; two different values of one field are refused
        (different layers picking different ones is how checks get bypassed)."""
        values = self.fields.get(name)
        if not values:
            return None
        if any(v != values[0] for v in values):
            raise RequestError(f"the form gives {name!r} more than once")
        return values[0]

    def discard(self) -> None:
        """Remove every file received (idempotent)."""
        if self._part is not None and self._part.handle is not None:
            self._part.handle.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    # --- multipart callbacks ---------------------------------------------------------

    def _on_part_begin(self) -> None:
        self._part_headers = {}
        self._part = _Part()

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

    def _on_headers_finished(self) -> None:
        part = self._part
        assert part is not None
        _, options = parse_options_header(self._part_headers.get("content-disposition", ""))
        part.name = options.get(b"name", b"").decode("utf-8", "replace")
        if part.name in self._content_fields:
            self.content_parts += 1
            if self.content_parts > 1:
                raise RequestError("Multiple file uploads are not supported.")
            part.sink = self._content
        elif b"filename" in options:
            if self._tmp_root is None:
                part.dropped = True
                return
            filename = options[b"filename"].decode("utf-8", "replace")
            index = len(self.files)
            path = self.directory / f"{index}-{safe_filename(filename)}"
            part.upload = UploadedFile(field=part.name, filename=filename, path=path)
            part.handle = open(path, "wb")  # noqa: SIM115 - closed in _on_part_end/discard
            part.digest = hashlib.sha256()
        elif not part.name:
            part.dropped = True  # a field without a name: nothing could ever read it

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        assert part is not None
        if part.sink is not None:
            part.sink.write(data[start:end])
        elif part.handle is not None:
            chunk = data[start:end]
            part.handle.write(chunk)
            part.digest.update(chunk)
            assert part.upload is not None
            part.upload.size += len(chunk)
        elif not part.dropped:
            self._field_bytes += end - start
            if self.max_fields_bytes is not None and self._field_bytes > self.max_fields_bytes:
                raise PayloadTooLargeError(f"the form fields exceed {self.max_fields_bytes} bytes")
            if len(part.buffer) + end - start > self.max_field_bytes:
                raise PayloadTooLargeError(
                    f"form field {part.name!r} exceeds {self.max_field_bytes} bytes"
                )
            part.buffer += data[start:end]

    def _on_part_end(self) -> None:
        part = self._part
        assert part is not None
        if part.handle is not None and part.upload is not None:
            part.handle.close()
            part.handle = None
            part.upload.sha256 = part.digest.hexdigest()
            self.files.append(part.upload)
        elif part.sink is None and not part.dropped:
            value = part.buffer.decode("utf-8", "replace")
            self.fields.setdefault(part.name, []).append(value)
        self._part = None

    def _on_end(self) -> None:
        self._ended = True


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
