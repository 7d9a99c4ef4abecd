"""Numbers about a run: its deadline, percentiles, and what else the machine was doing.

Absolute figures mean little on a 2-core machine shared with other work, so
every benchmark records the machine's load next to its figures: ``LoadMeter``
splits the whole machine's CPU use during a measurement into ours (the
processes under test and the benchmark itself) and *other work*; ``wait_quiet``
waits for the machine to calm down before a measurement.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import statistics
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import psutil

from bench.common.report import CPUS, BenchError

T = TypeVar("T")


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


def nearest_rank(values: Sequence[float], pct: float) -> float:
    """The sample nearest to the percentile's rank (pct in 0..100; no interpolation)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


def summary_ms(values_s: Sequence[float]) -> dict[str, float]:
    """Median, p99, min and max of seconds, in ms."""
    return {
        "median_ms": 1000 * statistics.median(values_s),
        "p99_ms": 1000 * percentile(values_s, 99),
        "min_ms": 1000 * min(values_s),
        "max_ms": 1000 * max(values_s),
    }


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (not its children)."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def machine_busy() -> Callable[[], float]:
    """Start measuring whole-machine CPU use; the returned function gives busy cores."""
    meter = LoadMeter(lambda: 0.0)
    return lambda: meter.stop()["busy_cores"]


class LoadMeter:
    """Whole-machine CPU use during a measurement, split into ours and other work's.

    *ours* returns the CPU seconds used so far by the processes under test and
    by this benchmark; whatever else keeps the cores busy is other work, which
    slows down what is measured (the machine may be shared).
    """

    def __init__(self, ours: Callable[[], float]) -> None:
        self.ours = ours
        self.restart()

    def restart(self) -> None:
        self.before = psutil.cpu_times()
        self.ours0 = self.ours()
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


def quiet_cores(ours: Callable[[], float], limit_s: float, threshold: float) -> float:
    """Other work's cores over 1 s, again until below *threshold* or *limit_s* has passed."""
    limit = time.monotonic() + max(0.0, limit_s)
    while True:
        meter = LoadMeter(ours)
        time.sleep(1.0)
        other = meter.stop()["other_cores"]
        if other <= threshold or time.monotonic() >= limit:
            return other


class RssSampler:
    """Peak RSS of one process while the block runs (sampled every 5 ms, in a thread)."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.005)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
