"""Tests of the local runner's job host (``runners/jobhost.py``): its log cap, byte for
byte, with the disk bound at every write; and, with real processes, what it does that
the wrapper did (memory limits, programs that cannot be executed, the pid file) and
its own life (it outlives its runner for the jobs it has, then exits).

The log cap's behaviour through every runner is ``tests/integration/test_runner_log_caps.py``.
"""

from __future__ import annotations

import os
import random
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from jobferry.runners.base import RunSpec, RunState
from jobferry.runners.jobhost import CHUNK_FILES, CappedLog, start_ticks
from jobferry.runners.local import LocalRunner
from tests.helpers import wait_for
from tests.unit.test_local_runner import local_runner, make_spec, run_job, wait

pytestmark = [pytest.mark.timeout(60), pytest.mark.engine_independent]

MARKER = re.compile(rb"\n\[jobferry: (\d+) bytes dropped here; [^\n]*\]\n")


def _on_disk(log: Path) -> int:
    return sum(p.stat().st_size for p in log.parent.iterdir() if p.name.startswith(log.name))


def _feed(log_path: Path, cap: int, data: bytes, seed: int) -> int:
    """Write *data* through a CappedLog in random pieces; return the most bytes the
    log and its chunk files held on disk after any write."""
    log = CappedLog(str(log_path), cap)
    rng = random.Random(seed)
    most, at = 0, 0
    while at < len(data):
        n = rng.choice((1, 7, 100, log.chunk - 1, log.chunk + 3, 4096))
        log.write(data[at : at + n])
        at += n
        most = max(most, _on_disk(log_path))
    log.close()
    return most


@pytest.mark.parametrize("cap", [64, 1000, 4097])
@pytest.mark.parametrize("extra", [-1, 0, 1, 37, 10_000, 123_457])
def test_capped_log__keeps_head_marker_and_tail_exactly_and_bounds_the_disk(
    tmp_path: Path, cap: int, extra: int
) -> None:
    data = random.Random(cap * extra).randbytes(cap + extra)
    path = tmp_path / "stdout"

    most = _feed(path, cap, data, seed=extra)

    log = path.read_bytes()
    head, tail = cap // 2, cap - cap // 2
    if len(data) <= cap:
        assert log == data  # within the cap: byte for byte
    else:
        found = MARKER.search(log, head)
        assert found is not None and found.start() == head
        assert int(found.group(1)) == len(data) - cap  # the exact count dropped
        assert log[:head] == data[:head] and log[found.end() :] == data[-tail:]
    chunk = -(-tail // (CHUNK_FILES - 1))
    assert most <= head + CHUNK_FILES * chunk  # about 1.125 x the cap, at every write
    assert [p.name for p in tmp_path.iterdir()] == ["stdout"]  # no chunk left behind


def test_capped_log__without_a_cap_keeps_everything(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    _feed(tmp_path / "out", 0, data, seed=1)
    assert (tmp_path / "out").read_bytes() == data


# --- the host, with real processes ----------------------------------------------------------


@pytest.fixture
def runner() -> Iterator[LocalRunner]:
    yield from local_runner()


def _held(tmp_path: Path, code: int) -> tuple[RunSpec, Path]:
    """A job that runs until the returned file exists, then exits *code*."""
    go = tmp_path / "go"
    script = f"while [ ! -e {go} ]; do sleep 0.02; done; exit {code}"
    return make_spec(tmp_path, "sh", "-c", script), go


def test_host__caps_a_jobs_address_space_from_its_environment(
    runner: LocalRunner, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path, "sh", "-c", "ulimit -v", env={"JOBFERRY_MEMORY_KB": "262144"})

    status = run_job(runner, spec)

    assert (status.state, status.exit_code) == (RunState.EXITED, 0)
    assert Path(spec.stdout_path).read_text().strip() == "262144"


def test_host__runs_a_file_without_hashbang_with_sh_and_refuses_one_not_executable(
    runner: LocalRunner, tmp_path: Path
) -> None:
    script = tmp_path / "plain"
    script.write_text("echo from-plain; exit 5\n")
    script.chmod(0o755)
    locked = tmp_path / "locked"
    locked.write_text("#!/bin/sh\nexit 0\n")
    locked.chmod(0o644)

    plain = run_job(runner, make_spec(tmp_path, str(script), job_id="plain"))
    denied = run_job(runner, make_spec(tmp_path, str(locked), job_id="locked"))

    assert (plain.exit_code, Path(tmp_path, "meta", "plain.out").read_text()) == (5, "from-plain\n")
    assert denied.exit_code == 126  # as sh's exec says, and why on stderr
    assert "ermission denied" in Path(tmp_path, "meta", "locked.err").read_text()


def test_host__finds_a_program_in_the_jobs_own_path_as_it_is_at_each_start(
    runner: LocalRunner, tmp_path: Path
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    path = f"{first}:{second}:{os.environ['PATH']}"

    def run(job_id: str, own_path: bool = True) -> int | None:
        env = {"PATH": path} if own_path else {}
        return run_job(
            runner, make_spec(tmp_path, "jobferry-tool", job_id=job_id, env=env)
        ).exit_code

    def install(where: Path, code: int) -> None:
        (where / "jobferry-tool").write_text(f"#!/bin/sh\nexit {code}\n")
        (where / "jobferry-tool").chmod(0o755)

    assert run("before") == 127  # not there yet
    install(second, 3)
    assert run("appeared") == 3
    install(first, 4)
    assert run("shadowed") == 4  # the first directory that has it, as execvp
    assert run("daemons-path", own_path=False) == 127  # another job's PATH is its own
    (first / "jobferry-tool").unlink()
    (second / "jobferry-tool").unlink()
    assert run("gone") == 127


def test_host__writes_the_pid_file_that_find_takes_for_the_job(
    runner: LocalRunner, tmp_path: Path
) -> None:
    spec, go = _held(tmp_path, 4)
    handle = runner.submit(spec)

    pid, ticks = Path(spec.result_path + ".pid").read_text().split()
    assert int(pid) == handle.data["pid"] and int(ticks) == handle.data["start_ticks"]
    found = LocalRunner().find(spec)  # as a daemon that died before storing the handle
    assert found is not None and found.external_id == handle.external_id
    go.touch()
    assert wait(runner, handle).exit_code == 4


def test_host__reports_the_start_ticks_proc_gives_for_every_job(
    runner: LocalRunner, tmp_path: Path
) -> None:
    # The host takes them from the clock around the spawn (reading /proc only when the
    # spawn straddles a tick): a wrong one would make the job look gone, or let find
    # miss it and the job run twice. Many spawns: some fall near a tick's edge.
    for n in range(150):
        handle = runner.submit(make_spec(tmp_path, "sleep", "60", job_id=f"j{n}"))
        pid = handle.data["pid"]
        assert handle.data["start_ticks"] == start_ticks(pid), f"job {n}"
        os.killpg(pid, signal.SIGKILL)
        assert wait(runner, handle).exit_code == 128 + signal.SIGKILL


def test_host__outlives_its_closed_runner_for_its_jobs_then_exits(
    runner: LocalRunner, tmp_path: Path
) -> None:
    spec, go = _held(tmp_path, 9)
    handle = runner.submit(spec)
    host = psutil.Process(handle.data["host_pid"])
    runner.close()  # as a daemon that stops: its jobs keep running

    assert host.is_running() and host.status() != psutil.STATUS_ZOMBIE
    go.touch()
    result = Path(spec.result_path)
    wait_for("the job's result", lambda: result.exists() and "exit_code=9" in result.read_text())
    wait_for("the host to exit", lambda: host.status() == psutil.STATUS_ZOMBIE)
    os.waitpid(host.pid, 0)  # our child (the runner started it): reaped here
    follower = LocalRunner()
    assert follower.poll(handle).exit_code == 9


def test_host__keeps_no_descriptor_of_the_daemon_open(runner: LocalRunner, tmp_path: Path) -> None:
    handle = runner.submit(make_spec(tmp_path, "sleep", "30"))
    host = psutil.Process(handle.data["host_pid"])
    job = psutil.Process(handle.data["pid"])

    for fd in (0, 1, 2):  # the daemon's stdio is not held: a supervisor sees it close
        assert os.readlink(f"/proc/{host.pid}/fd/{fd}") == os.devnull
    links = [os.readlink(f"/proc/{host.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{host.pid}/fd")]
    assert sum(link.startswith("socket:") for link in links) == 1  # the runner's pair
    job_fds = sorted(int(fd) for fd in os.listdir(f"/proc/{job.pid}/fd"))
    assert job_fds == [0, 1, 2]  # nothing of the host's leaks into the job
    assert os.readlink(f"/proc/{job.pid}/fd/0") == os.devnull
    assert os.readlink(f"/proc/{host.pid}/cwd") == "/"  # no job's directory held
    assert host.cmdline()[0] == sys.executable
