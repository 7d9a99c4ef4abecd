"""Crash recovery, graceful stop, cancel, walltime and dispatch, through real daemon processes.

Every test runs its own daemon(s) on its own data directory. Jobs outlive a
daemon by design, so each test's teardown stops the daemons it started and then
kills, by pid, whatever process still runs inside that test's job directories.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.db import database_url, store_sql
from tests.helpers import JOB_SCRIPTS, Client, DaemonProcess, job_hosts, wait_for

pytestmark = pytest.mark.e2e

PID_LINE = re.compile(r"pid (\d+) sleeping")


def gone(proc: psutil.Process) -> bool:
    """True once the process has ended (an unreaped zombie counts as ended)."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class Env:
    """One test's data directory, the daemons run on it, and its run log."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.data = base / "data"
        self.runs = base / "runs.log"
        self.config: dict[str, Any] = {}
        self.daemons: list[DaemonProcess] = []
        self.scripts_added = False
        self.store_url = database_url(self.data)

    # --- daemons ----------------------------------------------------------------------

    def daemon(self, config: dict[str, Any] | None = None) -> DaemonProcess:
        """Start a daemon on the data directory; register the job scripts the first time."""
        if config is not None:
            self.config = config
        daemon = DaemonProcess(self.data, self.config)
        self.daemons.append(daemon)
        daemon.start()
        if not self.scripts_added:
            client = daemon.client()
            client.add_script("counter", JOB_SCRIPTS / "counter.py")
            client.add_script("sleeper", JOB_SCRIPTS / "sleeper.py")
            self.scripts_added = True
        return daemon

    def close(self) -> None:
        for daemon in self.daemons:
            if daemon.proc is None:
                continue
            try:
                daemon.stop()
            except Exception:
                daemon.kill()
        self.kill_leftover_jobs()

    def kill_leftover_jobs(self) -> None:
        """Kill, by pid, every process whose working directory is in this test's job dirs."""
        jobs = str(self.data / "jobs") + os.sep
        for proc in psutil.process_iter():
            try:
                if proc.pid != os.getpid() and (proc.cwd() + os.sep).startswith(jobs):
                    proc.kill()
            except (psutil.Error, OSError):
                pass

    # --- jobs -------------------------------------------------------------------------

    def counter(self, client: Client, extra: str = "", sleep: float = 0.0) -> str:
        return client.submit(
            "counter", f"--log {shlex.quote(str(self.runs))} --sleep {sleep} {extra}"
        )

    def job_dir(self, job_id: str) -> Path:
        return self.data / "jobs" / job_id[:2] / job_id

    def show(self, daemon: DaemonProcess, job_id: str) -> dict[str, Any]:
        return dict(json.loads(daemon.cli("job", "show", job_id, "--json").stdout))

    def started(self, daemon: DaemonProcess, job_id: str) -> psutil.Process:
        """Wait until the job's process runs and its handle is stored; return the process."""
        stdout = self.job_dir(job_id) / "stdout"

        def pid() -> int | None:
            try:
                found = PID_LINE.search(stdout.read_text())
            except FileNotFoundError:
                return None
            return int(found.group(1)) if found else None

        proc = psutil.Process(wait_for(f"job {job_id} to print its pid", pid))
        wait_for(f"job {job_id}'s handle", lambda: self.row(job_id)["external_id"])
        return proc

    def row(self, job_id: str) -> dict[str, Any]:
        """The job's row, read straight from the store (the CLI takes a second to start)."""
        rows = store_sql(self.store_url, "SELECT * FROM jobs WHERE id = :id", {"id": job_id})
        assert rows, job_id
        return dict(rows[0])

    def sql(self, statement: str, **params: Any) -> None:
        """Change the store behind the daemons' backs (the state a crash leaves)."""
        store_sql(self.store_url, statement, params)

    def wrapper(self, job_id: str) -> psutil.Process:
        """The job's process, from the handle (``pid@create_time``): the job itself,
        started by the job host (a ``wrapper.sh`` before it)."""
        pid, _, created = self.row(job_id)["external_id"].partition("@")
        proc = psutil.Process(int(pid))
        assert abs(proc.create_time() - float(created)) < 0.01
        return proc

    def grandchild(self, job_id: str) -> psutil.Process:
        path = self.job_dir(job_id) / "work" / "grandchild.pid"
        text = wait_for("grandchild.pid", lambda: path.exists() and path.read_text().strip())
        return psutil.Process(int(text))

    def run_counts(self) -> Counter[str]:
        if not self.runs.exists():
            return Counter()
        return Counter(self.runs.read_text().split())


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    environment = Env(tmp_path)
    try:
        yield environment
    finally:
        environment.close()


def assets(details: dict[str, Any]) -> list[str]:
    return sorted(a["name"] for a in details["assets"])


# --- crash (kill -9) and restart ------------------------------------------------------------


@pytest.mark.timeout(90)
def test_kill9_while_jobs_run__restart_records_true_outcomes_each_ran_once(env: Env) -> None:
    first = env.daemon()
    client = first.client()
    ok = env.counter(client, "--touch done.txt", sleep=3)
    failing = env.counter(client, "--exit-code 3", sleep=3)
    procs = [env.started(first, ok), env.started(first, failing)]
    first.kill()
    assert not any(gone(p) for p in procs), "jobs must outlive a crashed daemon"

    client = env.daemon().client()
    ok_details = client.wait(ok)
    assert (ok_details["status"], ok_details["exit_code"]) == ("completed", 0)
    assert assets(ok_details) == ["done.txt"]
    failed_details = client.wait(failing)
    assert (failed_details["status"], failed_details["exit_code"]) == ("FAILURE", 3)
    assert failed_details["reason"] == "exit code 3"
    assert env.run_counts() == {ok: 1, failing: 1}


@pytest.mark.timeout(90)
def test_jobs_that_end_while_the_daemon_is_down__outcome_comes_from_the_result_file(
    env: Env,
) -> None:
    first = env.daemon()
    client = first.client()
    ok = env.counter(client, "--touch done.txt", sleep=1.5)
    failing = env.counter(client, "--exit-code 3", sleep=1.5)
    procs = [env.started(first, ok), env.started(first, failing)]
    first.kill()
    assert [env.row(j)["state"] for j in (ok, failing)] == ["running", "running"]
    for job_id in (ok, failing):
        result = env.job_dir(job_id) / "result"
        wait_for(f"{job_id}'s result file", result.exists)
    wait_for("the jobs to end", lambda: all(gone(p) for p in procs))
    time.sleep(1)
    restarted_at = datetime.now(UTC)

    second = env.daemon()
    client = second.client()
    ok_details = client.wait(ok)
    assert (ok_details["status"], ok_details["exit_code"]) == ("completed", 0)
    assert assets(ok_details) == ["done.txt"]
    failed_details = client.wait(failing)
    assert (failed_details["status"], failed_details["exit_code"]) == ("FAILURE", 3)
    for job_id in (ok, failing):
        finished = datetime.fromisoformat(env.show(second, job_id)["finished_at"])
        assert finished < restarted_at, "the finish time is the job's, not the restart's"
    assert env.run_counts() == {ok: 1, failing: 1}


@pytest.mark.timeout(90)
def test_crash_between_start_and_storing_the_handle__job_is_found_not_run_again(
    env: Env,
) -> None:
    first = env.daemon()
    client = first.client()
    running = env.counter(client, "--touch done.txt", sleep=2)
    proc = env.started(first, running)
    first.kill()
    # The state a crash right after spawning (before the handle was written) leaves.
    env.sql("UPDATE jobs SET handle = NULL, external_id = NULL WHERE id = :id", id=running)
    assert not gone(proc)

    client = env.daemon().client()
    details = client.wait(running)
    assert (details["status"], assets(details)) == ("completed", ["done.txt"])
    assert env.run_counts() == {running: 1}


@pytest.mark.timeout(90)
def test_queued_jobs_survive_a_crash__all_complete_each_exactly_once(env: Env) -> None:
    first = env.daemon({"runners": {"local": {"slots": 1}}})
    client = first.client()
    ids = [env.counter(client, sleep=3)] + [env.counter(client, sleep=0.5) for _ in range(3)]
    env.started(first, ids[0])
    first.kill()
    assert [env.row(j)["state"] for j in ids] == ["running", "queued", "queued", "queued"]

    client = env.daemon().client()
    for job_id in ids:
        assert client.wait(job_id)["status"] == "completed"
    assert env.run_counts() == dict.fromkeys(ids, 1)


@pytest.mark.timeout(90)
def test_job_whose_process_vanished_without_a_result__ends_error_with_a_reason(
    env: Env,
) -> None:
    first = env.daemon()
    client = first.client()
    job_id = env.counter(client, sleep=60)
    proc = env.started(first, job_id)
    wrapper = env.wrapper(job_id)
    assert first.proc is not None
    hosts = [psutil.Process(pid) for pid in job_hosts(first.proc.pid)]
    assert hosts
    first.kill()
    for host in hosts:  # e.g. a reboot: nothing is left to record the job's end
        host.kill()
    os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
    wait_for("the job's processes to die", lambda: gone(proc) and gone(wrapper))
    assert not (env.job_dir(job_id) / "result").exists()

    client = env.daemon().client()
    details = client.wait(job_id)
    assert details["status"] == "error"
    assert details["exit_code"] is None
    assert "without recording a result" in details["reason"]


# --- graceful stop --------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_sigterm__daemon_exits_0_promptly_job_keeps_running_and_is_reattached(
    env: Env,
) -> None:
    first = env.daemon()
    client = first.client()
    gate = env.runs.parent / "gate"  # the job ends only when the test opens it
    job_id = env.counter(client, f"--touch done.txt --gate {gate}")
    proc = env.started(first, job_id)
    began = time.monotonic()
    assert first.stop() == 0
    assert time.monotonic() - began < 15  # prompt even on a busy machine
    assert not gone(proc), "a graceful stop must leave the job running"
    assert env.show(first, job_id)["state"] == "running"
    gate.touch()

    client = env.daemon().client()
    details = client.wait(job_id)
    assert (details["status"], details["exit_code"]) == ("completed", 0)
    assert assets(details) == ["done.txt"]
    assert env.run_counts() == {job_id: 1}


# --- cancel ---------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_cancel_running_job__revoked_and_its_whole_tree_including_detached_grandchild_gone(
    env: Env,
) -> None:
    daemon = env.daemon()
    client = daemon.client()
    job_id = client.submit("sleeper", "60 --grandchild")
    proc = env.started(daemon, job_id)
    wrapper = env.wrapper(job_id)
    grandchild = env.grandchild(job_id)
    assert grandchild.pid != proc.pid and not gone(grandchild)
    result = daemon.cli("job", "cancel", job_id, "--json")
    began = time.monotonic()  # after the CLI run, which alone can take seconds when busy
    assert json.loads(result.stdout)["state"] in ("deleting", "deleted")
    details = client.wait(job_id)
    assert time.monotonic() - began < 10
    assert details["status"] == "REVOKED" and details["is_complete"] is True
    assert details["reason"] == "cancelled"
    for process in (proc, wrapper, grandchild):
        wait_for(f"pid {process.pid} to be gone", lambda p=process: gone(p))


@pytest.mark.timeout(90)
def test_cancel_queued_job__revoked_at_once_and_never_runs(env: Env) -> None:
    daemon = env.daemon({"runners": {"local": {"slots": 1}}})
    client = daemon.client()
    blocker = env.counter(client, sleep=60)
    env.started(daemon, blocker)
    queued = env.counter(client)
    assert client.get(f"/api/jobs/v1/{queued}/status/").json()["status"] == "queued"
    result = daemon.cli("job", "cancel", queued, "--json")
    assert json.loads(result.stdout)["state"] == "deleted"
    status = client.get(f"/api/jobs/v1/{queued}/status/").json()
    assert status == {"status": "REVOKED", "is_complete": True}

    daemon.cli("job", "cancel", blocker)
    assert client.wait(blocker)["status"] == "REVOKED"
    after = env.counter(client)  # queued after the cancelled one: it runs once the slot frees
    assert client.wait(after)["status"] == "completed"
    assert client.wait(queued, timeout_s=1)["status"] == "REVOKED"
    assert not (env.job_dir(queued) / "stdout").exists()
    assert env.run_counts() == {blocker: 1, after: 1}


@pytest.mark.timeout(90)
def test_cancel_finished_job__cli_fails_with_one_line_and_the_job_is_unchanged(
    env: Env,
) -> None:
    daemon = env.daemon()
    client = daemon.client()
    job_id = client.submit("sleeper", "0")
    assert client.wait(job_id)["status"] == "completed"
    result = daemon.cli("job", "cancel", job_id, check=False)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jobferry: error: ")
    assert "already ended" in lines[0]
    assert client.wait(job_id, timeout_s=1)["status"] == "completed"


@pytest.mark.timeout(90)
def test_cancel_while_the_daemon_is_down__processes_killed_revoked_after_restart(
    env: Env,
) -> None:
    first = env.daemon()
    client = first.client()
    job_id = client.submit("sleeper", "60 --grandchild")
    proc = env.started(first, job_id)
    wrapper = env.wrapper(job_id)
    grandchild = env.grandchild(job_id)
    first.kill()

    result = first.cli("job", "cancel", job_id, "--json")
    assert json.loads(result.stdout)["state"] == "deleting"
    for process in (proc, wrapper, grandchild):
        wait_for(f"pid {process.pid} to be gone", lambda p=process: gone(p))
    assert env.show(first, job_id)["state"] == "deleting"

    client = env.daemon().client()
    details = client.wait(job_id)
    assert details["status"] == "REVOKED" and details["reason"] == "cancelled"


@pytest.mark.timeout(90)
def test_cancel_cut_off_by_a_crash__restart_finishes_killing_the_job(env: Env) -> None:
    first = env.daemon()
    client = first.client()
    job_id = client.submit("sleeper", "60 --grandchild")
    proc = env.started(first, job_id)
    grandchild = env.grandchild(job_id)
    first.kill()
    # The state a crash between recording a cancel and killing the processes leaves.
    env.sql(
        "UPDATE jobs SET state = 'deleting', state_reason = 'cancelled' WHERE id = :id", id=job_id
    )
    assert not gone(proc)

    client = env.daemon().client()
    details = client.wait(job_id)
    assert details["status"] == "REVOKED" and details["reason"] == "cancelled"
    for process in (proc, grandchild):
        wait_for(f"pid {process.pid} to be gone", lambda p=process: gone(p))


# --- walltime -------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_walltime__job_over_time_is_killed_and_ends_error(env: Env) -> None:
    daemon = env.daemon({"jobs": {"default_walltime_s": 2}})
    client = daemon.client()
    began = time.monotonic()
    job_id = client.submit("sleeper", "60")
    proc = env.started(daemon, job_id)
    details = client.wait(job_id)
    assert time.monotonic() - began < 30  # the walltime (2 s), not the job's 60 s; busy or not
    assert details["status"] == "error"
    assert "walltime" in details["reason"]
    wait_for("the job process to be gone", lambda: gone(proc))


@pytest.mark.timeout(90)
def test_walltime__applies_to_a_job_reattached_after_a_crash(env: Env) -> None:
    first = env.daemon({"jobs": {"default_walltime_s": 3}})
    client = first.client()
    job_id = client.submit("sleeper", "60")
    proc = env.started(first, job_id)
    first.kill()
    client = env.daemon().client()
    details = client.wait(job_id)
    assert details["status"] == "error" and "walltime" in details["reason"]
    wait_for("the job process to be gone", lambda: gone(proc))


# --- dispatch -------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_dispatch_is_event_driven__an_idle_daemon_starts_a_job_at_once(env: Env) -> None:
    daemon = env.daemon()
    client = daemon.client()
    time.sleep(0.5)  # let the start-up claim round pass: the scheduler is idle now
    for _ in range(5):
        job_id = client.submit("sleeper", "0")
        assert client.wait(job_id)["status"] == "completed"
        shown = env.show(daemon, job_id)
        delay = datetime.fromisoformat(shown["started_at"]) - datetime.fromisoformat(
            shown["created_at"]
        )
        assert delay.total_seconds() < 1.0, f"job {job_id} waited {delay} to start"
