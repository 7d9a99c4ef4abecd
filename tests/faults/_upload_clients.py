"""Hostile upload clients on raw sockets, shared by the fault tests and ``bench/faults_uploads.py``.

A real HTTP client library cannot do what these do on purpose: declare a body
it never sends and hang up half way, or stream a body without end. Every socket
has a timeout, and every function returns (never raises) on a refused or reset
connection: the daemon closing on a client is what is being tested.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import psutil

BOUNDARY = "fAuLtBoUnDaRy"
MIB = 1024 * 1024
#: Socket timeout: generous, the machine is busy; a healthy daemon answers in far less.
SOCKET_TIMEOUT_S = 60.0


def file_part_head(name: str = "file", filename: str = "upload.bin") -> bytes:
    """The start of a multipart body up to the first byte of a file part's content."""
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()


def field_part(name: str, value: str) -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    )


def closing() -> bytes:
    return f"\r\n--{BOUNDARY}--\r\n".encode()


def multipart_body(content: bytes, fields: dict[str, str] | None = None) -> bytes:
    """A whole multipart body: *fields*, then a ``file`` part holding *content*."""
    head = b"".join(field_part(k, v) for k, v in (fields or {}).items())
    return head + file_part_head() + content + closing()


@dataclass(frozen=True)
class Upload:
    """One request: a target, its headers and what is actually sent of the body."""

    target: str  # path and query
    body: bytes  # the bytes sent after the headers
    declared: int | None = None  # Content-Length; None: chunked (sent as one chunk)
    headers: dict[str, str] = field(default_factory=dict)
    read_answer: bool = False  # wait for the status line (else hang up at once)


def request_head(host: str, upload: Upload) -> bytes:
    lines = [f"POST {upload.target} HTTP/1.1", f"Host: {host}"]
    lines.append(f"Content-Type: multipart/form-data; boundary={BOUNDARY}")
    if upload.declared is None:
        lines.append("Transfer-Encoding: chunked")
    else:
        lines.append(f"Content-Length: {upload.declared}")
    lines += [f"{k}: {v}" for k, v in upload.headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def send(address: tuple[str, int], upload: Upload) -> int | None:
    """Send one request; return its status (when *read_answer*), else None.

    A body shorter than its Content-Length is cut off: the socket is closed with
    the body half sent. A chunked body is sent as one chunk and, with
    *read_answer*, ended properly.
    """
    host = f"{address[0]}:{address[1]}"
    body = upload.body
    if upload.declared is None and body:
        body = f"{len(body):x}\r\n".encode() + body + b"\r\n"
        if upload.read_answer:
            body += b"0\r\n\r\n"
    try:
        with socket.create_connection(address, timeout=SOCKET_TIMEOUT_S) as sock:
            try:
                sock.sendall(request_head(host, upload) + body)
            except OSError:
                pass  # the daemon answered and closed while the body was being sent
            if not upload.read_answer:
                return None
            return read_status(sock)
    except OSError:
        return None


def read_status(sock: socket.socket) -> int | None:
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    parts = data.split(b" ", 2)
    if len(parts) >= 2 and parts[1].isdigit():
        return int(parts[1])
    return None


def send_all(
    address: tuple[str, int],
    uploads: Sequence[Upload],
    concurrency: int = 20,
    in_flight: Callable[[], int] | None = None,
    max_in_flight: int = 64,
) -> Counter[int | None]:
    """Send every upload, *concurrency* at a time; count the statuses (None: not read).

    A client that hangs up at once does not wait for the daemon, so on a busy
    machine hundreds of its connections can be queued at the daemon at a time,
    and RSS then measures that queue's high-water mark, not what stays. With
    *in_flight* (e.g. the daemon's open descriptors above idle), each client
    waits (60 s at most) until it is at most *max_in_flight* before it connects.
    """

    def one(upload: Upload) -> int | None:
        if in_flight is not None:
            deadline = time.monotonic() + 60
            while in_flight() > max_in_flight and time.monotonic() < deadline:
                time.sleep(0.001)
        return send(address, upload)

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return Counter(pool.map(one, uploads))


def open_descriptors(pid: int) -> Callable[[], int]:
    """A reader of *pid*'s open descriptor count (sockets and files)."""
    process = psutil.Process(pid)
    return lambda: int(process.num_fds())


def endless_chunks(chunk: int = 256 * 1024, total: int = 19 * MIB) -> Iterator[bytes]:
    """A file part's data, *total* bytes in chunks, for a body that is never ended."""
    sent = 0
    while sent < total:
        size = min(chunk, total - sent)
        sent += size
        yield b"a" * size


def stream_without_end(address: tuple[str, int], upload: Upload, total: int) -> int:
    """Stream a chunked body of up to *total* bytes after *upload*'s, never ending it;
    return how many bytes the daemon took before it stopped taking them (or all)."""
    host = f"{address[0]}:{address[1]}"
    sent = 0
    sock = socket.create_connection(address, timeout=SOCKET_TIMEOUT_S)
    try:
        data = upload.body
        sock.sendall(request_head(host, upload) + f"{len(data):x}\r\n".encode() + data + b"\r\n")
        for piece in endless_chunks(total=total):
            sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            sent += len(piece)
    except OSError:
        pass  # refused and closed by the daemon: what a hardened daemon does
    finally:
        sock.close()
    return sent


class Sampler:
    """Samples a value in a thread (every 5 ms) and keeps its peak: disk usage, RSS."""

    def __init__(self, read: Callable[[], int]) -> None:
        self.read = read
        self.first = read()
        self.peak = self.first
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.read())
            except (OSError, psutil.Error):
                pass
            time.sleep(0.005)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.peak = max(self.peak, self.read())


def rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def written_chars(pid: int) -> int:
    """Bytes the process passed to write(2) and friends (``/proc/PID/io`` wchar)."""
    return int(psutil.Process(pid).io_counters().write_chars)
