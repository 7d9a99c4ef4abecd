#!/usr/bin/env python
"""Throughput, latency, acceptance and memory of a real ``jobferry serve``.

Every figure is printed next to a reference measured on this machine in the
same run (bare process spawns, a hello-world Tornado server), so the ratios
say how close the daemon gets to what the machine can do. See bench/README.md.

Usage::

    .venv/bin/python bench/throughput.py [--quick] [--jobs 500] [--latency-jobs 100]
        [--accept-jobs 2000] [--rss-jobs 10000] [--profile]

Standard library + requests + tornado + psutil only. Daemons run in
subprocesses with their data in a temporary directory and are stopped by pid
at the end (also on error or Ctrl-C); every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import pstats
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent
NOOP = ROOT / "tests" / "data" / "jobs" / "noop.py"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
CPUS = os.cpu_count() or 1
MB = 1024 * 1024

#: Targets (see the brief in bench/README.md).
TARGET_THROUGHPUT_RATIO = 0.5
TARGET_LATENCY_OVERHEAD_MS = 15.0
TARGET_ACCEPT_PER_S = 500.0
TARGET_RSS_MB = 120.0

#: Poll interval while waiting for a batch of jobs (low load on the daemon).
BATCH_POLL_S = 0.1
#: Poll interval while waiting for one job in the latency test.
LATENCY_POLL_S = 0.002
#: Busy cores (while this benchmark is idle) below which the machine counts as quiet.
IDLE_CORES = 0.2
#: Other work (cores) during a measurement above which it is repeated (--retries).
NOISY_CORES = 0.25
#: Alternating rounds of the acceptance test (daemon, hello-world, daemon, ...).
ACCEPT_ROUNDS = 3
#: Jobs submitted per batch in the memory test (RSS is sampled after each).
RSS_BATCH = 1000

SUBMIT_BODY = b"job_name=bench&command="
FORM_TYPE = "application/x-www-form-urlencoded"

T = TypeVar("T")


class BenchError(Exception):
    """The benchmark cannot go on (daemon error, unexpected answer, time limit)."""


# --- small utilities ------------------------------------------------------------------------------


class Deadline:
    """The run's overall time limit; every wait is cut to what remains of it."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def check(self, what: str) -> None:
        if self.remaining() <= 0:
            raise BenchError(f"time limit reached during {what}")

    async def bounded(self, awaitable: Awaitable[T], what: str, limit_s: float | None = None) -> T:
        """Await *awaitable* for at most the remaining time (and *limit_s*)."""
        budget = self.remaining() if limit_s is None else min(limit_s, self.remaining())
        if budget <= 0:
            raise BenchError(f"time limit reached before {what}")
        try:
            return await asyncio.wait_for(awaitable, budget)
        except TimeoutError:
            raise BenchError(f"{what} did not finish in {budget:.0f}s") from None


def percentile(values: Sequence[float], pct: float) -> float:
    """Linear-interpolated percentile (pct in 0..100)."""
    data = sorted(values)
    if not data:
        return float("nan")
    if len(data) == 1:
        return data[0]
    rank = (len(data) - 1) * pct / 100.0
    low = int(rank)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (rank - low)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def job_env(workdir: str) -> dict[str, str]:
    """The environment the local runner gives a job (minus its JOBFERRY_* variables)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "HOME": workdir,
    }
    env.update((k, os.environ[k]) for k in ("TMPDIR", "USER", "LOGNAME") if k in os.environ)
    return env


def daemon_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBFERRY_")}
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def machine_busy() -> Callable[[], float]:
    """Start measuring whole-machine CPU use; the returned function gives busy cores."""
    before = psutil.cpu_times()
    t0 = time.perf_counter()

    def busy_cores() -> float:
        after = psutil.cpu_times()
        idle = (after.idle - before.idle) + (
            getattr(after, "iowait", 0.0) - getattr(before, "iowait", 0.0)
        )
        elapsed = time.perf_counter() - t0
        return max(0.0, CPUS - idle / elapsed) if elapsed > 0 else 0.0

    return busy_cores


class LoadMeter:
    """Whole-machine CPU use during a measurement, split into ours and other work's.

    *ours* returns the CPU seconds used so far by the processes under test and
    by this benchmark; whatever else keeps the cores busy is other work, which
    slows down what is measured (the machine may be shared).
    """

    def __init__(self, ours: Callable[[], float]) -> None:
        self.ours = ours
        self.before = psutil.cpu_times()
        self.ours0 = ours()
        self.t0 = time.perf_counter()

    def stop(self) -> dict[str, float]:
        after = psutil.cpu_times()
        elapsed = max(1e-9, time.perf_counter() - self.t0)
        idle = (after.idle - self.before.idle) + (
            getattr(after, "iowait", 0.0) - getattr(self.before, "iowait", 0.0)
        )
        busy = max(0.0, CPUS - idle / elapsed)
        ours = (self.ours() - self.ours0) / elapsed
        return {"busy_cores": busy, "our_cores": ours, "other_cores": max(0.0, busy - ours)}


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- a minimal keep-alive HTTP/1.1 client ---------------------------------------------------------


class HttpConn:
    """One persistent HTTP/1.1 connection, asyncio streams, no parsing beyond the needed.

    Cheaper per request than tornado's simple client (which does not keep
    connections alive) or requests in threads, so the client side stays small
    next to the server being measured.
    """

    def __init__(
        self, host: str, port: int, headers: dict[str, str] | None = None, timeout_s: float = 30.0
    ) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
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


# --- processes under test -------------------------------------------------------------------------

#: Runs ``jobferry.cli.main`` with cProfile in every thread (argv: OUT jobferry-args...).
PROFILED_MAIN = """
import cProfile, pstats, sys, threading
out = sys.argv[1]
profiles = []
def _start(frame, event, arg):
    sys.setprofile(None)
    prof = cProfile.Profile()
    profiles.append(prof)
    prof.enable()
threading.setprofile(_start)
from jobferry.cli import main
main_prof = cProfile.Profile()
main_prof.enable()
code = 1
try:
    code = main(sys.argv[2:])
finally:
    main_prof.disable()
    stats = pstats.Stats(main_prof)
    for prof in profiles:
        try:
            stats.add(prof)
        except Exception as exc:
            print("profile of a thread lost:", exc, file=sys.stderr)
    stats.dump_stats(out)
sys.exit(code)
"""

#: The loopback reference: the smallest Tornado server answering like a submission.
HELLO_SERVER = """
import asyncio, tornado.httpserver, tornado.netutil, tornado.web
BODY = b'{"valid": true, "job_id": "0123456789abcdef"}'
class Hello(tornado.web.RequestHandler):
    def set_default_headers(self):
        self.set_header("Content-Type", "application/json; charset=UTF-8")
    def get(self, *args):
        self.finish(BODY)
    def post(self, *args):
        self.finish(BODY)
async def main():
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server = tornado.httpserver.HTTPServer(tornado.web.Application([(r"/(.*)", Hello)]))
    server.add_sockets(sockets)
    print(sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


class Managed:
    """A subprocess this benchmark started; stopped by its pid, never by name."""

    registry: list[Managed] = []

    def __init__(self, name: str) -> None:
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None
        Managed.registry.append(self)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int | None:
        """Signal the process and wait for it; SIGKILL after *timeout_s*."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log(f"{self.name} (pid {proc.pid}) ignored signal {sig}: killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
        return proc.returncode

    @classmethod
    def stop_all(cls) -> None:
        for managed in reversed(cls.registry):
            try:
                managed.stop()
            except Exception as exc:  # keep stopping the others
                log(f"could not stop {managed.name}: {exc}")


class Daemon(Managed):
    """``jobferry serve --port 0`` with its own data directory."""

    def __init__(
        self,
        name: str,
        workdir: Path,
        config: dict[str, Any] | None = None,
        profile_path: Path | None = None,
    ) -> None:
        super().__init__(name)
        self.data_dir = workdir / name
        self.data_dir.mkdir(parents=True)
        self.log_path = workdir / f"{name}.log"
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = workdir / f"{name}.yml"
            self.config_path.write_text(json.dumps(config))  # JSON is YAML
        self.profile_path = profile_path
        self.url = ""
        self.host = ""
        self.port = 0
        self.key = ""

    async def start(self, deadline: Deadline, timeout_s: float = 60.0) -> Daemon:
        args = ["serve", "--port", "0", "--data-dir", str(self.data_dir)]
        if self.config_path is not None:
            args += ["--config", str(self.config_path)]
        if self.profile_path is not None:
            cmd = [sys.executable, "-c", PROFILED_MAIN, str(self.profile_path), *args]
        else:
            cmd = [sys.executable, "-m", "jobferry.cli", *args]
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=daemon_env(), cwd=ROOT
            )
        state = self.data_dir / "daemon.json"
        limit = time.monotonic() + min(timeout_s, deadline.remaining())
        while time.monotonic() < limit:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited at start: {self.log_tail()}")
            try:
                info = json.loads(state.read_text())
                if info["pid"] == self.proc.pid:
                    self.url = info["url"]
                    break
            except (FileNotFoundError, ValueError, KeyError):
                pass
            await asyncio.sleep(0.05)
        else:
            raise BenchError(f"{self.name} did not start in time: {self.log_tail()}")
        hostport = self.url.split("://", 1)[1]
        host, _, port = hostport.rpartition(":")
        self.host, self.port = host, int(port)
        self.key = (self.data_dir / "admin-api-key").read_text().strip()
        return self

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def conn(self) -> HttpConn:
        return HttpConn(self.host, self.port, {"Authorization": f"Bearer {self.key}"})

    def rss_bytes(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def cpu(self) -> tuple[float, float]:
        """(the daemon's own CPU seconds, CPU seconds of its reaped children)."""
        times = psutil.Process(self.pid).cpu_times()
        return times.user + times.system, times.children_user + times.children_system

    async def register(self, script: Path) -> str:
        """Register *script* (field name = script name); return its slug."""

        def post() -> requests.Response:
            with open(script, "rb") as handle:
                return requests.post(
                    self.url + "/api/scripts/v1/add-or-update/",
                    headers={"Authorization": f"Bearer {self.key}"},
                    files={script.stem: (script.name, handle)},
                    timeout=60,
                )

        response = await asyncio.to_thread(post)
        if response.status_code != 200 or not response.json()[0].get("success"):
            raise BenchError(f"registering {script.name} failed: {response.text}")
        return str(response.json()[0]["slug"])


class HelloServer(Managed):
    """The loopback HTTP reference in its own process."""

    def __init__(self) -> None:
        super().__init__("hello-world server")
        self.port = 0

    async def start(self, timeout_s: float = 30.0) -> HelloServer:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HELLO_SERVER],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=daemon_env(),
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), timeout_s)
        if not line.strip().isdigit():
            raise BenchError("the hello-world server did not start")
        self.port = int(line)
        return self

    def conn(self) -> HttpConn:
        return HttpConn("127.0.0.1", self.port)


# --- job helpers ----------------------------------------------------------------------------------


async def submit(conn: HttpConn, slug: str) -> str:
    status, body = await conn.request(
        "POST", f"/api/scripts/v1/{slug}/submit/", SUBMIT_BODY, FORM_TYPE
    )
    if status != 200:
        raise BenchError(f"submit answered {status}: {body[:300]!r}")
    answer = json.loads(body)
    if not answer.get("valid"):
        raise BenchError(f"submit refused: {body[:300]!r}")
    return str(answer["job_id"])


async def job_status(conn: HttpConn, job_id: str, wait_s: float = 0) -> tuple[bool, str]:
    """The job's status; with *wait_s*, the daemon answers once it completes (long-poll)."""
    query = f"?wait={wait_s:g}" if wait_s else ""
    status, body = await conn.request("GET", f"/api/jobs/v1/{job_id}/status/{query}")
    if status != 200:
        raise BenchError(f"status of {job_id} answered {status}: {body[:300]!r}")
    answer = json.loads(body)
    return bool(answer["is_complete"]), str(answer["status"])


async def submit_many(conns: Sequence[HttpConn], slug: str, count: int) -> list[str]:
    """Submit *count* jobs over the pool; ids in the order the answers came back."""
    order: list[str] = []

    async def one(conn: HttpConn, _index: int) -> str:
        job_id = await submit(conn, slug)
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


def _epoch(text: object) -> float | None:
    if not text:
        return None
    return datetime.fromisoformat(str(text)).replace(tzinfo=UTC).timestamp()


def store_times(daemon: Daemon, ids: Sequence[str]) -> dict[str, dict[str, float | None]]:
    """created/started/finished (epoch s) and wall_s of *ids*, read from the SQLite store.

    Read-only and after the fact: a cross-check and a breakdown of where time
    goes, never part of a timed interval.
    """
    path = daemon.data_dir / "jobferry.db"
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


# --- bare references ------------------------------------------------------------------------------


async def spawn_many(
    argv: Sequence[str], count: int, concurrency: int, cwd: str, deadline: Deadline
) -> tuple[float, int]:
    """Spawn *argv* *count* times, *concurrency* at a time; (seconds, failures)."""
    cursor = 0
    failures = 0
    env = job_env(cwd)

    async def worker() -> None:
        nonlocal cursor, failures
        while cursor < count:
            cursor += 1
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd=cwd,
                env=env,
            )
            if await proc.wait() != 0:
                failures += 1

    t0 = time.perf_counter()
    await deadline.bounded(
        asyncio.gather(*(worker() for _ in range(concurrency))), f"spawning {argv[0]}"
    )
    return time.perf_counter() - t0, failures


async def spawn_sequential(
    argv: Sequence[str], count: int, cwd: str, deadline: Deadline
) -> list[float]:
    """Spawn-and-wait times of *argv*, one after the other, in seconds."""
    env = job_env(cwd)
    times: list[float] = []
    for _ in range(count):
        deadline.check("sequential spawns")
        t0 = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=cwd,
            env=env,
        )
        await proc.wait()
        times.append(time.perf_counter() - t0)
    return times


# --- results --------------------------------------------------------------------------------------


@dataclass
class Row:
    figure: str
    value: float | None
    unit: str
    reference: float | None = None
    reference_label: str = ""
    ratio: float | None = None
    target: str = ""
    passed: bool | None = None  # None: informational
    other_load: float | None = None  # cores of other work while measured (max of both)


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip()


def table(rows: Sequence[Row]) -> str:
    header = ("figure", "value", "reference", "ratio", "target", "result", "other load")
    lines = []
    for row in rows:
        ref = fmt(row.reference, row.unit) if row.reference is not None else "-"
        if row.reference_label:
            ref = f"{ref} ({row.reference_label})"
        result = "info" if row.passed is None else ("PASS" if row.passed else "FAIL")
        ratio = "-" if row.ratio is None else f"{row.ratio:.2f}"
        other = "-" if row.other_load is None else f"{row.other_load:.2f} cores"
        lines.append(
            (row.figure, fmt(row.value, row.unit), ref, ratio, row.target or "-", result, other)
        )
    widths = [max(len(str(r[i])) for r in [header, *lines]) for i in range(len(header))]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    out.append("  ".join("-" * w for w in widths))
    out.extend(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in lines
    )
    return "\n".join(out)


# --- the measurements -----------------------------------------------------------------------------


@dataclass
class Settings:
    jobs: int
    latency_jobs: int
    accept_jobs: int
    rss_jobs: int
    fork_spawns: int
    concurrency: int
    accept_concurrency: int
    time_limit_s: float
    wait_idle_s: float
    latency_poll_s: float
    latency_long_poll: bool
    retries: int
    profile: bool
    keep: bool
    quick: bool


class Bench:
    def __init__(self, settings: Settings, workdir: Path, stamp: str) -> None:
        self.s = settings
        self.workdir = workdir
        self.stamp = stamp
        self.deadline = Deadline(settings.time_limit_s)
        self.results = Results()
        self.spawn_cwd = str(workdir / "spawn-cwd")
        Path(self.spawn_cwd).mkdir()
        self.python = sys.executable

    def row(self, row: Row) -> None:
        self.results.rows.append(row)

    def profile_path(self, name: str) -> Path | None:
        if not self.s.profile:
            return None
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        return RESULTS_DIR / f"profile-{self.stamp}-{name}.prof"

    async def run(self) -> None:
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("fork+exec reference", self.fork_reference),
            ("bare spawn references", self.bare_references),
            ("daemon throughput, latency and memory", self.daemon_figures),
            ("acceptance", self.acceptance),
        ]
        for name, step in steps:
            log(f"== {name}")
            try:
                await self.background_load(name)
                await step()
            except BenchError as exc:
                log(f"!! {name} failed: {exc}")
                self.results.errors.append(f"{name}: {exc}")
            except Exception as exc:
                log(f"!! {name} failed: {type(exc).__name__}: {exc}")
                self.results.errors.append(f"{name}: {type(exc).__name__}: {exc}")

    async def background_load(self, name: str) -> None:
        """Busy cores while this benchmark is idle: other work on the machine skews figures.

        Waits (up to --wait-idle seconds) for the machine to be quiet first.
        """
        limit = time.monotonic() + min(self.s.wait_idle_s, max(0.0, self.deadline.remaining()))
        while True:
            busy = machine_busy()
            await asyncio.sleep(1.0)
            cores = busy()
            if cores <= IDLE_CORES or time.monotonic() >= limit:
                break
        self.results.details.setdefault("background_load_cores", {})[name] = cores
        if cores > IDLE_CORES:
            log(f"WARNING: {cores:.2f} cores busy with other work before '{name}'")

    async def best_of(
        self, name: str, run: Callable[[], Awaitable[dict[str, Any]]]
    ) -> dict[str, Any]:
        """Run a measurement; repeat it while other work disturbed it; keep the least disturbed.

        *run* returns its details with ``other_cores`` (see LoadMeter).
        """
        best: dict[str, Any] | None = None
        others: list[float] = []
        for attempt in range(1 + self.s.retries):
            if attempt:
                await self.background_load(name)
            info = await run()
            others.append(round(float(info["other_cores"]), 3))
            if best is None or info["other_cores"] < best["other_cores"]:
                best = info
            if info["other_cores"] <= NOISY_CORES:
                break
            more = " again" if attempt < self.s.retries else ""
            log(f"{name}: {info['other_cores']:.2f} cores of other work meanwhile{more}")
        assert best is not None
        best["attempts_other_cores"] = others
        return best

    # 0. the machine's limit: fork+exec of /bin/true

    async def fork_reference(self) -> None:
        n, c = self.s.fork_spawns, CPUS

        async def run() -> dict[str, Any]:
            meter = LoadMeter(lambda: own_cpu_s() + children_cpu_s())
            seconds, failures = await spawn_many(["/bin/true"], n, c, self.spawn_cwd, self.deadline)
            load = meter.stop()
            rate = n / seconds
            log(f"/bin/true: {n} spawns, {c} at a time, {seconds:.2f}s: {rate:.0f}/s")
            if failures:
                raise BenchError(f"{failures} /bin/true runs failed")
            return {"spawns": n, "concurrency": c, "seconds": seconds, "rate": rate, **load}

        info = await self.best_of("fork+exec reference", run)
        self.results.details["fork_exec"] = info
        self.row(
            Row(
                f"fork+exec /bin/true (c={c})",
                info["rate"],
                "/s",
                target="machine limit",
                other_load=info["other_cores"],
            )
        )

    # 1b/2b. bare python noop.py: concurrent and sequential

    async def bare_references(self) -> None:
        await self.bare_run("before")

    async def bare_run(self, label: str) -> None:
        info = await self.best_of(f"bare noop.py ({label})", lambda: self.bare_once(label))
        self.results.details.setdefault("bare_noop", {})[label] = info

    async def bare_once(self, label: str) -> dict[str, Any]:
        """Bare python noop.py: N at the daemon's concurrency, then one at a time.

        Run before and after the daemon's throughput and latency tests; the
        reference is the mean of both, so a change in background load during
        the run affects the reference as much as the figure.
        """
        argv = [self.python, str(NOOP)]
        n, c = self.s.jobs, self.s.concurrency
        meter = LoadMeter(lambda: own_cpu_s() + children_cpu_s())
        cpu0, own0 = children_cpu_s(), own_cpu_s()
        seconds, failures = await spawn_many(argv, n, c, self.spawn_cwd, self.deadline)
        load = meter.stop()
        if failures:
            raise BenchError(f"{failures} bare noop.py runs failed")
        rate = n / seconds
        info: dict[str, Any] = {
            "jobs": n,
            "concurrency": c,
            "seconds": seconds,
            "jobs_per_s": rate,
            "cpu_per_job_ms": 1000 * (children_cpu_s() - cpu0) / n,
            "spawner_cpu_per_job_ms": 1000 * (own_cpu_s() - own0) / n,
            **load,
        }
        log(f"bare noop.py x{n}, {c} at a time ({label}): {seconds:.2f}s = {rate:.1f} jobs/s")
        meter = LoadMeter(lambda: own_cpu_s() + children_cpu_s())
        times = await spawn_sequential(argv, self.s.latency_jobs, self.spawn_cwd, self.deadline)
        sequential_other = meter.stop()["other_cores"]
        info.update(
            sequential_other_cores=sequential_other,
            concurrent_other_cores=load["other_cores"],
            other_cores=max(load["other_cores"], sequential_other),
            sequential_runs=len(times),
            sequential_median_ms=1000 * statistics.median(times),
            sequential_p99_ms=1000 * percentile(times, 99),
        )
        log(
            f"bare noop.py sequential ({label}): median {info['sequential_median_ms']:.1f} ms,"
            f" p99 {info['sequential_p99_ms']:.1f} ms"
        )
        return info

    def bare_other(self, key: str) -> float | None:
        """The most other work seen while the bare references (*key*) were measured."""
        runs = self.results.details.get("bare_noop", {})
        values = [float(run[key]) for run in runs.values() if key in run]
        return max(values) if values else None

    def bare(self, key: str) -> float | None:
        """The mean of a bare figure over the before/after runs (None if neither ran)."""
        runs = self.results.details.get("bare_noop", {})
        values = [float(run[key]) for run in runs.values() if key in run]
        if len(values) == 2 and min(values) < 0.8 * max(values):
            log(f"WARNING: bare {key} changed during the run: {values[0]:.1f} -> {values[1]:.1f}")
        return statistics.mean(values) if values else None

    # 1, 2, 4: one normal daemon

    async def daemon_figures(self) -> None:
        daemon = Daemon("daemon", self.workdir, profile_path=self.profile_path("daemon"))
        try:
            await daemon.start(self.deadline)
            slug = await daemon.register(NOOP)
            await asyncio.sleep(1.0)  # let start-up settle before sampling memory
            self.rss_idle = daemon.rss_bytes()
            log(f"daemon pid {daemon.pid} at {daemon.url}; idle RSS {self.rss_idle / MB:.1f} MB")
            self.completed = 0
            await self.throughput(daemon, slug)
            await self.latency(daemon, slug)
            completed = self.completed
            log("bare references again (the daemon is idle)")
            try:
                await self.bare_run("after")
            finally:
                self.speed_rows()
            await self.memory(daemon, slug, completed)
        finally:
            code = daemon.stop(signal.SIGINT if daemon.profile_path else signal.SIGTERM)
            if code not in (0, None):
                log(f"daemon exited with {code}: {daemon.log_tail()}")
            self.report_profile(daemon.profile_path)

    def daemon_meter(self, daemon: Daemon) -> LoadMeter:
        return LoadMeter(lambda: own_cpu_s() + children_cpu_s() + sum(daemon.cpu()))

    async def throughput(self, daemon: Daemon, slug: str) -> None:
        info = await self.best_of("throughput", lambda: self.throughput_once(daemon, slug))
        self.results.details["throughput"] = info
        if info["failed_jobs"]:
            self.results.errors.append(f"throughput: {info['failed_jobs']} jobs did not succeed")

    async def throughput_once(self, daemon: Daemon, slug: str) -> dict[str, Any]:
        n = self.s.jobs
        conns = [daemon.conn() for _ in range(self.s.accept_concurrency)]
        peak = [daemon.rss_bytes()]

        def sample() -> None:
            peak[0] = max(peak[0], daemon.rss_bytes())

        try:
            meter = self.daemon_meter(daemon)
            cpu0, kids0 = daemon.cpu()
            client0 = own_cpu_s()
            wall0 = time.time()
            t0 = time.perf_counter()
            ids = await self.deadline.bounded(submit_many(conns, slug, n), "submitting")
            t_submitted = time.perf_counter() - t0
            done = await wait_all(
                conns[:4], ids, self.deadline, window=4 * self.s.concurrency, on_round=sample
            )
            seconds = done.t_end - t0
            cpu1, kids1 = daemon.cpu()
            load = meter.stop()
            client_cpu = own_cpu_s() - client0
            self.completed += n
        finally:
            for conn in conns:
                conn.close()
        rate = n / seconds
        finished = [t["finished"] for t in store_times(daemon, ids).values() if t["finished"]]
        db_span = max(finished) - wall0 if finished else None
        info = {
            "jobs": n,
            "submit_connections": len(conns),
            "slots": self.s.concurrency,
            "all_submitted_s": t_submitted,
            "all_complete_s": seconds,
            "jobs_per_s": rate,
            "last_finished_at_per_store_s": db_span,
            "failed_jobs": done.failed,
            "status_requests": done.status_requests,
            "late_jobs": done.late,
            "daemon_cpu_per_job_ms": 1000 * (cpu1 - cpu0) / n,
            "job_processes_cpu_per_job_ms": 1000 * (kids1 - kids0) / n,
            "client_cpu_s": client_cpu,
            "daemon_peak_rss_mb": peak[0] / MB,
            **load,
        }
        log(
            f"{n} jobs: all accepted after {t_submitted:.2f}s, all complete after {seconds:.2f}s"
            f" = {rate:.1f} jobs/s; daemon CPU {info['daemon_cpu_per_job_ms']:.1f} ms/job,"
            f" job processes {info['job_processes_cpu_per_job_ms']:.1f} ms/job, machine busy"
            f" {load['busy_cores']:.2f}/{CPUS} cores (other work {load['other_cores']:.2f}),"
            f" client CPU {client_cpu:.2f}s"
        )
        if db_span is not None:
            log(f"cross-check: the store's last finished_at is {db_span:.2f}s after 1st submit")
        return info

    async def latency(self, daemon: Daemon, slug: str) -> None:
        info = await self.best_of("latency", lambda: self.latency_once(daemon, slug))
        self.results.details["latency"] = info
        if info["failed_jobs"]:
            self.results.errors.append(f"latency: {info['failed_jobs']} jobs did not succeed")

    async def latency_once(self, daemon: Daemon, slug: str) -> dict[str, Any]:
        n = self.s.latency_jobs
        conn = daemon.conn()
        times: list[float] = []
        submit_times: list[float] = []
        marks: list[tuple[str, float, float]] = []  # (job id, wall start, wall end)
        polls = 0
        failed = 0
        cpu0, _ = daemon.cpu()
        meter = self.daemon_meter(daemon)
        try:
            for _ in range(n):
                self.deadline.check("the latency test")
                wall0 = time.time()
                t0 = time.perf_counter()
                job_id = await submit(conn, slug)
                submit_times.append(time.perf_counter() - t0)
                limit = time.perf_counter() + 60
                while True:
                    wait_s = 30.0 if self.s.latency_long_poll else 0.0
                    complete, status = await job_status(conn, job_id, wait_s)
                    polls += 1
                    if complete:
                        break
                    if time.perf_counter() > limit:
                        raise BenchError(f"job {job_id} took over 60s")
                    await asyncio.sleep(self.s.latency_poll_s)
                times.append(time.perf_counter() - t0)
                marks.append((job_id, wall0, wall0 + times[-1]))
                failed += status != "completed"
        finally:
            conn.close()
        load = meter.stop()
        self.completed += len(times)
        median_ms = 1000 * statistics.median(times)
        p99_ms = 1000 * percentile(times, 99)
        info: dict[str, Any] = {
            "jobs": n,
            "median_ms": median_ms,
            "p99_ms": p99_ms,
            "min_ms": 1000 * min(times),
            "submit_median_ms": 1000 * statistics.median(submit_times),
            "submit_p99_ms": 1000 * percentile(submit_times, 99),
            "status_polls_per_job": polls / n,
            "daemon_cpu_per_job_ms": 1000 * (daemon.cpu()[0] - cpu0) / n,
            "failed_jobs": failed,
            **load,
        }
        info["breakdown_median_ms"] = breakdown = self.latency_breakdown(daemon, marks)
        if breakdown:
            log(
                "latency breakdown (medians, from the store): "
                + ", ".join(f"{k} {v:.1f} ms" for k, v in breakdown.items())
            )
        log(
            f"latency over {n} jobs: median {median_ms:.1f} ms, p99 {p99_ms:.1f} ms "
            f"(submit answered in {info['submit_median_ms']:.1f} ms median; "
            f"{info['status_polls_per_job']:.1f} polls and "
            f"{info['daemon_cpu_per_job_ms']:.1f} ms of daemon CPU per job; other work "
            f"{load['other_cores']:.2f} cores)"
        )
        return info

    def speed_rows(self) -> None:
        """Summary rows of throughput and latency, against the mean bare references."""
        tp = self.results.details.get("throughput")
        if tp is not None:
            bare_rate = self.bare("jobs_per_s")
            rate = float(tp["jobs_per_s"])
            ratio = rate / bare_rate if bare_rate else None
            self.row(
                Row(
                    f"throughput, {tp['jobs']} noop jobs (slots={tp['slots']})",
                    rate,
                    "jobs/s",
                    bare_rate,
                    "bare spawn",
                    ratio,
                    f"ratio >= {TARGET_THROUGHPUT_RATIO:.2f}",
                    None
                    if ratio is None
                    else ratio >= TARGET_THROUGHPUT_RATIO and not tp["failed_jobs"],
                    max(tp["other_cores"], self.bare_other("concurrent_other_cores") or 0.0),
                )
            )
        lat = self.results.details.get("latency")
        if lat is not None:
            median_ms, p99_ms = float(lat["median_ms"]), float(lat["p99_ms"])
            bare_median = self.bare("sequential_median_ms")
            bare_p99 = self.bare("sequential_p99_ms")
            other = max(lat["other_cores"], self.bare_other("sequential_other_cores") or 0.0)
            self.row(
                Row(
                    "submit->complete latency, median",
                    median_ms,
                    "ms",
                    bare_median,
                    "bare spawn",
                    None if not bare_median else median_ms / bare_median,
                    f"<= bare + {TARGET_LATENCY_OVERHEAD_MS:.0f} ms",
                    None
                    if bare_median is None
                    else median_ms <= bare_median + TARGET_LATENCY_OVERHEAD_MS
                    and not lat["failed_jobs"],
                    other,
                )
            )
            reaped = lat.get("breakdown_median_ms", {}).get("submit->reaped (daemon side)")
            if reaped is not None:
                self.row(
                    Row(
                        "submit->reaped (store), median",
                        float(reaped),
                        "ms",
                        bare_median,
                        "bare spawn",
                        None if not bare_median else float(reaped) / bare_median,
                        other_load=other,
                    )
                )
            self.row(
                Row(
                    "submit->complete latency, p99",
                    p99_ms,
                    "ms",
                    bare_p99,
                    "bare spawn",
                    None if not bare_p99 else p99_ms / bare_p99,
                    other_load=other,
                )
            )

    @staticmethod
    def latency_breakdown(
        daemon: Daemon, marks: Sequence[tuple[str, float, float]]
    ) -> dict[str, float]:
        """Median of each step of a job's life, from the store's timestamps (ms)."""
        stored = store_times(daemon, [m[0] for m in marks])
        steps: dict[str, list[float]] = {
            "submit->row committed": [],
            "row->claimed": [],
            "claimed->spawned": [],
            "spawned->reaped (wrapper+job)": [],
            "reaped->seen complete": [],
            "submit->reaped (daemon side)": [],
        }
        for job_id, start, end in marks:
            t = stored.get(job_id)
            if not t or None in (t["created"], t["started"], t["finished"], t["wall_s"]):
                continue
            created, started, finished, wall_s = (
                float(t["created"] or 0),
                float(t["started"] or 0),
                float(t["finished"] or 0),
                float(t["wall_s"] or 0),
            )
            spawned = finished - wall_s
            steps["submit->row committed"].append(created - start)
            steps["row->claimed"].append(started - created)
            steps["claimed->spawned"].append(spawned - started)
            steps["spawned->reaped (wrapper+job)"].append(wall_s)
            steps["reaped->seen complete"].append(end - finished)
            steps["submit->reaped (daemon side)"].append(finished - start)
        return {k: 1000 * statistics.median(v) for k, v in steps.items() if v}

    async def memory(self, daemon: Daemon, slug: str, completed: int) -> None:
        target_jobs = self.s.rss_jobs
        checkpoints = [{"completed_jobs": completed, "rss_mb": daemon.rss_bytes() / MB}]
        conns = [daemon.conn() for _ in range(8)]
        failed = 0
        peak = daemon.rss_bytes()
        try:
            while completed < target_jobs:
                batch = min(RSS_BATCH, target_jobs - completed)
                ids = await self.deadline.bounded(submit_many(conns, slug, batch), "submitting")
                done = await wait_all(conns[:4], ids, self.deadline, window=4 * self.s.concurrency)
                completed += batch
                failed += done.failed
                rss = daemon.rss_bytes()
                peak = max(peak, rss)
                checkpoints.append({"completed_jobs": completed, "rss_mb": rss / MB})
                log(f"{completed} jobs completed: daemon RSS {rss / MB:.1f} MB")
        finally:
            for conn in conns:
                conn.close()
        rss_after = daemon.rss_bytes()
        self.results.details["memory"] = {
            "idle_rss_mb": self.rss_idle / MB,
            "rss_after_mb": rss_after / MB,
            "peak_rss_sampled_mb": max(peak, rss_after) / MB,
            "completed_jobs": completed,
            "failed_jobs": failed,
            "checkpoints": checkpoints,
        }
        if failed:
            self.results.errors.append(f"memory: {failed} jobs did not succeed")
        hello_rss = await self.hello_rss()
        self.row(
            Row(
                "daemon RSS, idle (registered script)",
                self.rss_idle / MB,
                "MB",
                hello_rss,
                "hello-world",
                None if not hello_rss else self.rss_idle / MB / hello_rss,
                f"<= {TARGET_RSS_MB:.0f} MB",
                self.rss_idle / MB <= TARGET_RSS_MB,
            )
        )
        self.row(
            Row(
                f"daemon RSS, after {completed} jobs",
                rss_after / MB,
                "MB",
                self.rss_idle / MB,
                "idle",
                rss_after / self.rss_idle,
                f"<= {TARGET_RSS_MB:.0f} MB",
                rss_after / MB <= TARGET_RSS_MB and not failed,
            )
        )

    async def hello_rss(self) -> float | None:
        """RSS of an idle hello-world Tornado process (what Python + Tornado costs)."""
        server = HelloServer()
        try:
            await server.start()
            await asyncio.sleep(0.5)
            return float(psutil.Process(server.pid).memory_info().rss) / MB
        except (BenchError, TimeoutError, psutil.Error) as exc:
            log(f"hello-world RSS not measured: {exc}")
            return None
        finally:
            server.stop()

    # 3. acceptance with no slots, against the loopback reference

    async def measure_pool(
        self,
        make_conn: Callable[[], HttpConn],
        task: Callable[[HttpConn, int], Awaitable[Any]],
        server_cpu: Callable[[], float],
        n: int,
    ) -> dict[str, Any]:
        """Requests/s of *n* requests made by *task* over a pool (after a short warm-up),
        CPU use and other work."""
        conns = [make_conn() for _ in range(self.s.accept_concurrency)]
        try:
            warm = min(n, 2 * len(conns))
            await self.deadline.bounded(run_pool(conns, warm, task), "warm-up")
            client0, server0 = own_cpu_s(), server_cpu()
            meter = LoadMeter(lambda: own_cpu_s() + server_cpu())
            t0 = time.perf_counter()
            await self.deadline.bounded(run_pool(conns, n, task), "the request pool")
            seconds = time.perf_counter() - t0
            return {
                "requests": n,
                "connections": len(conns),
                "requests_per_s": n / seconds,
                "server_cpu_per_request_ms": 1000 * (server_cpu() - server0) / n,
                "client_cpu_s": own_cpu_s() - client0,
                **meter.stop(),
            }
        finally:
            for conn in conns:
                conn.close()

    async def acceptance(self) -> None:
        """Submissions/s with no slots, against the hello-world server, in alternating
        rounds (daemon, hello-world, daemon, ...): this machine's speed drifts by tens
        of percent within seconds, so each figure is the median of its rounds, each
        round next to a reference measured moments apart."""
        config = {"runners": {"local": {"slots": 0}}}
        daemon = Daemon(
            "accept-daemon", self.workdir, config, profile_path=self.profile_path("accept")
        )
        hello = HelloServer()
        rounds = ACCEPT_ROUNDS
        per_round = max(2, self.s.accept_jobs // rounds)
        ours: list[dict[str, Any]] = []
        refs: list[dict[str, Any]] = []
        try:
            await daemon.start(self.deadline)
            slug = await daemon.register(NOOP)
            await hello.start()

            async def submit_task(conn: HttpConn, _index: int) -> str:
                return await submit(conn, slug)

            async def hello_task(conn: HttpConn, _index: int) -> int:
                status, _ = await conn.request(
                    "POST", "/api/scripts/v1/noop/submit/", SUBMIT_BODY, FORM_TYPE
                )
                return status

            def hello_cpu() -> float:
                times = psutil.Process(hello.pid).cpu_times()
                return float(times.user + times.system)

            for index in range(rounds):
                info = await self.best_of(
                    "acceptance",
                    lambda: self.measure_pool(
                        daemon.conn, submit_task, lambda: daemon.cpu()[0], per_round
                    ),
                )
                ref = await self.best_of(
                    "hello-world",
                    lambda: self.measure_pool(hello.conn, hello_task, hello_cpu, per_round),
                )
                ours.append(info)
                refs.append(ref)
                log(
                    f"acceptance round {index + 1}/{rounds}: {per_round} submissions over"
                    f" {info['connections']} connections: {info['requests_per_s']:.0f}/s"
                    f" (daemon CPU {info['server_cpu_per_request_ms']:.2f} ms/submission,"
                    f" other work {info['other_cores']:.2f} cores); hello-world"
                    f" {ref['requests_per_s']:.0f}/s (server CPU"
                    f" {ref['server_cpu_per_request_ms']:.2f} ms/request)"
                )
            daemon.stop(signal.SIGINT if daemon.profile_path else signal.SIGTERM)
            self.report_profile(daemon.profile_path)
        finally:
            hello.stop()
            daemon.stop()

        def median_of(items: list[dict[str, Any]], key: str) -> float:
            return float(statistics.median(float(item[key]) for item in items))

        rate = median_of(ours, "requests_per_s")
        hello_rate = median_of(refs, "requests_per_s")
        summary = {
            "rounds": rounds,
            "requests_per_round": per_round,
            "requests_per_s": rate,
            "server_cpu_per_request_ms": median_of(ours, "server_cpu_per_request_ms"),
            "other_cores": max(float(item["other_cores"]) for item in ours),
        }
        reference = {
            "requests_per_s": hello_rate,
            "server_cpu_per_request_ms": median_of(refs, "server_cpu_per_request_ms"),
            "other_cores": max(float(item["other_cores"]) for item in refs),
        }
        log(
            f"acceptance, median of {rounds} rounds: {rate:.0f}/s (daemon CPU"
            f" {summary['server_cpu_per_request_ms']:.2f} ms/submission); hello-world"
            f" {hello_rate:.0f}/s; ratio {rate / hello_rate:.2f}"
        )
        self.results.details["acceptance"] = {
            "daemon": summary,
            "hello_world": reference,
            "rounds": [{"daemon": a, "hello_world": b} for a, b in zip(ours, refs, strict=True)],
        }
        self.row(
            Row(
                f"submission acceptance (slots=0, c={self.s.accept_concurrency}, median)",
                rate,
                "/s",
                hello_rate,
                "hello-world",
                rate / hello_rate,
                f">= {TARGET_ACCEPT_PER_S:.0f}/s",
                rate >= TARGET_ACCEPT_PER_S,
                max(summary["other_cores"], reference["other_cores"]),
            )
        )

    def report_profile(self, path: Path | None, top: int = 25) -> None:
        if path is None:
            return
        if not path.exists():
            log(f"no profile written at {path}")
            return
        log(f"profile {path} (all threads; wall time, so idle waits show too), top by tottime:")
        stats = pstats.Stats(str(path))
        stats.sort_stats("tottime").print_stats(top)
        sys.stdout.flush()


# --- main -----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, help="jobs in the throughput test (500; quick 100)")
    parser.add_argument("--latency-jobs", type=int, help="sequential jobs (100; quick 20)")
    parser.add_argument("--accept-jobs", type=int, help="submissions, slots=0 (2000; quick 300)")
    parser.add_argument("--rss-jobs", type=int, help="jobs before the RSS (10000; quick 1000)")
    parser.add_argument("--fork-spawns", type=int, help="/bin/true spawns (2000; quick 300)")
    parser.add_argument(
        "--accept-concurrency", type=int, default=16, help="client connections (16)"
    )
    parser.add_argument("--time-limit", type=float, help="overall limit, s (1800; quick 300)")
    parser.add_argument(
        "--latency-poll",
        action="store_true",
        help="in the latency test, poll status every --latency-poll-ms instead of the "
        "daemon's long-poll (status/?wait=30), as a plain Wooey client would",
    )
    parser.add_argument(
        "--latency-poll-ms",
        type=float,
        default=1000 * LATENCY_POLL_S,
        help="status poll interval in the latency test, ms (2)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        help="repeat a measurement up to this many times when other work used more than"
        f" {NOISY_CORES} cores meanwhile; the least disturbed attempt counts (2; quick 0)",
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        help="before each part, wait up to this many seconds for other work on the machine"
        " to stop (30; quick 0)",
    )
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run the daemons under cProfile (all threads); figures are then not comparable",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    quick = bool(args.quick)

    def pick(value: int | float | None, full: float, small: float) -> float:
        return float(value) if value is not None else (small if quick else full)

    settings = Settings(
        jobs=int(pick(args.jobs, 500, 100)),
        latency_jobs=int(pick(args.latency_jobs, 100, 20)),
        accept_jobs=int(pick(args.accept_jobs, 2000, 300)),
        rss_jobs=int(pick(args.rss_jobs, 10000, 1000)),
        fork_spawns=int(pick(args.fork_spawns, 2000, 300)),
        concurrency=CPUS,
        accept_concurrency=int(args.accept_concurrency),
        time_limit_s=pick(args.time_limit, 1800, 300),
        wait_idle_s=pick(args.wait_idle, 30, 0),
        latency_poll_s=max(0.0, float(args.latency_poll_ms)) / 1000,
        latency_long_poll=not args.latency_poll,
        retries=max(0, int(pick(args.retries, 2, 0))),
        profile=bool(args.profile),
        keep=bool(args.keep),
        quick=quick,
    )
    if min(settings.jobs, settings.latency_jobs, settings.accept_jobs, settings.fork_spawns) < 2:
        parser.error("every count must be at least 2")
    if not 1 <= settings.accept_concurrency <= 256:
        parser.error("--accept-concurrency must be in 1..256")
    return settings


def git_state() -> dict[str, Any]:
    """The commit measured and whether the tree had local changes (read-only git calls)."""
    state: dict[str, Any] = {}
    for key, args in (("commit", ["rev-parse", "HEAD"]), ("changes", ["status", "--porcelain"])):
        try:
            out = subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
            ).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        state[key] = out.strip() if key == "commit" else len(out.splitlines())
    return state


def write_json(bench: Bench, settings: Settings, stamp: str, seconds: float) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"throughput-{stamp}.json"
    data = {
        "timestamp": stamp,
        "duration_s": seconds,
        "machine": {
            "cpus": CPUS,
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "executable": sys.executable,
            "memory_mb": psutil.virtual_memory().total / MB,
        },
        "git": git_state(),
        "settings": asdict(settings),
        "summary": [asdict(row) for row in bench.results.rows],
        "details": bench.results.details,
        "errors": bench.results.errors,
        "passed": bool(bench.results.rows)
        and not bench.results.errors
        and all(row.passed is not False for row in bench.results.rows),
    }
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)

    def on_sigterm(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    workdir = Path(tempfile.mkdtemp(prefix="jobferry-bench-"))
    t0 = time.monotonic()
    log(
        f"jobferry throughput benchmark: {CPUS} CPUs, {sys.executable}, data in {workdir}"
        + (" (quick)" if settings.quick else "")
    )
    bench = Bench(settings, workdir, stamp)
    interrupted = False
    try:
        asyncio.run(bench.run())
    except KeyboardInterrupt:
        interrupted = True
        bench.results.errors.append("interrupted")
        log("interrupted")
    finally:
        Managed.stop_all()
        if settings.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    seconds = time.monotonic() - t0
    print()
    print(f"Summary ({CPUS} CPUs, {seconds:.0f}s run{', quick' if settings.quick else ''}):")
    print(table(bench.results.rows))
    for error in bench.results.errors:
        print(f"ERROR: {error}")
    path = write_json(bench, settings, stamp, seconds)
    print(f"\nresults: {path}")
    if interrupted:
        return 130
    failed = bench.results.errors or any(row.passed is False for row in bench.results.rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
