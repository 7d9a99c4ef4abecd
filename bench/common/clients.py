"""The load generator: keep-alive HTTP/1.1 on asyncio streams, and what it asks a daemon.

``HttpConn`` costs ~0.1 ms of CPU per request, so the client side stays small
next to the server being measured on the same two cores; ``run_pool`` keeps
one request at a time in flight per connection. ``wait_all`` waits for a batch
of jobs while loading the daemon as little as possible (see its docstring), and
``store_times`` reads the jobs' timestamps from a daemon's SQLite store after
the fact (never inside a timed interval).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from bench.common.report import BenchError, log
from bench.common.stats import Deadline

T = TypeVar("T")

#: The Wooey submission of a job without arguments.
SUBMIT_BODY = b"job_name=bench&command="
FORM_TYPE = "application/x-www-form-urlencoded"
#: Poll interval while waiting for a batch of jobs (low load on the daemon).
BATCH_POLL_S = 0.1


class HttpConn:
    """One persistent HTTP/1.1 connection, asyncio streams, no parsing beyond the needed.

    Cheaper per request than tornado's simple client (which does not keep
    connections alive) or requests in threads, so the client side stays small
    next to the server being measured. A connection left idle for *max_idle_s*
    is opened anew before its next request: the daemon closes idle keep-alive
    connections after ``server.idle_timeout_s`` (60 s), and a pool's spare
    connections sit idle while a slow batch of jobs runs.
    """

    def __init__(
        self,
        host: str,
        port: int,
        headers: dict[str, str] | None = None,
        timeout_s: float = 30.0,
        max_idle_s: float = 30.0,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self.max_idle_s = max_idle_s
        self._last_used = 0.0
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._prefix = f" HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}"
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._reader, self._writer = reader, writer
        return reader, writer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def request(
        self, method: str, path: str, body: bytes = b"", content_type: str | None = None
    ) -> tuple[int, bytes]:
        try:
            return await asyncio.wait_for(
                self._request(method, path, body, content_type), self.timeout_s
            )
        except BaseException:
            self.close()  # the connection's state is unknown now
            raise

    async def _request(
        self, method: str, path: str, body: bytes, content_type: str | None
    ) -> tuple[int, bytes]:
        if self._writer is not None and time.monotonic() - self._last_used > self.max_idle_s:
            self.close()
        if self._writer is None or self._reader is None:
            reader, writer = await self._connect()
        else:
            reader, writer = self._reader, self._writer
        head = method + " " + path + self._prefix
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        if body or method in ("POST", "PUT"):
            head += f"Content-Length: {len(body)}\r\n"
        writer.write(head.encode("latin-1") + b"\r\n" + body)
        status_line = await reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        status = int(status_line.split(None, 2)[1])
        length: int | None = None
        chunked = close = False
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n"):
                break
            if not line:
                raise ConnectionError("the server closed the connection in the headers")
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value.strip())
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and b"close" in value.lower():
                close = True
        if chunked:
            parts = []
            while True:
                size = int((await reader.readline()).split(b";")[0].strip(), 16)
                if size == 0:
                    while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
            data = b"".join(parts)
        elif length is not None:
            data = await reader.readexactly(length)
        else:
            data = await reader.read()
            close = True
        if close:
            self.close()
        self._last_used = time.monotonic()
        return status, data


async def run_pool(
    conns: Sequence[HttpConn], count: int, task: Callable[[HttpConn, int], Awaitable[T]]
) -> list[T]:
    """Run task(conn, i) for i in range(count), one request at a time per connection."""
    results: list[T | None] = [None] * count
    cursor = 0

    async def worker(conn: HttpConn) -> None:
        nonlocal cursor
        while cursor < count:
            index = cursor
            cursor += 1
            results[index] = await task(conn, index)

    await asyncio.gather(*(worker(conn) for conn in conns))
    return [r for r in results if r is not None]


def close_all(conns: Sequence[HttpConn]) -> None:
    for conn in conns:
        conn.close()


# --- the Wooey face: submit, status ---------------------------------------------------------------


async def submit(conn: HttpConn, slug: str, body: bytes = SUBMIT_BODY) -> str:
    """Submit a job of script *slug* (form *body*); its id."""
    status, answer = await conn.request("POST", f"/api/scripts/v1/{slug}/submit/", body, FORM_TYPE)
    if status != 200:
        raise BenchError(f"submit answered {status}: {answer[:300]!r}")
    data = json.loads(answer)
    if not data.get("valid"):
        raise BenchError(f"submit refused: {answer[:300]!r}")
    return str(data["job_id"])


async def job_status(conn: HttpConn, job_id: str, wait_s: float = 0) -> tuple[bool, str]:
    """The job's status; with *wait_s*, the daemon answers once it completes (long-poll)."""
    query = f"?wait={wait_s:g}" if wait_s else ""
    status, body = await conn.request("GET", f"/api/jobs/v1/{job_id}/status/{query}")
    if status != 200:
        raise BenchError(f"status of {job_id} answered {status}: {body[:300]!r}")
    answer = json.loads(body)
    return bool(answer["is_complete"]), str(answer["status"])


async def submit_many(
    conns: Sequence[HttpConn], slug: str, count: int, body: bytes = SUBMIT_BODY
) -> list[str]:
    """Submit *count* jobs over the pool; ids in the order the answers came back."""
    order: list[str] = []

    async def one(conn: HttpConn, _index: int) -> str:
        job_id = await submit(conn, slug, body)
        order.append(job_id)
        return job_id

    await run_pool(conns, count, one)
    return order


@dataclass
class Completion:
    """How a batch of jobs ended and when the last was seen complete."""

    t_end: float
    statuses: dict[str, str]
    status_requests: int
    late: int  # jobs found still running by the final sweep (FIFO assumption broken)

    @property
    def failed(self) -> int:
        return sum(1 for s in self.statuses.values() if s != "completed")


async def wait_all(
    conns: Sequence[HttpConn],
    ids: Sequence[str],
    deadline: Deadline,
    *,
    window: int,
    on_round: Callable[[], None] | None = None,
) -> Completion:
    """Wait until every job in *ids* is complete, with little load on the daemon.

    Jobs are claimed oldest first, so while the last-submitted job is not
    complete only it is polled (one request every BATCH_POLL_S). Then the last
    *window* jobs (those that may still run next to it) are polled until
    complete: that instant is the end. Finally every other job is checked
    (not timed); any found still running is waited for and moves the end.
    """
    statuses: dict[str, str] = {}
    requests_made = 0

    async def probe(job_ids: Sequence[str]) -> list[str]:
        """Poll *job_ids*; record the complete ones; return those still running."""
        nonlocal requests_made
        pending = list(job_ids)
        running: list[str] = []

        async def one(conn: HttpConn, index: int) -> bool:
            job_id = pending[index]
            complete, status = await job_status(conn, job_id)
            if complete:
                statuses[job_id] = status
            else:
                running.append(job_id)
            return True

        requests_made += len(pending)
        await run_pool(conns[: max(1, min(len(conns), len(pending)))], len(pending), one)
        return [job_id for job_id in pending if job_id in running]

    async def until_complete(job_ids: Sequence[str]) -> None:
        pending = list(job_ids)
        while pending:
            pending = await probe(pending)
            if pending:
                deadline.check(f"waiting for {len(pending)} jobs")
                if on_round is not None:
                    on_round()
                await asyncio.sleep(BATCH_POLL_S)

    await until_complete(ids[-1:])
    await until_complete([j for j in ids[-window:] if j not in statuses])
    t_end = time.perf_counter()
    rest = [j for j in ids if j not in statuses]
    late = await probe(rest)
    if late:
        await until_complete(late)
        t_end = time.perf_counter()
    return Completion(t_end, statuses, requests_made, len(late))


# --- the store, after the fact --------------------------------------------------------------------


def _epoch(text: object) -> float | None:
    if not text:
        return None
    return datetime.fromisoformat(str(text)).replace(tzinfo=UTC).timestamp()


def store_times(data_dir: Path, ids: Sequence[str]) -> dict[str, dict[str, float | None]]:
    """created/started/finished (epoch s) and wall_s of *ids*, read from the SQLite store.

    Read-only and after the fact: a cross-check and a breakdown of where time
    goes, never part of a timed interval.
    """
    path = data_dir / "jobferry.db"
    wanted = set(ids)
    found: dict[str, dict[str, float | None]] = {}
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
            rows = db.execute("SELECT id, created_at, started_at, finished_at, wall_s FROM jobs")
            for job_id, created, started, finished, wall_s in rows:
                if job_id in wanted:
                    found[job_id] = {
                        "created": _epoch(created),
                        "started": _epoch(started),
                        "finished": _epoch(finished),
                        "wall_s": None if wall_s is None else float(wall_s),
                    }
    except (sqlite3.Error, ValueError) as exc:
        log(f"cannot read the store for a cross-check: {exc}")
    return found
