#!/usr/bin/env python
"""Upload and download throughput of job_files (``/api/jobs/{id}/files``) on a real daemon.

A real ``jobferry serve`` (its own data directory, stopped by pid at the end)
runs a long ``sleeper`` job; a file of ``--size-mb`` MiB is uploaded into the
job's ``work/`` directory (multipart POST, Pulsar's form: ``job_key`` and
``path`` in the query) and downloaded back, with curl. The reference, in the
same run and with the same curl commands, is a minimal Tornado server (its own
process) that streams request bodies to disk as they arrive (no multipart
parsing, no checks) and serves files from disk in the same chunks. Timed
downloads go to ``/dev/null`` (curl writing a file runs at the client disk's
pace, which is not what is measured); one untimed download per run is written
to a file and its sha256 compared with the source's. Each figure
is the median of ``--repeat`` runs, the two servers alternating; the daemon's
peak RSS above its idle RSS is sampled (every 5 ms) during each transfer.

Usage::

    .venv/bin/python bench/job_files.py [--size-mb 1024] [--repeat 3] [--keep]

Targets: upload ≥ 0.7 and download ≥ 0.8 of the reference rate, peak RSS ≤ 60 MB
above idle. The summary is printed and written to
``bench/results/job_files-<timestamp>.json``; the exit status is 0 when every
target is met, 1 otherwise, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psutil

if not __package__:  # run as a script: bench/ is sys.path[0], the repository root is not
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common.daemons import JOB_SCRIPTS, Daemon, Managed, ScriptServer, bench_run
from bench.common.report import MB, ROOT, BenchError, log, write_results
from bench.common.stats import RssSampler

SLEEPER = JOB_SCRIPTS / "sleeper.py"

TARGET_UPLOAD_RATIO = 0.7
TARGET_DOWNLOAD_RATIO = 0.8
TARGET_RSS_MB = 60.0

REFERENCE_SERVER = r"""
import asyncio, os, sys
import tornado.httpserver, tornado.netutil, tornado.web

ROOT = sys.argv[1]
CHUNK = 1 << 20

@tornado.web.stream_request_body
class Files(tornado.web.RequestHandler):
    def prepare(self):
        self.request.connection.set_max_body_size(1 << 40)
        self.out = None
        if self.request.method in ("POST", "PUT"):
            self.out = open(os.path.join(ROOT, "upload.tmp"), "wb")

    def data_received(self, chunk):
        self.out.write(chunk)

    def post(self, name):
        self.out.close()
        os.replace(os.path.join(ROOT, "upload.tmp"), os.path.join(ROOT, name))
        self.finish({"message": "ok"})

    put = post

    async def get(self, name):
        with open(os.path.join(ROOT, name), "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            self.set_header("Content-Type", "application/octet-stream")
            self.set_header("Content-Length", str(size))
            while chunk := handle.read(CHUNK):
                self.write(chunk)
                await self.flush()
        self.finish()

async def main():
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server = tornado.httpserver.HTTPServer(
        tornado.web.Application([(r"/files/(\w[\w.-]*)", Files)]),
        max_body_size=1 << 40, max_buffer_size=16 << 20,
    )
    server.add_sockets(sockets)
    print(sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def long_job(daemon: Daemon) -> tuple[str, str, Path]:
    """Register sleeper, submit a job that outlives the benchmark; (id, key, job dir).

    The daemon cancels it before it stops (``Daemon.jobs``).
    """
    daemon.register(SLEEPER, "sleeper")
    body = {"job_name": "bench job_files", "command": "36000"}
    answer = daemon.api("POST", "/api/scripts/v1/sleeper/submit/", data=body).json()
    job_id = str(answer["job_id"])
    daemon.jobs.append(job_id)
    key = daemon.cli("job", "key", job_id)
    return job_id, key, daemon.data_dir / "jobs" / job_id[:2] / job_id


def reference_server(workdir: Path) -> tuple[ScriptServer, Path]:
    """The reference server (not started) and the directory it serves."""
    root = workdir / "reference-files"
    root.mkdir()
    server = ScriptServer("reference", REFERENCE_SERVER, [str(root)], workdir / "reference.log")
    return server, root


@dataclass
class Transfer:
    server: str
    direction: str
    seconds: float
    mb_per_s: float
    idle_rss_mb: float
    peak_rss_mb: float
    cpu_s: float

    @property
    def rss_above_idle_mb(self) -> float:
        return self.peak_rss_mb - self.idle_rss_mb


@dataclass
class Summary:
    size_mb: int
    repeat: int
    results: dict[str, Any] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)
    passed: bool = False


def make_source(path: Path, size_mb: int) -> str:
    """A file of *size_mb* MiB of incompressible bytes; returns its sha256."""
    digest = hashlib.sha256()
    block = bytearray(os.urandom(MB))
    with open(path, "wb") as out:
        for index in range(size_mb):
            block[:8] = index.to_bytes(8, "little")
            digest.update(block)
            out.write(block)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(4 * MB):
            digest.update(chunk)
    return digest.hexdigest()


def curl(args: list[str], timeout_s: float) -> float:
    """Run curl; return the wall time. Raises BenchError unless it answered 2xx."""
    cmd = ["curl", "-sS", "--fail-with-body", "-w", "%{http_code}", *args]
    started = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise BenchError(f"curl failed ({result.returncode}): {result.stderr} {result.stdout}")
    return elapsed


def measure(
    server: Managed, name: str, direction: str, args: list[str], size_mb: int, timeout_s: float
) -> Transfer:
    os.sync()  # start each transfer with no dirty pages from the last one being written back
    time.sleep(0.5)  # let the server settle (and its last response be freed)
    process = psutil.Process(server.pid)
    idle = server.rss_bytes()
    cpu_before = sum(process.cpu_times()[:2])
    with RssSampler(server.pid) as sampler:
        seconds = curl(args, timeout_s)
    cpu = sum(process.cpu_times()[:2]) - cpu_before
    peak = max(sampler.peak, idle)
    transfer = Transfer(
        server=name,
        direction=direction,
        seconds=seconds,
        mb_per_s=size_mb / seconds,
        idle_rss_mb=idle / MB,
        peak_rss_mb=peak / MB,
        cpu_s=cpu,
    )
    log(
        f"  {name:<9} {direction:<8} {transfer.mb_per_s:7.0f} MB/s  {seconds:6.2f} s"
        f"  cpu {cpu:5.2f} s  rss +{transfer.rss_above_idle_mb:5.1f} MB"
    )
    return transfer


def run(args: argparse.Namespace, workdir: Path) -> Summary:
    if shutil.which("curl") is None:
        raise BenchError("curl is required")
    size_mb = args.size_mb
    timeout_s = max(120.0, size_mb / 10)
    summary = Summary(size_mb=size_mb, repeat=args.repeat)
    summary.environment = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "curl": subprocess.run(
            ["curl", "--version"], capture_output=True, text=True, check=False
        ).stdout.split("\n", 1)[0],
    }
    source = workdir / "source.bin"
    log(f"making a {size_mb} MiB source file")
    source_sha = make_source(source, size_mb)

    daemon = Daemon("data", workdir, {"server": {"max_upload_mb": size_mb + 64}}).start()
    log(f"daemon pid {daemon.pid} at {daemon.url}")
    reference, reference_root = reference_server(workdir)
    reference.start()
    log(f"reference server pid {reference.pid} at {reference.url}")
    job_id, key, job_dir = long_job(daemon)
    files_url = f"{daemon.url}/api/jobs/{job_id}/files"
    target = f"{job_dir}/work/bench.bin"
    query = urlencode({"job_key": key, "path": target, "file_type": "output_workdir"})
    download = workdir / "download.bin"

    # Warm both servers up (imports, first-request paths) with a small transfer.
    warm = workdir / "warm.bin"
    warm.write_bytes(os.urandom(MB))
    warm_query = urlencode({"job_key": key, "path": f"{job_dir}/work/warm.bin"})
    curl(["-o", "/dev/null", "-F", f"file=@{warm}", f"{files_url}?{warm_query}"], 60)
    curl(["-o", str(download), f"{files_url}?{warm_query}"], 60)
    curl(["-o", "/dev/null", "-F", f"file=@{warm}", f"{reference.url}/files/warm.bin"], 60)
    curl(["-o", str(download), f"{reference.url}/files/warm.bin"], 60)

    transfers: list[Transfer] = []
    for round_index in range(args.repeat):
        log(f"round {round_index + 1}/{args.repeat}")
        order: list[tuple[str, Managed]] = [("reference", reference), ("job_files", daemon)]
        if round_index % 2:
            order.reverse()
        for name, server in order:
            if name == "reference":
                up_url = down_url = f"{reference.url}/files/bench.bin"
            else:
                up_url = down_url = f"{files_url}?{query}"
            up = ["-o", "/dev/null", "-F", f"file=@{source};filename=bench.bin", up_url]
            transfers.append(measure(server, name, "upload", up, size_mb, timeout_s))
            down = ["-o", "/dev/null", down_url]
            transfers.append(measure(server, name, "download", down, size_mb, timeout_s))
            if round_index == 0 and name == "job_files":
                # Untimed: the bytes came back intact (the timed download goes to
                # /dev/null: curl writing a file here runs at the disk's pace, which
                # would measure the client's disk, not the server).
                curl(["-o", str(download), down_url], timeout_s)
                if sha256_of(download) != source_sha:
                    raise BenchError("job_files: the downloaded file differs from the source")
                download.unlink()
            (job_dir / "work" / "bench.bin").unlink(missing_ok=True)
            (reference_root / "bench.bin").unlink(missing_ok=True)

    summary.runs = [{**asdict(t), "rss_above_idle_mb": t.rss_above_idle_mb} for t in transfers]

    def median(server: str, direction: str, attr: str) -> float:
        values = [
            getattr(t, attr) for t in transfers if t.server == server and t.direction == direction
        ]
        return statistics.median(values)

    results: dict[str, Any] = {}
    ok = True
    for direction, target_ratio in (
        ("upload", TARGET_UPLOAD_RATIO),
        ("download", TARGET_DOWNLOAD_RATIO),
    ):
        ours = median("job_files", direction, "mb_per_s")
        raw = median("reference", direction, "mb_per_s")
        rss = max(
            t.rss_above_idle_mb
            for t in transfers
            if t.server == "job_files" and t.direction == direction
        )
        ref_rss = max(
            t.rss_above_idle_mb
            for t in transfers
            if t.server == "reference" and t.direction == direction
        )
        ratio = ours / raw
        results[direction] = {
            "job_files_mb_per_s": ours,
            "reference_mb_per_s": raw,
            "ratio": ratio,
            "target_ratio": target_ratio,
            "job_files_cpu_s": median("job_files", direction, "cpu_s"),
            "reference_cpu_s": median("reference", direction, "cpu_s"),
            "peak_rss_above_idle_mb": rss,
            "reference_peak_rss_above_idle_mb": ref_rss,
            "target_rss_mb": TARGET_RSS_MB,
            "passed": ratio >= target_ratio and rss <= TARGET_RSS_MB,
        }
        ok = ok and results[direction]["passed"]
    summary.results = results
    summary.passed = ok
    return summary


def print_summary(summary: Summary) -> None:
    print()
    print(f"job_files, {summary.size_mb} MiB, median of {summary.repeat} (curl, loopback)")
    header = (
        f"{'transfer':<10}{'job_files':>12}{'reference':>12}{'ratio':>8}{'target':>8}"
        f"{'cpu s':>12}{'RSS +MB':>10}{'target':>8}  result"
    )
    print(header)
    print("-" * len(header))
    for direction, r in summary.results.items():
        cpu = f"{r['job_files_cpu_s']:.2f}/{r['reference_cpu_s']:.2f}"
        print(
            f"{direction:<10}{r['job_files_mb_per_s']:>8.0f} MB/s"
            f"{r['reference_mb_per_s']:>7.0f} MB/s"
            f"{r['ratio']:>8.2f}{'≥' + format(r['target_ratio'], '.1f'):>8}{cpu:>12}"
            f"{r['peak_rss_above_idle_mb']:>10.1f}{'≤' + format(r['target_rss_mb'], '.0f'):>8}"
            f"  {'ok' if r['passed'] else 'MISSED'}"
        )
    print("(cpu s: daemon/reference process CPU per transfer; RSS: daemon peak above idle)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="file size in MiB")
    parser.add_argument("--repeat", type=int, default=3, help="transfers per figure (median)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if args.size_mb < 1 or args.repeat < 1:
        parser.error("--size-mb and --repeat must be at least 1")

    try:
        with bench_run("jobferry-bench-files-", args.keep) as bench:
            summary = run(args, bench.workdir)
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except BenchError as exc:
        log(f"benchmark failed: {exc}")
        return 1
    print_summary(summary)
    out = write_results("job_files", bench.stamp, asdict(summary))
    log(f"wrote {out.relative_to(ROOT)}")
    return 0 if summary.passed else 1


if __name__ == "__main__":
    sys.exit(main())
