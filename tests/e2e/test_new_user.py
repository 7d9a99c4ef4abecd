"""What a new user tripped on trying the README (issue #10, item 12), on a real daemon.

One daemon for the module: a behave.py job with outputs at the top and in a
subdirectory, then the README's asset URLs by name, the Galaxy key forms on
/api/nodes, the CLI's state names, re-registering under another group, and
what the log says about all of it. Plus ``serve`` on a port already taken.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.helpers import JOB_SCRIPTS, Client, DaemonProcess, _env

pytestmark = pytest.mark.e2e

DOC = b"the quick brown fox jumps\n"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    proc = DaemonProcess(tmp_path_factory.mktemp("newuser") / "data").start(timeout_s=60)
    yield proc
    proc.stop(timeout_s=60)


@pytest.fixture(scope="module")
def admin(daemon: DaemonProcess) -> Client:
    return daemon.client()


@pytest.fixture(scope="module")
def done_job(admin: Client) -> dict[str, Any]:
    """A completed behave.py job: outputs runs.txt, where.txt, copy.txt, sub/count.txt."""
    admin.add_script("behave", JOB_SCRIPTS / "behave.py")
    job_id = admin.submit("behave", "--infile doc", files={"doc": ("doc.txt", DOC)})
    details = admin.wait(job_id, timeout_s=120)
    assert details["status"] == "completed", details
    return {"id": job_id, **details}


def _json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# --- asset URLs name the file -----------------------------------------------------------------


def test_asset_url__answers_by_output_name_not_404(
    daemon: DaemonProcess, admin: Client, done_job: dict[str, Any]
) -> None:
    """Guards: /assets/<name>/ answering 404 "job ... has no file 'count.txt'" although
    the job has that output (only the opaque file id was accepted), and a name reaching
    anything but the job's own outputs."""
    job_id = done_job["id"]
    by_name = {a["name"]: a for a in done_job["assets"]}
    assert {"copy.txt", "sub/count.txt"} <= set(by_name)

    response = admin.get(f"/api/jobs/v1/{job_id}/assets/copy.txt/")
    assert response.status_code == 200, response.text
    assert response.content == DOC
    assert response.headers["ETag"] == f'"{by_name["copy.txt"]["sha256"]}"'
    # Without the trailing slash, with HEAD, and a name in a subdirectory, as it is
    # and with its slash encoded.
    assert admin.head(f"/api/jobs/v1/{job_id}/assets/copy.txt").status_code == 200
    for path in ("sub/count.txt", "sub%2Fcount.txt"):
        response = admin.get(f"/api/jobs/v1/{job_id}/assets/{path}/")
        assert response.status_code == 200, (path, response.text)
        assert response.content == b"5\n"
    # The id in the details' url still works.
    url = by_name["copy.txt"]["url"]
    assert admin.get("/" + url.split("//", 1)[1].split("/", 1)[1]).content == DOC

    # A name resolves only among the job's recorded outputs: never to its inputs, its
    # logs or anything outside, and never for someone else's job.
    for name in (
        "0/doc.txt",  # an input's name
        "stdout",
        "..%2Fstdout",
        "../stdout",
        "%2E%2E%2Fresult",
        "sub",
        "nope.txt",
        "%2Fetc%2Fpasswd",
    ):
        response = admin.get(f"/api/jobs/v1/{job_id}/assets/{name}/")
        assert response.status_code == 404, (name, response.status_code, response.text)
        assert "err_code" in response.json()  # a JSON error (``..`` may never reach us)
    bob_key = daemon.cli("user", "create", "bob-assets").stdout.strip()
    bob = Client(daemon.url, bob_key)
    response = bob.get(f"/api/jobs/v1/{job_id}/assets/copy.txt/")
    assert response.status_code in (403, 404), response.text
    assert DOC not in response.content


# --- the Galaxy face's key forms on /api/nodes ----------------------------------------------


def test_nodes__accept_galaxy_key_forms(daemon: DaemonProcess) -> None:
    """Guards: /api/nodes answering 403 to the admin key sent as x-api-key or ?key=,
    although the Galaxy face accepts those forms everywhere else."""
    key = daemon.admin_key
    base = daemon.url
    node = requests.get(f"{base}/api/nodes", headers={"x-api-key": key}, timeout=30)
    assert node.status_code == 200, node.text
    name = node.json()[0]["name"]
    for path in ("/api/nodes", f"/api/nodes/{name}"):
        assert requests.get(f"{base}{path}?key={key}", timeout=30).status_code == 200
        assert requests.get(f"{base}{path}", headers={"x-api-key": key}, timeout=30).ok
        bearer = {"Authorization": f"Bearer {key}"}
        assert requests.get(f"{base}{path}", headers=bearer, timeout=30).status_code == 200
    undrain = requests.put(f"{base}/api/nodes/{name}/undrain?key={key}", timeout=30)
    assert undrain.status_code == 200, undrain.text
    wrong = requests.get(f"{base}/api/nodes", headers={"x-api-key": "x" * 40}, timeout=30)
    assert wrong.status_code in (401, 403)
    assert "err_code" in wrong.json()


# --- every face's state names in the CLI -------------------------------------------------------


def test_cli_job_list__accepts_every_faces_state_names(
    daemon: DaemonProcess, done_job: dict[str, Any]
) -> None:
    """Guards: ``job list --state completed`` (the README's Wooey name) refused with an
    error, the CLI knowing only the store's names (ok, deleted)."""
    job_id = done_job["id"]
    for name in ("completed", "COMPLETED", "ok", "OK"):
        listed = _json(daemon.cli("job", "list", "--state", name, "--json"))
        assert job_id in {j["id"] for j in listed}, name
    for name in ("FAILURE", "failure", "error", "REVOKED", "deleted", "submitted", "queued"):
        listed = _json(daemon.cli("job", "list", "--state", name, "--json"))
        assert job_id not in {j["id"] for j in listed}, name
    # Galaxy states this daemon never enters are accepted (and match nothing).
    assert _json(daemon.cli("job", "list", "--state", "paused", "--json")) == []
    several = _json(daemon.cli("job", "list", "--state", "running,completed", "--json"))
    assert job_id in {j["id"] for j in several}
    bad = daemon.cli("job", "list", "--state", "finished", check=False)
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()]
    assert "unknown state 'finished'" in bad.stderr and "completed" in bad.stderr


# --- re-registering under another group --------------------------------------------------------


def test_script_add__another_group_moves_the_script_never_a_twin(
    daemon: DaemonProcess, admin: Client, tmp_path: Path
) -> None:
    """Guards: ``script add napper.py --group Sleepers`` registering a second script
    ``napper-2`` instead of moving the existing ``napper`` (CLI and HTTP alike)."""
    napper = tmp_path / "napper.py"
    napper.write_bytes((JOB_SCRIPTS / "sleeper.py").read_bytes())
    first = admin.add_script("napper", napper)
    assert first["slug"] == "napper" and first["group"] == "Scripts"

    moved = _json(daemon.cli("script", "add", str(napper), "--group", "Sleepers", "--json"))
    assert (moved["slug"], moved["group"], moved["created"]) == ("napper", "Sleepers", False)

    # Over HTTP, with new content: a new version of the same script, in the new group.
    napper.write_text(napper.read_text() + "\n# v2\n")
    again = admin.add_script("napper", napper, group="Nappers")
    assert (again["slug"], again["group"], again["created"]) == ("napper", "Nappers", True)
    assert again["iteration"] == first["iteration"] + 1

    scripts = admin.get("/api/scripts/v1/list/").json()["scripts"]
    nappers = [s for s in scripts if s["script_name"] == "napper"]
    assert [(s["slug"], s["group"], s["versions_count"]) for s in nappers] == [
        ("napper", "Nappers", 2)
    ]
    listed = _json(daemon.cli("script", "list", "--json"))
    assert [s["slug"] for s in listed if s["script_name"] == "napper"] == ["napper"]


# --- the log names the job ---------------------------------------------------------------------


def test_log__every_job_line_names_the_job_and_startup_is_quiet(
    daemon: DaemonProcess, done_job: dict[str, Any]
) -> None:
    """Guards: the end of a job logged as ``job 12376@1796181637.72 ended`` (the pid, not
    the job), submissions and registrations logging nothing at INFO, and alembic's two
    lines on every start."""
    job_id = done_job["id"]
    log = daemon.log_path.read_text()
    lines = log.splitlines()
    assert any(f"job {job_id} submitted by user" in line and "behave" in line for line in lines)
    assert any(f"job {job_id} ended: exited exit=0 (process" in line for line in lines), log
    assert any("registered script behave" in line for line in lines), log
    assert not [line for line in lines if "alembic" in line], log
    assert daemon.admin_key not in log
    # A start's lines (before the first request): few, and none from alembic.
    start = [line for line in lines[: lines.index(next(x for x in lines if "serving on" in x)) + 1]]
    assert len(start) <= 5, start


# --- serve on a port in use --------------------------------------------------------------------


def test_serve__port_in_use_is_one_line_and_creates_nothing(tmp_path: Path) -> None:
    """Guards: ``serve`` on a taken port printing a 25-line traceback after creating the
    data dir, the database and the admin key."""
    data = tmp_path / "fresh"
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "jobferry.cli", "serve", "--port", str(port)]
            + ["--data-dir", str(data)],
            capture_output=True,
            text=True,
            timeout=120,
            env=_env(),
        )
    assert result.returncode != 0
    assert result.stderr.strip() == f"jobferry: error: 127.0.0.1:{port} is already in use"
    assert not data.exists()
