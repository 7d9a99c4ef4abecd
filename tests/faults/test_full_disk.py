"""A full disk under the daemon's data directory (SQLite store inside it).

Each test names the failure it guards (issue #10, items 1 and 6).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from tests.db import on_postgres
from tests.faults._disk_helpers import (  # noqa: F401 - the fixture
    DEADLINE_S,
    DiskDaemon,
    disk_daemon,
    wait_for,
)
from tests.faults.conftest import fill
from tests.helpers import JOB_SCRIPTS

# The store itself (SQLite, in the data directory) is on the small filesystem: that is
# the point, so these run on SQLite only (scripts/test runs engine_independent there).
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.engine_independent,
    pytest.mark.skipif(on_postgres(), reason="the SQLite store is what fills up"),
]

EXIT_CODE = 117  # distinctive (not Python's own 120 for a failed flush at exit)
#: How long the disk stays full: longer than the old daemon kept retrying (3.5 s).
FULL_FOR_S = 8.0


def test_a_job_that_fills_the_disk_ends_with_its_true_exit_code_once_space_returns(
    disk_daemon: Callable[..., DiskDaemon],  # noqa: F811
) -> None:
    """Guards: "recording the end failed (database or disk is full)" three times, then
    the daemon gave up following the job: it answered `running` after space was freed,
    and only a restart ended it, as `error` "result file has no exit code"."""
    env = disk_daemon(20)
    job_id, ballast = env.fill_with_job(EXIT_CODE)
    # While the disk is full the end may not be recordable: the job is never lost.
    assert env.status(job_id)["status"] in ("running", "FAILURE")
    time.sleep(FULL_FOR_S)  # the outage's length (the scenario), not a synchronisation
    assert not env.status(job_id)["is_complete"]

    ballast.unlink()  # space returns; no restart

    wait_for("the job's end", lambda: env.status(job_id)["is_complete"])
    details = env.details(job_id)
    assert (details["status"], details["exit_code"]) == ("FAILURE", EXIT_CODE), details
    assert "disk" in (details.get("reason") or ""), details
    # The daemon serves new work as before.
    again = env.client.submit("disk_filler", "--mb 0 --exit-code 3")
    assert env.client.wait(again, timeout_s=DEADLINE_S)["exit_code"] == 3


def test_a_job_end_the_full_store_cannot_take_is_kept_and_recorded_once_space_returns(
    disk_daemon: Callable[..., DiskDaemon],  # noqa: F811
    small_fs: Callable[[int], Path],
) -> None:
    """Guards: the daemon tried to record a job's end four times ("database or disk is
    full"), then gave up following the job, which answered `running` for good.

    The store lies on a filesystem of its own, which the test fills: the job and its
    wrapper's result (on the data directory's) are untouched, only the store's write
    fails. (With one filesystem for both, the few KiB a job left for its result raced
    the log filters and the store's own writes for the same free pages: flaky.)"""
    store_fs = small_fs(20)
    store = store_fs / "jobferry.db"
    env = disk_daemon(20, {"database": {"url": f"sqlite:///{store}"}})
    go = env.fs / "go"
    job_id = env.client.submit("disk_filler", f"--mb 0 --exit-code {EXIT_CODE} --go {go}")
    env.job_pid(job_id)
    env.shrink_wal(store)
    filler = fill(store_fs)
    go.touch()
    result = env.job_dir(job_id) / "result"
    wait_for("the wrapper's result", lambda: "exit_code=" in _text(result))
    time.sleep(FULL_FOR_S)  # the outage's length (the scenario), not a synchronisation
    assert not env.status(job_id)["is_complete"]

    filler.unlink()  # space returns; no restart

    wait_for("the job's end", lambda: env.status(job_id)["is_complete"])
    details = env.details(job_id)
    assert (details["status"], details["exit_code"]) == ("FAILURE", EXIT_CODE), details
    # The job's own disk was never full: its outputs are whole, and the end says so.
    assert "disk was full" not in (details.get("reason") or ""), details


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def test_a_job_end_pending_on_a_full_disk_survives_kill_9_of_the_daemon(
    disk_daemon: Callable[..., DiskDaemon],  # noqa: F811
) -> None:
    """Guards: the end of a job that finished while the disk was full lived only in the
    daemon's memory (the wrapper's result file was left empty): after kill -9 and a
    restart the job ended `error` "result file has no exit code"."""
    env = disk_daemon(20)
    job_id, ballast = env.fill_with_job(EXIT_CODE)
    assert not env.status(job_id)["is_complete"] or env.details(job_id)["exit_code"] == EXIT_CODE

    assert env.daemon.proc is not None
    os.kill(env.daemon.proc.pid, signal.SIGKILL)
    env.daemon.proc.wait(DEADLINE_S)
    ballast.unlink()
    env.restart()

    wait_for("the job's end", lambda: env.status(job_id)["is_complete"])
    details = env.details(job_id)
    assert (details["status"], details["exit_code"]) == ("FAILURE", EXIT_CODE), details


def _files(root: Path) -> dict[str, int]:
    """Every file under *root* with its size, but the store's own and the filler."""
    found: dict[str, int] = {}
    for path in root.rglob("*"):
        name = path.name
        if name == ".filler" or name.startswith("jobferry.db") or not path.is_file():
            continue
        try:
            found[str(path.relative_to(root))] = path.stat().st_size
        except FileNotFoundError:
            pass
    return found


def _is_507(response: requests.Response) -> bool:
    assert response.status_code == 507, (response.status_code, response.text)
    body = response.json()
    assert body["error"] == "insufficient_storage", body
    assert "out of disk space" in body["message"], body
    return True


@pytest.mark.parametrize("free_kb", [0, 256], ids=["full", "room-for-part"])
def test_uploads_submissions_and_job_files_on_a_full_disk_answer_507_and_keep_nothing(
    disk_daemon: Callable[..., DiskDaemon],  # noqa: F811
    free_kb: int,
) -> None:
    """Guards: a full disk answered `500 internal_error` to uploads, submissions (with
    and without files) and job_files writes; the daemon must answer 507 Insufficient
    Storage, keep nothing half-written, and serve again once space returns (no restart).
    *free_kb*: what is left (room for part of an upload, which must then go again)."""
    env = disk_daemon(20)
    client = env.client
    client.add_script("behave", JOB_SCRIPTS / "behave.py")
    # A running job to write job_files to (it waits for a file that never comes).
    job_id = client.submit("disk_filler", f"--mb 0 --go {env.fs}/never")
    env.job_pid(job_id)
    key = env.daemon.cli("job", "key", job_id).stdout.strip()
    files_url = f"{env.daemon.url}/api/jobs/{job_id}/files"
    payload = os.urandom(1 << 20)

    def submit_with_file() -> requests.Response:
        return client.post(
            "/api/scripts/v1/behave/submit/",
            data={"job_name": "full", "command": ""},
            files={"infile": ("in.txt", payload)},
        )

    def submit_without_file() -> requests.Response:
        return client.post(
            "/api/scripts/v1/behave/submit/", data={"job_name": "full", "command": "--sleep 0"}
        )

    def upload_script() -> requests.Response:
        script = (JOB_SCRIPTS / "behave.py").read_bytes() + b"\n#" + b"x" * (512 << 10) + b"\n"
        return client.post(
            "/api/scripts/v1/add-or-update/",
            data={"group": "full"},
            files={"behave_big": ("behave_big.py", script)},
        )

    def write_job_file() -> requests.Response:
        return requests.post(
            files_url,
            params={"job_key": key, "path": "work/out.bin"},
            files={"file": ("out.bin", payload)},
            timeout=60,
        )

    requests_ = [submit_with_file, upload_script, write_job_file]
    if not free_kb:
        requests_.append(submit_without_file)  # it needs no more than the store's growth
    env.shrink_wal()
    filler = fill(env.fs, leave_bytes=free_kb << 10)
    before = _files(env.fs)

    for make in requests_:
        assert _is_507(make()), make.__name__
    assert _files(env.fs) == before  # nothing half-written, nothing new

    filler.unlink()  # space returns; no restart

    assert submit_with_file().status_code == 200
    assert submit_without_file().json()["valid"] is True
    uploaded = upload_script().json()[0]
    assert uploaded["success"] is True, uploaded
    assert write_job_file().status_code == 200
    assert (env.job_dir(job_id) / "work" / "out.bin").read_bytes() == payload
