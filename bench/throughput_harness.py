"""The frame of ``throughput.py``: its settings, summary rows, and how it measures.

Every measurement runs through ``Harness.best_of``: it is repeated (up to
``--retries``) while other work on the machine disturbed it, after waiting for
the machine to be quiet (``background_load``), and the least disturbed attempt
is kept. The parts of the run build on this class: ``throughput_refs`` (the
machine's references), ``throughput_daemon`` (the daemon's throughput, latency
and memory) and ``throughput_accept`` (acceptance against a hello-world server).
"""

from __future__ import annotations

import asyncio
import pstats
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common.daemons import JOB_SCRIPTS
from bench.common.report import RESULTS_DIR, fmt, log, table
from bench.common.stats import Deadline, machine_busy

NOOP = JOB_SCRIPTS / "noop.py"

#: Targets (see the brief in bench/README.md).
TARGET_THROUGHPUT_RATIO = 0.5
TARGET_LATENCY_OVERHEAD_MS = 15.0
TARGET_ACCEPT_PER_S = 500.0
TARGET_RSS_MB = 120.0

#: Poll interval while waiting for one job in the latency test.
LATENCY_POLL_S = 0.002
#: Busy cores (while this benchmark is idle) below which the machine counts as quiet.
IDLE_CORES = 0.2
#: Other work (cores) during a measurement above which it is repeated (--retries).
NOISY_CORES = 0.25


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


def summary_table(rows: Sequence[Row]) -> str:
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
    return table(header, lines)


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


class Harness:
    """Settings, results and the measuring discipline shared by every part of the run."""

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
