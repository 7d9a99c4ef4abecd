"""The disk guard on a real daemon whose data directory lies on a small filesystem.

Filled below ``storage.min_free_mb`` (but with room left, so only the guard can be
what refuses), the daemon answers 507 with what is free and what is required to
every new submission and upload, before their bodies are taken: Wooey submissions
(with and without files), script uploads, Galaxy tool runs and job_files uploads into
a job that has not started. A running job continues: its job_files uploads are
taken and its outputs land. Once space returns, the guard clears by itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.faults._disk_helpers import DiskDaemon, disk_daemon  # noqa: F401
from tests.faults.conftest import fill
from tests.faults.test_full_disk import _files
from tests.helpers import JOB_SCRIPTS, wait_for

pytestmark = pytest.mark.timeout(300)

REQUIRED_MB = 16
CONFIG = {
    "storage": {"min_free_mb": REQUIRED_MB, "min_free_percent": 0, "check_interval_s": 0.2},
    "runners": {"local": {"slots": 1}},  # one job runs, the next one waits
}


def _is_guard_507(response: requests.Response) -> dict[str, Any]:
    assert response.status_code == 507, (response.status_code, response.text)
    body = response.json()
    assert body["error"] == "insufficient_storage", body
    assert body["message"].startswith("Not enough free disk space for "), body
    details = body["details"]
    assert details["required_mb"] == REQUIRED_MB and details["required_percent"] == 0
    assert 0 <= details["free_mb"] < REQUIRED_MB
    assert 0 <= details["free_percent"] < 100
    return dict(details)


def test_disk_guard__below_the_threshold_new_work_gets_507_running_jobs_continue(
    disk_daemon: Callable[..., DiskDaemon],  # noqa: F811
    tmp_path: Path,
) -> None:
    env = disk_daemon(64, CONFIG)
    client = env.client
    client.add_script("behave", JOB_SCRIPTS / "behave.py")
    go = tmp_path / "go"  # outside the small filesystem
    running = client.submit("disk_filler", f"--mb 1 --go {go}")
    env.job_pid(running)
    waiting = client.submit("disk_filler", "--mb 0")
    assert env.status(waiting)["status"] in ("submitted", "queued"), env.status(waiting)
    keys = {j: env.daemon.cli("job", "key", j).stdout.strip() for j in (running, waiting)}
    payload = os.urandom(256 << 10)
    galaxy = requests.Session()
    galaxy.headers["x-api-key"] = env.daemon.admin_key

    def submit_with_file() -> requests.Response:
        return client.post(
            "/api/scripts/v1/behave/submit/",
            data={"job_name": "low", "command": ""},
            files={"infile": ("in.txt", payload)},
        )

    def submit_without_file() -> requests.Response:
        return client.post(
            "/api/scripts/v1/behave/submit/", data={"job_name": "low", "command": "--sleep 0"}
        )

    def upload_script() -> requests.Response:
        return client.post(
            "/api/scripts/v1/add-or-update/",
            data={"group": "low"},
            files={"behave_low": ("behave_low.py", (JOB_SCRIPTS / "behave.py").read_bytes())},
        )

    def galaxy_tool_run() -> requests.Response:
        body = {"tool_id": "behave", "inputs": {}}
        return galaxy.post(f"{env.daemon.url}/api/tools", json=body, timeout=60)

    def job_file(job_id: str, name: str) -> requests.Response:
        return requests.post(
            f"{env.daemon.url}/api/jobs/{job_id}/files",
            params={"job_key": keys[job_id], "path": f"work/{name}"},
            files={"file": (name, payload)},
            timeout=60,
        )

    def input_into_waiting_job() -> requests.Response:
        return job_file(waiting, "in.bin")

    refused = [
        submit_with_file,
        submit_without_file,
        upload_script,
        galaxy_tool_run,
        input_into_waiting_job,
    ]
    env.shrink_wal()
    filler = fill(env.fs, leave_bytes=(REQUIRED_MB // 2) << 20)  # room, but under the guard
    before = _files(env.fs)

    answers = {make.__name__: _is_guard_507(make()) for make in refused}
    print(f"507 details on a 64 MiB filesystem: {answers}")
    assert _files(env.fs) == before  # nothing written
    # /readyz says why this node should get no new work (its one-second cache aside).
    ready = wait_for(
        "/readyz to report the disk",
        lambda: (r := client.get("/readyz")).status_code == 503 and r.json(),
    )
    assert ready["checks"]["disk"].startswith("low on disk space"), ready

    # The running job continues: its uploads are taken, its own outputs land.
    assert job_file(running, "late.bin").status_code == 200
    go.touch()
    ended = client.wait(running)
    assert ended["status"] == "completed", ended
    work = env.job_dir(running) / "work"
    assert (work / "big.out").stat().st_size == 1 << 20
    assert (work / "late.bin").read_bytes() == payload

    filler.unlink()  # space returns; no restart: the guard clears by itself
    wait_for("the guard to clear", lambda: submit_without_file().status_code == 200)
    wait_for("/readyz to clear", lambda: client.get("/readyz").status_code == 200)
    assert submit_with_file().status_code == 200
    assert upload_script().json()[0]["success"] is True
    assert galaxy_tool_run().status_code == 200
    assert input_into_waiting_job().status_code == 200
    assert (env.job_dir(waiting) / "work" / "in.bin").read_bytes() == payload
