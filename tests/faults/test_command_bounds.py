"""Oversized and OS-refused commands against a real daemon (issue #10, items 5 and 9).

Guards against: one request burning minutes of CPU with 100,000 repeated flags
(argparse is quadratic) and slowing every other client; a Galaxy ``count``
input of 200,000 turning into as many tokens; commands the OS will refuse (an
output name of 300 characters, a 900 kB argument) answering ``valid: true``
and failing later.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from bench.validation_load import measure
from tests.helpers import DaemonProcess

pytestmark = [pytest.mark.engine_independent, pytest.mark.timeout(600)]

SCRIPT = Path(__file__).resolve().parents[1] / "data" / "scripts" / "all_actions.py"
SLUG = "all-actions"
REQUIRED = "--name bob data 5"
UPLOAD = {"data": ("d.txt", b"x")}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    base = tmp_path_factory.mktemp("command-bounds")
    proc = DaemonProcess(base / "data").start()
    try:
        with open(SCRIPT, "rb") as handle:
            added = proc.client().post("/api/scripts/v1/add-or-update/", files={SLUG: handle})
        assert added.status_code == 200 and added.json()[0]["success"], added.text
        yield proc
    finally:
        proc.stop()


def submit(daemon: DaemonProcess, command: str) -> requests.Response:
    return daemon.client().post(
        f"/api/scripts/v1/{SLUG}/submit/",
        data={"job_name": "bounds", "command": command},
        files=UPLOAD,
    )


def test_100k_repeated_flags_are_refused_at_once(daemon: DaemonProcess) -> None:
    """Guards: a command of 100,000 flags keeping a worker busy for ~6 minutes."""
    started = time.monotonic()
    response = submit(daemon, REQUIRED + " --verbose" * 100_000)
    assert time.monotonic() - started < 60
    assert response.status_code == 400, response.text
    assert "2000" in response.json()["errors"]["command"]


def test_a_long_command_within_the_cap_is_checked_and_runs(daemon: DaemonProcess) -> None:
    """Guards: the out-of-process check losing or changing what a long command says."""
    client = daemon.client()
    response = submit(daemon, REQUIRED + " --mark" * 1500 + " -o out.txt")
    assert response.status_code == 200 and response.json()["valid"], response.text
    details = client.wait(response.json()["job_id"], timeout_s=120)
    assert details["status"] == "completed", details


def test_galaxy_count_input_is_capped(daemon: DaemonProcess) -> None:
    """Guards: ``{"quiet": 200000}`` on POST /api/tools becoming 200,000 tokens."""
    started = time.monotonic()
    response = requests.post(
        daemon.url + "/api/tools",
        params={"key": daemon.admin_key},
        json={"tool_id": SLUG, "inputs": {"name": "bob", "count": 5, "quiet": 200_000}},
        timeout=120,
    )
    assert time.monotonic() - started < 60
    assert response.status_code == 400, response.text
    assert "quiet" in response.json()["errors"]


def test_output_name_longer_than_255_bytes_is_refused(daemon: DaemonProcess) -> None:
    """Guards: a 300-character output name answering valid:true (the job then exits 2)."""
    response = submit(daemon, REQUIRED + " -o " + "a" * 300)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["valid"] is False
    assert "255 bytes" in body["errors"]["output"][0]


def test_argument_too_long_for_execve_is_refused(daemon: DaemonProcess) -> None:
    """Guards: a 900 kB argument answering valid:true (then: Argument list too long)."""
    response = submit(daemon, "--name " + "a" * 900_000 + " data 5")
    assert response.status_code == 400, response.text
    assert list(response.json()["errors"]) == ["name"]


def test_galaxy_face_names_the_parameter_too(daemon: DaemonProcess) -> None:
    """Guards: the same refusals on POST /api/tools (Galaxy's error shape)."""
    job_id = daemon.client().submit(SLUG, REQUIRED, files=UPLOAD)
    key = {"key": daemon.admin_key}
    inputs = requests.get(f"{daemon.url}/api/jobs/{job_id}/inputs", params=key, timeout=60)
    dataset = inputs.json()[0]["dataset"]
    base = {"name": "bob", "infile": dataset, "count": 5}
    for extra, param in (({"output": "b" * 300}, "output"), ({"name": "n" * 900_000}, "name")):
        response = requests.post(
            daemon.url + "/api/tools",
            params=key,
            json={"tool_id": SLUG, "inputs": {**base, **extra}},
            timeout=120,
        )
        assert response.status_code == 400, response.text[:500]
        body = response.json()
        assert body["err_code"] == 400008 and list(body["errors"]) == [param], body


def test_status_polls_stay_fast_while_oversized_commands_are_checked(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    """Guards: 4 concurrent oversized commands holding the GIL and worker threads, so
    other clients' status polls slowed from ~6 ms to ~170 ms (p50) and ~550 ms (p99).

    The issue's target (p99 within 2x of idle) is measured by bench/validation_load.py;
    on a shared 2-core machine this asserts generously (a floor of 80 ms over idle for
    the median), but far below the old figures.
    """
    client = daemon.client()
    job_id = client.submit(SLUG, REQUIRED, files=UPLOAD)
    result = measure(daemon.url, daemon.admin_key, job_id, tmp_path, count=4, seconds=8)
    print(result)
    assert result["attack_statuses"], result  # the attackers were answered meanwhile
    # Bounds with an absolute floor: on a loaded machine the checking processes compete
    # with the daemon for the cores, but the old code's 170 ms median stays far above.
    idle_p50 = result["idle_p50_ms"]
    assert result["loaded_p50_ms"] <= max(3 * idle_p50 + 15, idle_p50 + 80), result
    assert result["loaded_p99_ms"] <= max(4 * result["idle_p99_ms"], result["idle_p99_ms"] + 150)
