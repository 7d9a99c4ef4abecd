"""Tests of what only LocalRunner does, with real processes: its job host, sessions and
signals, process trees, done pipes, rusage and memory samples, orphans and reused pids.

What every runner does (exit codes, streams, outputs, hostile argv, walltime, cancel,
restart re-attachment, garbage handles) is the contract suite's
(``tests/integration/test_runner_contract_suite.py``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from jobferry.errors import SubmitError
from jobferry.runners.base import RunHandle, RunSpec, RunState, RunStatus
from jobferry.runners.local import LocalRunner
from tests.helpers import DEADLINE_S

pytestmark = [pytest.mark.timeout(60), pytest.mark.engine_independent]

REPO_ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


@pytest.fixture
def runner() -> Iterator[LocalRunner]:
    yield from local_runner()


def local_runner() -> Iterator[LocalRunner]:
    """A runner that kills what its jobs left running, then lets its host go."""
    runner = LocalRunner(kill_grace_s=1.0)
    yield runner
    for external_id in list(runner._done):  # never leave processes behind
        try:
            os.killpg(int(external_id.split("@")[0]), signal.SIGKILL)
        except OSError:
            pass
    runner.close()


def make_spec(tmp_path: Path, *argv: str, job_id: str = "j1", **kwargs: Any) -> RunSpec:
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    meta = tmp_path / "meta"
    meta.mkdir(exist_ok=True)
    return RunSpec(
        job_id=job_id,
        argv=tuple(argv),
        workdir=str(workdir),
        stdout_path=str(meta / f"{job_id}.out"),
        stderr_path=str(meta / f"{job_id}.err"),
        result_path=str(meta / f"{job_id}.result"),
        **kwargs,
    )


def wait(runner: LocalRunner, handle: RunHandle, timeout: float = DEADLINE_S) -> RunStatus:
    async def main() -> RunStatus:
        return await asyncio.wait_for(runner.wait(handle), timeout)

    return asyncio.run(main())


def run_job(runner: LocalRunner, spec: RunSpec) -> RunStatus:
    return wait(runner, runner.submit(spec))


def wait_for_file(path: Path, timeout: float = DEADLINE_S) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.02)
    raise AssertionError(f"{path} never appeared")


def is_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pid: int, timeout: float = DEADLINE_S) -> bool:
    deadline = time.monotonic() + timeout
    while not is_gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def submit_in_other_process(spec: RunSpec) -> RunHandle:
    """Submit through a LocalRunner in a process that dies at once, like a crashed daemon."""
    code = textwrap.dedent(
        """
        import json, os, sys
        from jobferry.runners.base import RunSpec
        from jobferry.runners.local import LocalRunner
        raw = json.loads(sys.argv[1])
        raw["argv"] = tuple(raw["argv"])
        print(LocalRunner().submit(RunSpec(**raw)).dumps(), flush=True)
        os._exit(0)
        """
    )
    raw = {k: getattr(spec, k) for k in spec.__dataclass_fields__}
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    out = subprocess.run(
        [PY, "-c", code, json.dumps(raw)], env=env, capture_output=True, text=True, check=True
    )
    return RunHandle.loads(out.stdout)


# --- submit -----------------------------------------------------------------------


def test_submit__never_runs_shell_builtins(runner: LocalRunner, tmp_path: Path) -> None:
    evil = make_spec(tmp_path, "eval", "touch pwned", job_id="evil")
    leave = make_spec(tmp_path, "exit", "5", job_id="leave")

    assert run_job(runner, evil).exit_code == 127
    assert run_job(runner, leave).exit_code == 127
    assert not (Path(evil.workdir) / "pwned").exists()


def test_submit__missing_program_exits_127_with_message(
    runner: LocalRunner, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path, "no-such-program-jobferry")

    status = run_job(runner, spec)

    assert (status.state, status.exit_code) == (RunState.EXITED, 127)
    assert "not found" in Path(spec.stderr_path).read_text()


def test_submit__runs_in_workdir_with_env_and_stdin_closed(
    runner: LocalRunner, tmp_path: Path
) -> None:
    script = "import os, sys; e = os.environ; print(os.getcwd(), e['GREETING'], e['HOME'])"
    script += "; print(sys.stdin.read() == '')"
    spec = make_spec(tmp_path, PY, "-c", script, env={"GREETING": "hello world"})

    run_job(runner, spec)

    out = Path(spec.stdout_path).read_text().split()
    assert out == [spec.workdir, "hello", "world", spec.workdir, "True"]


def test_submit__job_leads_its_own_session_with_default_signals(
    runner: LocalRunner, tmp_path: Path
) -> None:
    script = "grep -E '^Sig(Ign|Blk)' /proc/self/status; ps -o sid= -o pgid= -p $$"
    spec = make_spec(tmp_path, "sh", "-c", script)
    handle = runner.submit(spec)
    pid = handle.data["pid"]
    assert os.getsid(pid) == pid and os.getpgid(pid) == pid

    wait(runner, handle)

    lines = Path(spec.stdout_path).read_text().splitlines()
    masks = {line.split(":")[0]: int(line.split()[1], 16) for line in lines[:2]}
    assert masks["SigBlk"] == 0
    assert not masks["SigIgn"] & (1 << (signal.SIGPIPE - 1))
    assert not masks["SigIgn"] & (1 << (signal.SIGXFSZ - 1))
    assert lines[2].split() == [str(pid), str(pid)]


def test_submit__handle_round_trips_and_names_the_process(
    runner: LocalRunner, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path, "true", walltime_s=60)
    handle = runner.submit(spec)
    wait(runner, handle)

    again = RunHandle.loads(handle.dumps())
    assert again == handle and again.runner == "local"
    assert again.external_id == f"{handle.data['pid']}@{handle.data['create_time']}"
    assert again.data["result_path"] == spec.result_path
    assert again.data["stdout_path"] == spec.stdout_path
    assert again.data["walltime_s"] == 60
    assert "child" not in again.data


def test_submit__rejects_what_cannot_start(runner: LocalRunner, tmp_path: Path) -> None:
    good = make_spec(tmp_path, "true")
    with pytest.raises(SubmitError, match="working directory"):
        runner.submit(dataclasses.replace(good, workdir=str(tmp_path / "nope")))
    with pytest.raises(SubmitError, match="directory for"):
        runner.submit(dataclasses.replace(good, stdout_path=str(tmp_path / "nope" / "out")))
    with pytest.raises(SubmitError):
        runner.submit(make_spec(tmp_path, "-c", "true"))
    with pytest.raises(SubmitError):
        runner.submit(make_spec(tmp_path))
    with pytest.raises(SubmitError, match="cannot start"):
        LocalRunner(python=str(tmp_path / "no-python")).submit(good)


def test_submit__clears_a_stale_result_from_an_earlier_attempt(
    runner: LocalRunner, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path, "sh", "-c", "exit 4")
    Path(spec.result_path).write_text("exit_code=0\n")
    Path(spec.result_path + ".killed").write_text("old kill")

    assert run_job(runner, spec).exit_code == 4


# --- wait / poll -------------------------------------------------------------------


def test_wait__returns_promptly_when_the_job_ends(runner: LocalRunner, tmp_path: Path) -> None:
    handle = runner.submit(make_spec(tmp_path, "sleep", "0.3"))

    status = wait(runner, handle)
    elapsed = time.time() - handle.started_at

    assert status.state is RunState.EXITED
    assert 0.3 <= elapsed < 1.5
    assert status.metrics.wall_s is not None and 0.29 <= status.metrics.wall_s < 1.5


def test_wait__reports_cpu_time_and_peak_memory(runner: LocalRunner, tmp_path: Path) -> None:
    # The wrapper's own peak starts at ours (exec from our address space), so the job must
    # use more than we do for its peak to be reported.
    alloc_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024 + 40
    script = textwrap.dedent(
        f"""
        import time
        b = b"x" * ({alloc_mb} << 20)
        end = time.process_time() + 0.3
        while time.process_time() < end:
            pass
        """
    )
    status = run_job(runner, make_spec(tmp_path, PY, "-c", script))

    assert status.state is RunState.EXITED and status.exit_code == 0
    user, sys_ = status.metrics.cpu_user_s, status.metrics.cpu_sys_s
    assert user is not None and sys_ is not None and user + sys_ >= 0.3
    assert status.metrics.peak_rss_kb is not None
    assert status.metrics.peak_rss_kb > alloc_mb * 1024


def test_wait__does_not_report_the_daemons_memory_as_the_jobs(
    runner: LocalRunner, tmp_path: Path
) -> None:
    status = run_job(runner, make_spec(tmp_path, "true"))

    # None, or (sampled, on a slow machine) the few MB of `true` itself: never ours.
    own_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert status.metrics.peak_rss_kb is None or status.metrics.peak_rss_kb < min(own_kb, 64 << 10)


def test_wait__follows_by_polling_a_job_whose_host_died(
    runner: LocalRunner, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    go = tmp_path / "go"
    spec = make_spec(tmp_path, "sh", "-c", f"while [ ! -e {go} ]; do sleep 0.02; done")
    handle = runner.submit(spec)
    os.kill(handle.data["host_pid"], signal.SIGKILL)  # its done pipe closes: no result
    assert wait_gone(handle.data["host_pid"])

    assert runner.poll(handle).state is RunState.RUNNING  # the job itself runs on
    go.touch()
    status = wait(runner, handle)

    assert status.state is RunState.LOST and status.exit_code is None
    # The next job gets a new host, and the log says the old one had gone.
    with caplog.at_level(logging.WARNING, logger="jobferry.runners.hostclient"):
        again = run_job(runner, make_spec(tmp_path, "sh", "-c", "exit 6", job_id="again"))
    assert again.exit_code == 6
    gone = f"the job host (pid {handle.data['host_pid']}) has gone"
    assert any(gone in record.getMessage() for record in caplog.records), caplog.text


def test_poll__reports_running_then_the_exit(runner: LocalRunner, tmp_path: Path) -> None:
    go = tmp_path / "go"
    spec = make_spec(tmp_path, "sh", "-c", f"while [ ! -e {go} ]; do sleep 0.02; done; exit 2")
    handle = runner.submit(spec)

    assert runner.poll(handle) == RunStatus(RunState.RUNNING)
    go.touch()
    deadline = time.monotonic() + 60
    while (status := runner.poll(handle)).state is RunState.RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.02)

    assert (status.state, status.exit_code) == (RunState.EXITED, 2)
    assert status.metrics.cpu_user_s is not None  # the host's rusage of it
    assert runner.poll(handle) == status == wait(runner, handle)


# --- cancel ------------------------------------------------------------------------


def test_cancel__kills_the_whole_tree_even_a_setsid_grandchild(
    runner: LocalRunner, tmp_path: Path
) -> None:
    pidfile = tmp_path / "grandchild.pid"
    script = textwrap.dedent(
        f"""
        import subprocess, time
        p = subprocess.Popen(["sleep", "60"], start_new_session=True)
        open({str(pidfile)!r}, "w").write(str(p.pid))
        time.sleep(60)
        """
    )
    handle = runner.submit(make_spec(tmp_path, PY, "-c", script))
    grandchild = int(wait_for_file(pidfile))
    assert os.getsid(grandchild) == grandchild != handle.data["pid"]

    started = time.monotonic()
    runner.cancel(handle, reason="user asked")
    status = wait(runner, handle)

    assert time.monotonic() - started < 3
    assert (status.state, status.reason) == (RunState.KILLED, "user asked")
    assert wait_gone(grandchild)
    assert Path(handle.data["result_path"] + ".killed").read_text() == "user asked"


def test_cancel__escalates_to_sigkill_when_sigterm_is_ignored(
    runner: LocalRunner, tmp_path: Path
) -> None:
    ready = tmp_path / "ready"
    script = f"trap '' TERM; echo 1 > {ready}; sleep 30"
    handle = runner.submit(make_spec(tmp_path, "sh", "-c", script))
    wait_for_file(ready)

    started = time.monotonic()
    runner.cancel(handle)

    assert 0.9 <= time.monotonic() - started < 3.5
    status = wait(runner, handle)
    assert (status.state, status.reason) == (RunState.KILLED, "cancelled")
    assert status.exit_code == 128 + signal.SIGKILL  # from the host's wait status


def test_cancel__gives_the_job_sigterm_first(runner: LocalRunner, tmp_path: Path) -> None:
    handle = runner.submit(make_spec(tmp_path, "sleep", "30"))

    runner.cancel(handle, reason="first")
    status = wait(runner, handle)

    assert (status.state, status.reason) == (RunState.KILLED, "first")
    assert status.exit_code == 128 + signal.SIGTERM  # from the host's wait status


# --- adoption after a daemon restart ---------------------------------------------


def test_adopt__waits_for_a_job_whose_daemon_died(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "sh", "-c", "sleep 0.5; exit 3")
    handle = submit_in_other_process(spec)
    runner = LocalRunner()
    runner.adopt(handle, spec)

    assert runner.poll(handle).state is RunState.RUNNING
    status = wait(runner, handle)

    assert (status.state, status.exit_code) == (RunState.EXITED, 3)
    assert status.finished_at == os.stat(spec.result_path).st_mtime
    assert status.metrics.wall_s is not None and status.metrics.wall_s >= 0.45
    assert status.metrics.cpu_user_s is not None
    # No rusage for a job another process started: sampled from its processes (shells).
    assert status.metrics.peak_rss_kb is None or status.metrics.peak_rss_kb < 64 << 10


def test_adopt__enforces_walltime_from_the_original_start(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "sleep", "30", walltime_s=1.5)
    handle = submit_in_other_process(spec)
    runner = LocalRunner(kill_grace_s=1.0)
    runner.adopt(handle, spec)

    status = wait(runner, handle)

    assert status.state is RunState.KILLED and "walltime" in (status.reason or "")
    assert status.exit_code == 128 + signal.SIGTERM  # recorded by the host
    assert time.time() - handle.started_at < 5
    assert wait_gone(handle.data["pid"])


def test_adopt__job_gone_without_a_result_is_lost(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "sleep", "30")
    handle = submit_in_other_process(spec)
    runner = LocalRunner()
    runner.adopt(handle, spec)

    # E.g. a reboot, or the OOM killer taking the host: nobody records the job's end.
    os.kill(handle.data["host_pid"], signal.SIGKILL)
    assert wait_gone(handle.data["host_pid"])
    os.killpg(handle.data["pid"], signal.SIGKILL)
    status = wait(runner, handle)

    assert status.state is RunState.LOST and status.exit_code is None
    assert status.reason == "process ended without recording a result"


def test_adopt__a_job_killed_by_a_signal_is_recorded_by_its_host(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "sleep", "30")
    handle = submit_in_other_process(spec)
    runner = LocalRunner()
    runner.adopt(handle, spec)

    os.killpg(handle.data["pid"], signal.SIGKILL)  # e.g. the OOM killer, the host lives
    status = wait(runner, handle)

    assert (status.state, status.exit_code) == (RunState.EXITED, 128 + signal.SIGKILL)
    assert wait_gone(handle.data["host_pid"])  # its daemon gone and its job done: it exits


def test_reused_pid__is_not_taken_for_the_job(runner: LocalRunner, tmp_path: Path) -> None:
    live = runner.submit(make_spec(tmp_path, "sleep", "30", job_id="live"))
    ghost_spec = make_spec(tmp_path, "true", job_id="ghost")
    data = dict(live.data, result_path=ghost_spec.result_path)
    wrong_time = RunHandle("local", "x", live.started_at, dict(data, create_time=1.0))
    del wrong_time.data["start_ticks"]
    wrong_ticks = RunHandle("local", "y", live.started_at, dict(data, start_ticks=1))
    other = LocalRunner(kill_grace_s=0.5)

    for ghost in (wrong_time, wrong_ticks):
        other.adopt(ghost, ghost_spec)
        assert other.poll(ghost).state is RunState.LOST
        other.cancel(ghost)
        assert asyncio.run(other.wait(ghost)).state is RunState.LOST

    assert runner.poll(live).state is RunState.RUNNING
    runner.cancel(live)
    assert wait(runner, live).state is RunState.KILLED


# --- what the end's collection takes from the status --------------------------------------


def test_final_status__carries_the_result_files_disk_full_flag(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "sh", "-c", "sleep 30")
    handle = submit_in_other_process(spec)
    runner = LocalRunner()
    runner.adopt(handle, spec)
    os.killpg(handle.data["pid"], signal.SIGKILL)
    assert wait_gone(handle.data["host_pid"])  # done with its last job: results written
    # As the host leaves it when its first write failed on a full disk.
    Path(spec.result_path).write_text("exit_code=0\ncpu=0m0.01s 0m0.00s\ndisk_full=1\n")

    status = runner.poll(handle)

    assert (status.state, status.exit_code, status.disk_full) == (RunState.EXITED, 0, True)


def test_wait_ended__returns_at_the_exit_and_poll_then_says_how(
    runner: LocalRunner, tmp_path: Path
) -> None:
    handle = runner.submit(make_spec(tmp_path, "sh", "-c", "exit 4"))

    ended = asyncio.run(asyncio.wait_for(runner.wait_ended(handle), DEADLINE_S))

    assert ended is None  # the done pipe closed: reading the result file is the poll's
    status = runner.poll(handle)
    assert (status.state, status.exit_code, status.disk_full) == (RunState.EXITED, 4, False)
