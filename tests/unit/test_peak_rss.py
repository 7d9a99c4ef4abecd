"""Peak memory of local jobs (issue #10, item 12): recorded even when the job uses less
than the daemon, and shown by ``/api/jobs/{id}/metrics``."""

from __future__ import annotations

import asyncio
import resource
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobferry.runners.base import RunSpec, RunState, RunStatus
from jobferry.runners.local import LocalRunner
from jobferry.runners.slurm_acct import parse_max_rss_kb
from tests.helpers import DaemonProcess

pytestmark = pytest.mark.engine_independent

ALLOC_MB = 50
#: The job holds its memory this long: a few samples' worth (a scenario, not a wait).
HOLD_S = 2.0
JOB = textwrap.dedent(
    f"""
    import time
    block = bytearray({ALLOC_MB} << 20)
    block[::4096] = b"x" * len(block[::4096])
    time.sleep({HOLD_S})
    """
)


@pytest.fixture
def runner() -> Iterator[LocalRunner]:
    yield LocalRunner(kill_grace_s=2.0)


def _raise_own_peak_above(mb: int) -> None:
    """Make this process's peak RSS (the daemon's, as the runner sees it) exceed *mb*."""
    if resource.getrusage(resource.RUSAGE_SELF).ru_maxrss < mb << 10:
        block = bytearray(mb << 20)
        block[::4096] = b"x" * len(block[::4096])
        del block


def _run(runner: LocalRunner, tmp_path: Path, *argv: str) -> RunStatus:
    work, meta = tmp_path / "work", tmp_path / "meta"
    work.mkdir()
    meta.mkdir()
    spec = RunSpec(
        job_id="peak",
        argv=argv,
        workdir=str(work),
        stdout_path=str(meta / "out"),
        stderr_path=str(meta / "err"),
        result_path=str(meta / "result"),
    )

    async def main() -> RunStatus:
        return await asyncio.wait_for(runner.wait(runner.submit(spec)), 60)

    return asyncio.run(main())


def test_a_local_job_smaller_than_the_daemon_reports_its_peak_rss(
    runner: LocalRunner, tmp_path: Path
) -> None:
    """Guards: local jobs reported `peak_rss_kb: null` whenever they used less memory
    than the daemon (the wrapper's ru_maxrss started at the daemon's peak)."""
    _raise_own_peak_above(4 * ALLOC_MB)

    status = _run(runner, tmp_path, sys.executable, "-c", JOB)

    assert status.state is RunState.EXITED and status.exit_code == 0
    peak = status.metrics.peak_rss_kb
    assert peak is not None and ALLOC_MB << 10 <= peak < 4 * ALLOC_MB << 10, peak


@pytest.mark.e2e
def test_the_metrics_endpoint_lists_a_local_jobs_peak_memory(tmp_path: Path) -> None:
    """Guards: ``/api/jobs/{id}/metrics`` had no memory entry for local jobs."""
    daemon = DaemonProcess(tmp_path / "data").start(timeout_s=60)
    try:
        client = daemon.client()
        script = tmp_path / "hold_memory.py"
        script.write_text(
            "import argparse\nargparse.ArgumentParser().parse_args()\n" + JOB, encoding="utf-8"
        )
        client.add_script("hold_memory", script)
        job_id = client.submit("hold_memory")
        assert client.wait(job_id, timeout_s=60)["status"] == "completed"

        metrics = client.get(f"/api/jobs/{job_id}/metrics").json()
        memory = [m for m in metrics if m["name"] == "memory.max_usage_in_bytes"]
        assert len(memory) == 1 and memory[0]["plugin"] == "cgroup", metrics
        assert int(float(memory[0]["raw_value"])) >= ALLOC_MB << 20, memory
    finally:
        daemon.stop()


def test_slurm_peak_memory_is_the_largest_step_maxrss_from_sacct() -> None:
    """Guards: Slurm jobs had no peak memory even where accounting records MaxRSS.
    (sacct's own output format; this machine's Slurm runs without accounting.)"""
    output = "40400241|\n40400241.batch|10452K\n40400241.extern|0\n40400241.0|5266672K\n"
    assert parse_max_rss_kb(output) == 5266672
    assert parse_max_rss_kb("7|\n7.batch|1.5G\n7.0|2048M\n") == 2 << 20
    assert parse_max_rss_kb("7|\n7.batch|\n") is None
    assert parse_max_rss_kb("") is None
