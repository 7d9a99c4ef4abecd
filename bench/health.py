#!/usr/bin/env python
"""Latency of ``GET /healthz`` and ``GET /readyz`` on a real daemon, next to the machine's own.

A real ``jobferry serve`` (SQLite store in a temporary directory, the local runner;
``--docker``/``--slurm`` enable those runners too, so that ``/readyz`` pings the
engine and the controller) and the reference, a hello-world Tornado handler on
127.0.0.1 in its own process (``bench.throughput_refs.hello_server``), are asked
over one keep-alive HTTP/1.1 connection each, one request at a time, by the same
client (``bench.common.clients.HttpConn``). Targets alternate in rounds (hello,
healthz, readyz, hello, ...) because this machine's speed drifts; p50 and p99 over
all rounds, and their ratios to the reference, are printed. ``/readyz`` answers
from its one-second cache but for one evaluation per second: its p99 shows that
cost. ``--uncached N`` also times N requests spaced by more than the cache's life
(each one a full evaluation: store, schema, drain flag, runners).

Usage::

    .venv/bin/python bench/health.py [--requests 2000] [--rounds 4] [--uncached 10]
        [--docker] [--slurm] [--keep]

The daemon and the reference are stopped by pid at the end (also on error or
Ctrl-C). Table on stdout, everything in ``bench/results/health-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: bench/ is sys.path[0], the repository root is not
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common.clients import HttpConn
from bench.common.daemons import Daemon, bench_run
from bench.common.report import BenchError, log, table, write_results
from bench.common.stats import LoadMeter, own_cpu_s, percentile, process_cpu_s
from bench.throughput_refs import hello_server

WARMUP = 100


async def timed(conn: HttpConn, path: str, count: int, expect: int = 200) -> list[float]:
    """*count* sequential GETs of *path*; each one's seconds (any other status fails)."""
    out = []
    for _ in range(count):
        t0 = time.perf_counter()
        status, body = await conn.request("GET", path)
        out.append(time.perf_counter() - t0)
        if status != expect:
            raise BenchError(f"GET {path}: {status} {body[:300]!r}")
    return out


async def measure(args: argparse.Namespace, daemon: Daemon, reference: int) -> dict[str, Any]:
    hello = HttpConn("127.0.0.1", reference)
    ours = HttpConn(daemon.host, daemon.port)
    targets = {
        "reference: hello-world Tornado": (hello, "/healthz"),
        "GET /healthz": (ours, "/healthz"),
        "GET /readyz": (ours, "/readyz"),
    }
    for conn, path in targets.values():
        await timed(conn, path, WARMUP)
    samples: dict[str, list[float]] = {name: [] for name in targets}
    per_round = max(1, args.requests // args.rounds)
    pids = [daemon.pid, args.reference_pid]
    meter = LoadMeter(lambda: own_cpu_s() + sum(process_cpu_s(p) for p in pids))
    for number in range(args.rounds):
        for name, (conn, path) in targets.items():
            samples[name] += await timed(conn, path, per_round)
        log(f"round {number + 1}/{args.rounds} done")
    load = meter.stop()
    uncached: list[float] = []
    for _ in range(args.uncached):
        await asyncio.sleep(1.2)  # past the cache's life: this request evaluates
        uncached += await timed(ours, "/readyz", 1)
    hello.close()
    ours.close()
    final = HttpConn(daemon.host, daemon.port)
    _, body = await final.request("GET", "/readyz")
    final.close()
    return {"samples": samples, "uncached": uncached, "load": load, "readyz": body.decode()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=2000, help="per target (default 2000)")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds (default 4)")
    parser.add_argument("--uncached", type=int, default=10, help="spaced /readyz requests")
    parser.add_argument("--docker", action="store_true", help="enable the Docker runner")
    parser.add_argument("--slurm", action="store_true", help="enable the Slurm runner")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    runners: dict[str, Any] = {}
    if args.docker:
        runners["docker"] = {"enabled": True}
    if args.slurm:
        runners["slurm"] = {"enabled": True}
    with bench_run("jobferry-bench-health-", args.keep) as run:
        daemon = Daemon("daemon", run.workdir, {"runners": runners} if runners else None)
        daemon.start()
        reference = hello_server()
        reference.start()
        args.reference_pid = reference.pid
        result = asyncio.run(measure(args, daemon, reference.port))
    samples: dict[str, list[float]] = result["samples"]
    ref = samples["reference: hello-world Tornado"]
    ref50, ref99 = percentile(ref, 50), percentile(ref, 99)
    rows, summary = [], []
    for name, values in samples.items():
        p50, p99 = percentile(values, 50), percentile(values, 99)
        rows.append(
            [name, str(len(values)), f"{p50 * 1e3:.3f}", f"{p99 * 1e3:.3f}"]
            + [f"{p50 / ref50:.2f}x", f"{p99 / ref99:.2f}x"]
        )
        summary.append({"target": name, "requests": len(values), "p50_s": p50, "p99_s": p99})
    if result["uncached"]:
        values = result["uncached"]
        p50, p99 = percentile(values, 50), max(values)
        rows.append(["GET /readyz, uncached", str(len(values)), f"{p50 * 1e3:.3f}"])
        rows[-1] += [f"{p99 * 1e3:.3f} (max)", f"{p50 / ref50:.1f}x", ""]
        summary.append({"target": "readyz uncached", "p50_s": p50, "max_s": p99})
    header = ["target", "requests", "p50 ms", "p99 ms", "p50 / ref", "p99 / ref"]
    load = result["load"]
    print()
    print("/healthz and /readyz latency, one keep-alive connection, sequential")
    print(table(header, rows))
    print(
        f"other work on the machine meanwhile: {load['other_cores']:.2f} cores "
        f"(busy {load['busy_cores']:.2f}, ours {load['our_cores']:.2f})"
    )
    print(f"/readyz said: {result['readyz']}")
    path = write_results(
        "health",
        run.stamp,
        {"settings": vars(args), "summary": summary, "load": load, "readyz": result["readyz"]},
    )
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
