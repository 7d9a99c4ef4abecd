"""The machine's own references for ``throughput.py``, measured in the same run.

What the daemon is compared with: how fast this machine spawns ``/bin/true``
(its limit for process creation), how fast it runs ``python noop.py`` bare
(concurrently, and one after the other: the throughput and latency
references, measured before and after the daemon's tests and averaged), and
what an idle hello-world Tornado process costs in memory.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import time
from collections.abc import Sequence
from typing import Any

import psutil

from bench.common.daemons import ScriptServer, job_env
from bench.common.report import CPUS, MB, BenchError, log
from bench.common.stats import (
    Deadline,
    LoadMeter,
    children_cpu_s,
    own_cpu_s,
    percentile,
)
from bench.throughput_harness import NOOP, Harness, Row

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


def hello_server() -> ScriptServer:
    """The loopback HTTP reference in its own process (not started)."""
    return ScriptServer("hello-world server", HELLO_SERVER, [])


async def spawn(argv: Sequence[str], cwd: str, env: dict[str, str]) -> int:
    """Run *argv* with no input or output; its exit status."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=cwd,
        env=env,
    )
    return await proc.wait()


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
            if await spawn(argv, cwd, env) != 0:
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
        await spawn(argv, cwd, env)
        times.append(time.perf_counter() - t0)
    return times


class References(Harness):
    """The fork+exec and bare ``noop.py`` references, and the hello-world RSS."""

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

    async def hello_rss(self) -> float | None:
        """RSS of an idle hello-world Tornado process (what Python + Tornado costs)."""
        server = hello_server()
        try:
            await asyncio.to_thread(server.start)
            await asyncio.sleep(0.5)
            return float(psutil.Process(server.pid).memory_info().rss) / MB
        except (BenchError, TimeoutError, psutil.Error) as exc:
            log(f"hello-world RSS not measured: {exc}")
            return None
        finally:
            server.stop()
