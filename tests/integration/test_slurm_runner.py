"""What only SlurmRunner does, against a real single-node Slurm (scripts/services
slurm): batch scripts and resources, one squeue per round, Slurm states and
accounting, controller outages, result-file fallbacks, remote staging.

What every runner does (exit codes, streams, outputs, hostile argv, walltime, cancel,
restart re-attachment, garbage handles) is the contract suite's
(``tests/integration/test_runner_contract_suite.py``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobferry.errors import RunnerUnavailableError, SubmitError
from jobferry.runners.base import RunHandle, RunSpec, RunState, RunStatus
from jobferry.runners.slurm import SlurmRunner
from tests.helpers import DEADLINE_S
from tests.services import require

pytestmark = [pytest.mark.timeout(120), pytest.mark.engine_independent]

COMMANDS = ("sbatch", "squeue", "scontrol", "scancel", "sacct")


@pytest.fixture
def slurm() -> None:
    require("slurm")


class Runners:
    """Makes SlurmRunners and scancels every Slurm job they submitted at teardown."""

    def __init__(self) -> None:
        self.ids: set[str] = set()

    def make(self, **kwargs: Any) -> SlurmRunner:
        kwargs.setdefault("poll_interval_s", 0.5)
        kwargs.setdefault("command_timeout_s", 20)
        kwargs.setdefault("node", "test")
        runner = SlurmRunner(**kwargs)
        submit = runner.submit

        def recording_submit(spec: RunSpec) -> RunHandle:
            handle = submit(spec)
            self.ids.add(handle.external_id)
            return handle

        runner.submit = recording_submit  # type: ignore[method-assign]
        return runner


@pytest.fixture
def runners(slurm: None) -> Iterator[Runners]:
    made = Runners()
    yield made
    if made.ids:  # only jobs this test submitted, by id
        subprocess.run(["scancel", *sorted(made.ids)], capture_output=True, timeout=30)


@pytest.fixture
def runner(runners: Runners) -> SlurmRunner:
    return runners.make()


def make_spec(tmp_path: Path, *argv: str, job_id: str = "j1", **kwargs: Any) -> RunSpec:
    """A spec laid out like the daemon's job directory (work, stdout, stderr, result)."""
    job_dir = tmp_path / job_id
    (job_dir / "work").mkdir(parents=True, exist_ok=True)
    job_dir.chmod(0o777)
    (job_dir / "work").chmod(0o777)
    kwargs.setdefault("memory_mb", 32)  # else a job takes the node's whole memory
    kwargs.setdefault("destination", "slurm")
    kwargs.setdefault("job_dir", str(job_dir))
    return RunSpec(
        job_id=f"{tmp_path.name}-{job_id}",
        argv=tuple(argv),
        workdir=str(job_dir / "work"),
        stdout_path=str(job_dir / "stdout"),
        stderr_path=str(job_dir / "stderr"),
        result_path=str(job_dir / "result"),
        **kwargs,
    )


def wait(runner: SlurmRunner, handle: RunHandle, timeout: float = 60) -> RunStatus:
    async def main() -> RunStatus:
        return await asyncio.wait_for(runner.wait(handle), timeout)

    return asyncio.run(main())


def until(predicate: Any, timeout: float = DEADLINE_S, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not met within {timeout}s")


def squeue_state(external_id: str) -> str:
    out = subprocess.run(
        ["squeue", "-h", "-t", "all", "-j", external_id, "-o", "%T"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    return out.stdout.strip()


def active_in_squeue(external_id: str) -> bool:
    """True while plain squeue (pending/running/completing jobs) lists the job."""
    out = subprocess.run(
        ["squeue", "-h", "-j", external_id, "-o", "%i"], capture_output=True, text=True, timeout=20
    )
    return out.stdout.strip() == external_id


def scontrol_job(external_id: str) -> dict[str, str]:
    out = subprocess.run(
        ["scontrol", "show", "job", "-o", external_id],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    return dict(w.partition("=")[::2] for w in out.stdout.split() if "=" in w)


def counting_bin_dir(tmp_path: Path) -> tuple[Path, Path]:
    """A bin_dir of shims that log each call's argv, then run the real command."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    for name in COMMANDS:
        real = shutil.which(name)
        assert real is not None
        shim = bin_dir / name
        shim.write_text(f'#!/bin/sh\necho "{name} $*" >>{log}\nexec {real} "$@"\n')
        shim.chmod(0o755)
    return bin_dir, log


def calls(log: Path, name: str) -> list[str]:
    if not log.exists():
        return []
    return [line for line in log.read_text().splitlines() if line.split(" ", 1)[0] == name]


# --- running jobs -----------------------------------------------------------------


def test_slurm_runner__exit_code_comes_from_the_wrapper_result_file(
    runner: SlurmRunner, tmp_path: Path
) -> None:
    spec = make_spec(
        tmp_path, "/bin/sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; exit 7"
    )

    handle = runner.submit(spec)
    status = wait(runner, handle)

    assert status.state is RunState.EXITED
    assert status.exit_code == 7
    assert "exit_code=7" in Path(spec.result_path).read_text()
    assert status.finished_at == pytest.approx(os.path.getmtime(spec.result_path))
    assert status.metrics.cpu_user_s is not None and status.metrics.cpu_sys_s is not None
    assert status.metrics.wall_s is not None and 0 <= status.metrics.wall_s < 30
    assert runner.poll(handle) == status  # final statuses are remembered


# --- cancel and walltime ------------------------------------------------------------


def test_slurm_runner__cancel_while_running_kills_the_slurm_job(
    runner: SlurmRunner, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path, "/bin/sh", "-c", "echo started; exec sleep 300")
    handle = runner.submit(spec)
    until(
        lambda: Path(spec.stdout_path).exists() and Path(spec.stdout_path).read_text(),
        what="job started",
    )

    runner.cancel(handle)
    status = wait(runner, handle)

    assert (status.state, status.reason) == (RunState.KILLED, "cancelled")
    assert not active_in_squeue(handle.external_id)
    assert squeue_state(handle.external_id) in ("CANCELLED", "")


# --- polling --------------------------------------------------------------------------


def test_slurm_runner__many_jobs_are_polled_with_one_squeue_call_per_round(
    runners: Runners, tmp_path: Path
) -> None:
    bin_dir, log = counting_bin_dir(tmp_path)
    runner = runners.make(bin_dir=str(bin_dir), poll_interval_s=1.0)
    specs = [
        make_spec(tmp_path, "/bin/sh", "-c", f"sleep 1; exit {i}", job_id=f"m{i}", memory_mb=16)
        for i in range(5)
    ]
    handles = [runner.submit(spec) for spec in specs]
    ids = sorted(h.external_id for h in handles)

    assert all(runner.poll(h).state is RunState.RUNNING for h in handles)
    first = calls(log, "squeue")
    assert len(first) == 1  # one call for five polls
    assert sorted(first[0].split("-j ", 1)[1].split(",")) == ids

    async def main() -> list[RunStatus]:
        return await asyncio.wait_for(asyncio.gather(*(runner.wait(h) for h in handles)), 90)

    started = time.monotonic()
    statuses = asyncio.run(main())
    elapsed = time.monotonic() - started

    assert [s.exit_code for s in statuses] == list(range(5))
    assert all(s.state is RunState.EXITED for s in statuses)
    rounds = calls(log, "squeue")[1:]
    # At most one squeue per 0.2 s round for all five jobs, not one per job.
    assert 1 <= len(rounds) <= elapsed / 0.2 + 2
    assert not calls(log, "scontrol")  # every result came from the result files


def test_slurm_runner__resources_appear_in_scontrol_show_job(
    runner: SlurmRunner, tmp_path: Path
) -> None:
    spec = make_spec(
        tmp_path,
        "/bin/sh",
        "-c",
        "exec sleep 300",
        cores=2,
        memory_mb=64,
        walltime_s=150,
        partition="debug",
        sbatch_args=("--comment=from sbatch_args", "--nice=10"),
    )

    handle = runner.submit(spec)
    job = scontrol_job(handle.external_id)
    runner.cancel(handle)

    assert job["JobName"] == f"jobferry-{spec.job_id}-1"
    assert job["CPUs/Task"] == "2"
    assert job["MinMemoryNode"] == "64M"
    assert job["TimeLimit"] == "00:03:00"  # 150 s rounded up to whole minutes
    assert job["Partition"] == "debug"
    assert job["Nice"] == "10"
    assert job["StdOut"] == job["StdErr"] == "/dev/null"
    assert job["WorkDir"] == spec.job_dir
    assert job["Requeue"] == "0"
    script = Path(spec.job_dir, "slurm.sh").read_text()
    assert "#SBATCH --cpus-per-task=2" in script and "#SBATCH --mem=64M" in script
    assert wait(runner, handle).state is RunState.KILLED
    runner.cleanup(handle)
    assert not Path(spec.job_dir, "slurm.sh").exists()


# --- errors ---------------------------------------------------------------------------


def test_slurm_runner__unreachable_controller_raises_runner_unavailable(
    runners: Runners, tmp_path: Path
) -> None:
    bin_dir = tmp_path / "down"
    bin_dir.mkdir()
    for name in COMMANDS:
        fake = bin_dir / name
        fake.write_text(
            "#!/bin/sh\necho 'sbatch: error: Batch job submission failed: "
            "Unable to contact slurm controller (connect failure)' >&2\nexit 1\n"
        )
        fake.chmod(0o755)
    runner = runners.make(bin_dir=str(bin_dir))
    spec = make_spec(tmp_path, "/bin/true")

    with pytest.raises(RunnerUnavailableError) as first:
        runner.submit(spec)
    with pytest.raises(RunnerUnavailableError) as second:
        runner.submit(spec)

    assert first.value.message == second.value.message  # stable: logged once per outage
    assert "Unable to contact slurm controller" in first.value.details["output"]
    with pytest.raises(RunnerUnavailableError):
        runner.find(spec)
    # Polling during the outage keeps a known job as it was instead of losing it.
    handle = RunHandle("slurm", "12345", time.time(), {"result_path": spec.result_path})
    assert runner.poll(handle).state is RunState.RUNNING


def test_slurm_runner__hanging_command_raises_runner_unavailable(
    runners: Runners, tmp_path: Path
) -> None:
    bin_dir = tmp_path / "hang"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text("#!/bin/sh\nexec sleep 30\n")
    (bin_dir / "sbatch").chmod(0o755)
    runner = runners.make(bin_dir=str(bin_dir), command_timeout_s=0.5)

    with pytest.raises(RunnerUnavailableError, match="timed out"):
        runner.submit(make_spec(tmp_path, "/bin/true"))


def test_slurm_runner__bad_partition_raises_submit_error(
    runner: SlurmRunner, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path, "/bin/true", partition="no-such-partition")

    with pytest.raises(SubmitError, match="(?i)invalid partition"):
        runner.submit(spec)


def test_slurm_runner__impossible_resources_raise_submit_error(
    runner: SlurmRunner, tmp_path: Path
) -> None:
    # More memory than the node has (Slurm accepts too many CPUs and leaves the job pending).
    spec = make_spec(tmp_path, "/bin/true", memory_mb=100_000_000)

    with pytest.raises(SubmitError, match="Requested node configuration is not available"):
        runner.submit(spec)


# --- restart, find, fallbacks -------------------------------------------------------


def test_slurm_runner__find_tells_attempts_apart(runner: SlurmRunner, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "/bin/sh", "-c", "exec sleep 300")
    handle = runner.submit(spec)

    found = SlurmRunner().find(spec)

    assert found is not None and found.external_id == handle.external_id
    assert SlurmRunner().find(make_spec(tmp_path, "/bin/true", attempt=2)) is None
    runner.cancel(found)
    assert wait(runner, handle).reason == "cancelled"


def test_slurm_runner__missing_result_file_falls_back_to_scontrol_exit_code(
    runners: Runners, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path, "/bin/sh", "-c", "exit 5")
    handle = runners.make().submit(spec)
    until(lambda: squeue_state(handle.external_id) == "FAILED", what="job ended")
    os.unlink(spec.result_path)  # e.g. a remote job whose result post never arrived

    runner = runners.make(result_grace_s=0.5)
    status = wait(runner, handle)

    assert status.state is RunState.EXITED
    assert status.exit_code == 5
    assert status.reason == "result file missing; exit code from Slurm"


def test_slurm_runner__job_slurm_forgot_without_a_result_is_lost(
    runner: SlurmRunner, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path, "/bin/true")
    handle = RunHandle("slurm", "987654321", time.time(), {"result_path": spec.result_path})

    status = runner.poll(handle)

    assert status.state is RunState.LOST
    assert status.reason == "the Slurm job 987654321 vanished without a result"


def test_slurm_runner__remote_staging_pipes_the_script_to_sbatch(
    runners: Runners, tmp_path: Path
) -> None:
    runner = runners.make(result_grace_s=0.5)
    remote = tmp_path / "node-scratch"
    spec = make_spec(
        tmp_path,
        "/bin/sh",
        "-c",
        "echo remote > f; exit 4",
        staging="remote",
        remote_dir=str(remote),
    )

    handle = runner.submit(spec)
    status = wait(runner, handle)

    assert not Path(spec.job_dir, "slurm.sh").exists()
    assert handle.data["script_path"] is None
    assert scontrol_job(handle.external_id)["WorkDir"] == "/tmp"
    assert (remote / "work" / "f").read_text() == "remote\n"
    # Nothing posts the result back in this test: the exit code comes from Slurm.
    assert (status.state, status.exit_code) == (RunState.EXITED, 4)


def test_slurm_runner__cancel_by_someone_else_is_killed_cancelled_by_slurm(
    runner: SlurmRunner, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path, "/bin/sh", "-c", "exec sleep 300")
    handle = runner.submit(spec)

    subprocess.run(["scancel", handle.external_id], check=True, timeout=20)
    status = wait(runner, handle)

    assert (status.state, status.reason) == (RunState.KILLED, "cancelled by Slurm")


@pytest.mark.parametrize(
    ("slurm_state", "state", "reason"),
    [
        ("TIMEOUT", RunState.KILLED, "walltime exceeded (90s)"),
        ("OUT_OF_MEMORY", RunState.KILLED, "out of memory (Slurm OUT_OF_MEMORY)"),
        ("NODE_FAIL", RunState.LOST, "the Slurm job 4242 ended NODE_FAIL"),
        ("PREEMPTED", RunState.KILLED, "the Slurm job ended PREEMPTED"),
        ("DEADLINE", RunState.KILLED, "the Slurm job ended DEADLINE"),
        ("RUNNING", RunState.RUNNING, None),
        ("PENDING", RunState.RUNNING, None),
    ],
)
def test_slurm_runner__slurm_states_map_to_run_states(
    slurm: None, tmp_path: Path, slurm_state: str, state: RunState, reason: str | None
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    squeue = bin_dir / "squeue"
    start = "2026-01-01T00:00:00"
    squeue.write_text(f"#!/bin/sh\necho '4242|{slurm_state}|Priority|{start}|N/A'\n")
    squeue.chmod(0o755)
    runner = SlurmRunner(bin_dir=str(bin_dir), command_timeout_s=10)
    data = {"result_path": str(tmp_path / "result"), "walltime_s": 90}
    handle = RunHandle("slurm", "4242", time.time(), data)

    status = runner.poll(handle)

    assert (status.state, status.reason) == (state, reason)
