"""How the benchmarks talk: log lines, figures, tables and the results JSON.

Every benchmark prints timestamped progress lines, a summary table at the end
and writes ``bench/results/<kind>-<stamp>.json`` with the machine and the git
commit measured, so that figures from different runs can be told apart. The
workspace and the SIGTERM handling are here too: a benchmark interrupted by
Ctrl-C or SIGTERM still stops what it started and removes its temporary files.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Coroutine, Iterator, Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent.parent
BENCH_DIR = ROOT / "bench"
RESULTS_DIR = BENCH_DIR / "results"
CPUS = os.cpu_count() or 1
MB = 1024 * 1024


class BenchError(Exception):
    """The benchmark cannot go on (daemon error, unexpected answer, time limit)."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def fmt(value: float | None, unit: str = "") -> str:
    """A figure with as many digits as it deserves (n/a for None)."""
    if value is None:
        return "n/a"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip()


def table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns under *header*, a rule between them."""
    widths = [max(len(str(row[i])) for row in [header, *lines]) for i in range(len(header))]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    out.append("  ".join("-" * w for w in widths))
    out.extend(
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in lines
    )
    return "\n".join(out)


def stamp() -> str:
    """The run's timestamp, as used in result file names."""
    return datetime.now().strftime("%Y%m%d-%H%M%S")


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


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "cpus": CPUS,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "memory_mb": psutil.virtual_memory().total / MB,
        "loadavg_at_end": os.getloadavg(),
    }


def write_results(kind: str, run_stamp: str, data: dict[str, Any]) -> Path:
    """Write ``bench/results/<kind>-<stamp>.json``: *data* plus machine and git state."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{kind}-{run_stamp}.json"
    full = {"timestamp": run_stamp, "machine": machine(), "git": git_state(), **data}
    path.write_text(json.dumps(full, indent=2, default=str) + "\n")
    return path


def write_summary(
    kind: str,
    run_stamp: str,
    seconds: float,
    settings: Any,
    rows: Sequence[Any],
    details: dict[str, Any],
    errors: list[str],
    **extra: Any,
) -> Path:
    """The results JSON of a run with summary *rows* (dataclasses), as of ``--settings``."""
    return write_results(
        kind,
        run_stamp,
        {
            "duration_s": seconds,
            "settings": asdict(settings),
            **extra,
            "summary": [asdict(row) for row in rows],
            "details": details,
            "errors": errors,
        },
    )


def interrupt_on_sigterm() -> None:
    """SIGTERM ends the run like Ctrl-C: cleanup runs, the exit status is 130."""

    def on_sigterm(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)


@contextlib.contextmanager
def workspace(prefix: str, keep: bool = False) -> Iterator[Path]:
    """A temporary directory for daemons' data and logs; removed at the end unless *keep*."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if keep:
            log(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def run_loop(main: Coroutine[Any, Any, None], errors: list[str]) -> bool:
    """``asyncio.run(main)``; an interruption (Ctrl-C, SIGTERM) or a ``BenchError`` that
    ends it is noted in *errors*. True if it was interrupted (exit status 130)."""
    try:
        asyncio.run(main)
    except KeyboardInterrupt:
        errors.append("interrupted")
        log("interrupted")
        return True
    except BenchError as exc:
        errors.append(str(exc))
        log(f"!! {exc}")
    return False


async def guarded(name: str, errors: list[str], work: Awaitable[None]) -> None:
    """Await one part of a run; if it fails, say so, note it in *errors* and go on."""
    try:
        await work
    except BenchError as exc:
        log(f"!! {name} failed: {exc}")
        errors.append(f"{name}: {exc}")
    except Exception as exc:
        log(f"!! {name} failed: {type(exc).__name__}: {exc}")
        errors.append(f"{name}: {type(exc).__name__}: {exc}")


def print_summary(
    title: str, body: str, notes: Sequence[str], errors: Sequence[str], path: Path
) -> None:
    """The end of a run's output: its table, notes, errors and where the JSON went."""
    print()
    print(title)
    print(body)
    for note in notes:
        print(note)
    for error in errors:
        print(f"ERROR: {error}")
    print(f"\nresults: {path}")
