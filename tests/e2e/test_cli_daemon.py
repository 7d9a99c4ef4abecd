"""The admin command line, as real ``python -m jobferry.cli`` processes, against a running
daemon: keys it honours or refuses, and job commands."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from tests.db import store_sql
from tests.e2e.cli_helpers import as_json, assert_one_line_error
from tests.helpers import JOB_SCRIPTS, Client, DaemonProcess, eventually, wait_for

pytestmark = pytest.mark.e2e


# --- against a running daemon ---------------------------------------------------------------


def accepted(client: Client) -> bool:
    """Whether the daemon accepts the client's key (any user may ask about a job: 404)."""
    status = client.get("/api/jobs/v1/0123456789abcdef/status/").status_code
    assert status in (403, 404), status
    return status == 404


class Live:
    """A running daemon whose first user (an admin) was created with the CLI."""

    def __init__(self, daemon: DaemonProcess, admin_key: str, user_key: str) -> None:
        self.daemon = daemon
        self.admin_key = admin_key
        self.user_key = user_key

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.daemon.cli(*args, check=check)

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(as_json(self.cli("job", "show", job_id, "--json")))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    daemon = DaemonProcess(tmp_path_factory.mktemp("cli") / "data")
    created = daemon.cli("user", "create", "root", "--email", "root@example.org", "--admin")
    assert created.stderr == ""
    admin_key = created.stdout
    assert re.fullmatch(r"\S{20,}\n", admin_key), admin_key  # the key alone, one line
    user_key = daemon.cli("user", "create", "alice").stdout.strip()
    daemon.cli("script", "add", str(JOB_SCRIPTS / "sleeper.py"), "--name", "sleeper")
    daemon.start()
    try:
        yield Live(daemon, admin_key.strip(), user_key)
    finally:
        daemon.stop()


def test_user_create__key_works_against_the_daemon(live: Live) -> None:
    admin = live.daemon.client(live.admin_key)
    response = admin.get("/api/scripts/v1/list/")
    assert response.status_code == 200, response.text
    assert "sleeper" in response.text
    assert not (live.daemon.data_dir / "admin-api-key").exists()  # root is the first admin
    user = live.daemon.client(live.user_key)
    with open(JOB_SCRIPTS / "noop.py", "rb") as handle:
        refused = user.post("/api/scripts/v1/add-or-update/", files={"noop": handle})
    assert refused.status_code == 403  # alice is no admin
    carol = live.cli("user", "create", "carol").stdout.strip()  # while the daemon runs
    assert accepted(live.daemon.client(carol))


def test_key_revoke__the_daemon_refuses_the_key_afterwards(live: Live) -> None:
    key = live.cli("key", "create", "alice", "--name", "temporary").stdout.strip()
    client = live.daemon.client(key)
    assert accepted(client)
    listed = as_json(live.cli("key", "list", "--user", "alice", "--json"))
    (entry,) = [k for k in listed if k["name"] == "temporary"]
    assert entry["last_used_at"] is not None
    assert key not in json.dumps(listed)
    live.cli("key", "revoke", entry["id"])
    # A revocation by another process applies within api.key_cache_s (1 s).
    assert eventually(lambda: not accepted(client))
    assert accepted(live.daemon.client(live.user_key))  # alice's other key still works


def test_job_commands__list_show_logs_key_of_a_finished_job(live: Live) -> None:
    client = live.daemon.client(live.user_key)
    job_id = client.submit("sleeper", "0.1", job_name="quick one")
    details = client.wait(job_id, timeout_s=60)
    assert details["status"] == "completed", details

    shown = live.job(job_id)
    assert (shown["id"], shown["user"], shown["script"], shown["name"]) == (
        job_id,
        "alice",
        "sleeper",
        "quick one",
    )
    assert (shown["state"], shown["exit_code"], shown["attempt"]) == ("ok", 0, 1)
    assert shown["argv"][-1] == "0.1"
    assert re.search(r"^state\s+ok$", live.cli("job", "show", job_id).stdout, re.M)

    stdout = live.cli("job", "logs", job_id).stdout
    assert re.match(r"pid \d+ sleeping 0\.1\nawake\n$", stdout), stdout
    assert live.cli("job", "logs", job_id, "--stderr").stdout == "to stderr\n"
    assert as_json(live.cli("job", "logs", job_id, "--stderr", "--json")) == {
        "id": job_id,
        "stderr": "to stderr\n",
    }

    key = live.cli("job", "key", job_id).stdout
    assert re.fullmatch(r"[0-9a-f]{64}\n", key), key
    (row,) = store_sql(
        live.daemon.database_url, "SELECT value FROM settings WHERE key = 'job_key_secret'"
    )
    secret = row["value"]
    expected = hmac.new(bytes.fromhex(secret), job_id.encode(), hashlib.sha256).hexdigest()
    assert key.strip() == expected
    assert as_json(live.cli("job", "key", job_id, "--json")) == {"id": job_id, "job_key": expected}

    ids = [j["id"] for j in as_json(live.cli("job", "list", "--json"))]
    assert job_id in ids
    by_state = as_json(live.cli("job", "list", "--state", "ok", "--user", "alice", "--json"))
    assert job_id in [j["id"] for j in by_state]
    assert {(j["state"], j["user"]) for j in by_state} == {("ok", "alice")}
    assert job_id not in [
        j["id"] for j in as_json(live.cli("job", "list", "--state", "running", "--json"))
    ]
    assert as_json(live.cli("job", "list", "--user", "root", "--json")) == []
    table = live.cli("job", "list", "--user", "alice").stdout.splitlines()
    assert table[0].split() == [
        "ID",
        "USER",
        "NAME",
        "STATE",
        "EXIT_CODE",
        "DESTINATION",
        "NODE",
        "CREATED_AT",
    ]
    assert any(line.startswith(job_id) and " ok " in line for line in table[1:])

    refused = live.cli("job", "cancel", job_id, check=False)
    assert_one_line_error(refused, "already ended")
    assert live.job(job_id)["state"] == "ok"


def test_job_cancel__ends_a_running_job_revoked_and_kills_its_process(live: Live) -> None:
    client = live.daemon.client(live.user_key)
    job_id = client.submit("sleeper", "30", job_name="long one")

    def started() -> int | None:
        match = re.search(r"pid (\d+) sleeping", live.cli("job", "logs", job_id).stdout)
        return int(match.group(1)) if match else None

    pid = wait_for("the job to start", started)
    assert live.job(job_id)["state"] == "running"
    assert psutil.pid_exists(pid)

    cancelled = as_json(live.cli("job", "cancel", job_id, "--json"))
    assert cancelled["id"] == job_id and cancelled["state"] in ("deleting", "deleted")
    wait_for("the job to end", lambda: live.job(job_id)["state"] == "deleted")

    def gone() -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_for("the job's process to go", gone)
    status = client.get(f"/api/jobs/v1/{job_id}/status/").json()
    assert (status["status"], status["is_complete"]) == ("REVOKED", True)
    assert "awake" not in live.cli("job", "logs", job_id).stdout
    # Cancelling again is harmless; the state stays.
    assert as_json(live.cli("job", "cancel", job_id, "--json"))["state"] == "deleted"
    listed = as_json(live.cli("job", "list", "--state", "deleted", "--json"))
    assert job_id in [j["id"] for j in listed]


@pytest.mark.parametrize(
    "args",
    [
        ["user", "list"],
        ["key", "list"],
        ["key", "list", "--user", "alice"],
        ["script", "list"],
        ["script", "show", "sleeper"],
        ["job", "list"],
        ["job", "list", "--state", "queued"],
        ["db", "status"],
        ["config", "check"],
    ],
)
def test_cli__json_output_parses(live: Live, args: list[str]) -> None:
    data = as_json(live.cli(*args, "--json"))
    assert isinstance(data, list | dict)
    assert live.cli(*args).stdout.strip()  # and a readable default output
