"""Moving files: a streamed multipart upload, and a resumable, verified download.

Uploads are sent as one ``multipart/form-data`` body of a known length, read
from disk chunk by chunk. Downloads go to ``NAME.part`` beside the target; a
second run sends ``Range: bytes=<size of .part>-`` and appends, and the whole
file's sha256 (the ``.part`` re-read, then the new bytes) must equal the one the
daemon reported for the asset before the ``.part`` becomes ``NAME``. A mismatch
removes the ``.part`` (the next run starts over) and is an error.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobferry.cli.remote.client import Answer, Remote, RemoteError
from jobferry.cli.remote.progress import Meter

CHUNK = 1 << 20


# --- uploads ----------------------------------------------------------------------------


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


@dataclass(frozen=True)
class Multipart:
    """A form's fields and files, sent as one streamed body."""

    fields: Mapping[str, str]
    files: Mapping[str, Path]
    boundary: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "boundary", f"jobferry-{uuid.uuid4().hex}")

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def _head(self, name: str, filename: str | None) -> bytes:
        disposition = f'form-data; name="{_quoted(name)}"'
        lines = [f"--{self.boundary}"]
        if filename is None:
            lines.append(f"Content-Disposition: {disposition}")
        else:
            lines.append(f'Content-Disposition: {disposition}; filename="{_quoted(filename)}"')
            lines.append("Content-Type: application/octet-stream")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")

    def _fields(self) -> bytes:
        return b"".join(
            self._head(name, None) + value.encode("utf-8") + b"\r\n"
            for name, value in self.fields.items()
        )

    def _tail(self) -> bytes:
        return f"--{self.boundary}--\r\n".encode()

    def length(self) -> int:
        total = len(self._fields()) + len(self._tail())
        for name, path in self.files.items():
            total += len(self._head(name, path.name)) + path.stat().st_size + 2
        return total

    def file_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.files.values())

    def chunks(self, meter: Meter) -> Iterator[bytes]:
        yield self._fields()
        for name, path in self.files.items():
            yield self._head(name, path.name)
            with open(path, "rb") as handle:
                while chunk := handle.read(CHUNK):
                    meter.advance(len(chunk))
                    yield chunk
            yield b"\r\n"
        yield self._tail()


def upload_form(remote: Remote, path: str, form: Multipart, meter: Meter) -> Any:
    """POST *form* to *path*; the JSON answer."""
    length = form.length()
    total = form.file_bytes()
    if form.files:
        meter.start("upload", total)
    try:
        return remote.call(
            "POST",
            path,
            body=form.chunks(meter),
            headers={"Content-Type": form.content_type, "Content-Length": str(length)},
        )
    finally:
        meter.finish()


# --- downloads --------------------------------------------------------------------------


@dataclass
class Fetched:
    name: str
    path: Path
    size: int
    sha256: str
    #: Bytes already in the .part file when this run started (0: a fresh download).
    resumed_from: int
    #: Bytes this run received from the daemon.
    received: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "size": self.size,
            "sha256": self.sha256,
            "resumed_from": self.resumed_from,
            "received": self.received,
        }


class Throttle:
    """Keeps a transfer at or under *rate* bytes a second (``--limit-rate``)."""

    def __init__(self, rate: int | None) -> None:
        self.rate = rate
        self.start = time.monotonic()
        self.sent = 0

    def account(self, count: int) -> None:
        if not self.rate:
            return
        self.sent += count
        ahead = self.sent / self.rate - (time.monotonic() - self.start)
        if ahead > 0:
            time.sleep(ahead)


def _digest_of(path: Path) -> Any:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest


def download(
    remote: Remote,
    asset_path: str,
    asset: Mapping[str, Any],
    target: Path,
    meter: Meter,
    *,
    rate: int | None = None,
) -> Fetched:
    """Fetch one asset to *target*, resuming ``target.part``; verified by sha256."""
    name = str(asset["name"])
    expected = asset.get("sha256")
    size = int(asset.get("size") or 0)
    part = target.with_name(target.name + ".part")
    if target.exists() and expected and _digest_of(target).hexdigest() == expected:
        return Fetched(name, target, size, expected, size, 0)  # already here, intact
    target.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    if have > size:
        part.unlink()  # longer than the asset: it cannot be a prefix of it
        have = 0
    digest = _digest_of(part) if have else hashlib.sha256()
    resumed_from, received = have, 0
    if have < size or not part.exists():
        headers = {"Range": f"bytes={have}-"} if have else {}
        conn, response = remote.open("GET", asset_path, headers=headers)
        try:
            if response.status not in (200, 206):
                answer = Answer(response.status, response.headers, response.read(1 << 20))
                raise remote.refused(response.status, remote.parse("GET", asset_path, answer))
            mode = "ab"
            if response.status == 200 or not _range_starts_at(response, have):
                mode, have, digest, resumed_from = "wb", 0, hashlib.sha256(), 0
            meter.start(name, size, have)
            throttle = Throttle(rate)
            with open(part, mode) as out:
                while True:
                    try:
                        chunk = response.read(CHUNK)
                    except OSError as exc:
                        raise remote.unreachable(exc) from None
                    if not chunk:
                        break
                    out.write(chunk)
                    out.flush()
                    digest.update(chunk)
                    received += len(chunk)
                    meter.advance(len(chunk))
                    throttle.account(len(chunk))
        finally:
            meter.finish()
            conn.close()
    got = part.stat().st_size
    actual = digest.hexdigest()
    if got != size:
        raise RemoteError(
            f"{name}: the download stopped at {got} of {size} bytes; run again to resume"
        )
    if expected and actual != expected:
        part.unlink()
        raise RemoteError(
            f"{name}: sha256 mismatch (the daemon reports {expected}, the download has "
            f"{actual}); the partial file {part} was corrupt and was removed: run again"
        )
    os.replace(part, target)
    return Fetched(name, target, size, actual, resumed_from, received)


def _range_starts_at(response: Any, offset: int) -> bool:
    """Whether a 206 answer's Content-Range starts where the .part ends."""
    value = str(response.headers.get("Content-Range") or "")
    unit, _, spec = value.partition(" ")
    first = spec.partition("-")[0]
    return unit == "bytes" and first.isdigit() and int(first) == offset


__all__ = ["Fetched", "Multipart", "download", "upload_form"]
