"""A daemon on PostgreSQL outlives the database going away: 503 meanwhile, no restart needed.

Runs on a private cluster (tests.pg_cluster), never the shared server, whatever
JOBFERRY_TEST_DB says: it is engine-independent in that sense.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from tests.helpers import JOB_SCRIPTS, DaemonProcess, eventually
from tests.pg_cluster import PrivateCluster

pytestmark = [pytest.mark.e2e, pytest.mark.engine_independent, pytest.mark.timeout(180)]


def status_of(daemon: DaemonProcess, job_id: str) -> requests.Response:
    return daemon.client().get(f"/api/jobs/v1/{job_id}/status/")


def test_daemon__postgres_outage_answers_503_and_recovers_without_restart(
    cluster: PrivateCluster, tmp_path: Path
) -> None:
    config = {"database": {"url": cluster.url, "pool_size": 2}, "runners": {"local": {"slots": 2}}}
    daemon = DaemonProcess(tmp_path / "data", config).start()
    try:
        client = daemon.client()
        client.add_script("sleeper", JOB_SCRIPTS / "sleeper.py")
        quick = client.submit("sleeper", "0.1")
        assert client.wait(quick)["status"] == "completed"
        # Ends while the database is down: its end must be recorded once it is back.
        during = client.submit("sleeper", "3")
        assert eventually(lambda: "sleeping" in _stdout(daemon, during))
        assert status_of(daemon, during).json()["status"] == "running"

        cluster.stop()
        down = status_of(daemon, during)
        assert down.status_code == 503, down.text
        body = down.json()
        assert (body["error"], body["err_code"]) == ("store_unavailable", 503001)
        assert "cannot be reached" in body["message"]
        assert str(cluster.port) not in down.text  # the driver's words stay in the log
        refused = client.post(
            "/api/scripts/v1/sleeper/submit/", data={"job_name": "x", "command": "0.1"}
        )
        assert refused.status_code == 503, refused.text
        galaxy = requests.get(f"{daemon.url}/api/jobs/{during}", params={"key": daemon.admin_key})
        assert galaxy.status_code == 503 and galaxy.json()["err_code"] == 503001, galaxy.text
        pid = daemon.proc.pid if daemon.proc else None
        assert daemon.proc is not None and daemon.proc.poll() is None  # the daemon runs on
        # Stay down past the job's end, so the end is recorded only after the restart.
        assert (daemon.data_dir / "jobs" / during[:2] / during).is_dir()
        assert eventually(lambda: "awake" in _stdout(daemon, during))

        cluster.start()
        assert eventually(lambda: status_of(daemon, during).status_code == 200)
        details = client.wait(during)
        assert (details["status"], details["exit_code"]) == ("completed", 0), details
        assert "awake" in details["stdout"]
        after = client.submit("sleeper", "0.1")
        assert client.wait(after)["status"] == "completed"
        assert client.wait(quick)["status"] == "completed"  # nothing stored before was lost
        assert daemon.proc.pid == pid and daemon.proc.poll() is None
    finally:
        daemon.stop()


def _stdout(daemon: DaemonProcess, job_id: str) -> str:
    path = daemon.data_dir / "jobs" / job_id[:2] / job_id / "stdout"
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""
