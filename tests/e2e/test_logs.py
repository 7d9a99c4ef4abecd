"""Structured logs against a real daemon (``logging.format: json``, access log on):
every line is JSON, access lines carry the request id the client got and the route
template (never the path), job lines carry the job's context, and every answer has
an ``X-Request-Id``. Also: the session's secrets watch finds a key in a JSON line."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.conftest import find_secrets
from tests.helpers import JOB_SCRIPTS, Client, DaemonProcess, running_daemon, wait_for

pytestmark = pytest.mark.e2e

#: A request id the daemon makes: 16 hex digits.
MADE_ID = re.compile(r"[0-9a-f]{16}")
ACCESS_FIELDS = {"request_id", "user_id", "method", "route", "status", "bytes", "duration_ms"}
JOB_FIELDS = ("job_id", "attempt", "node", "destination")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    base = tmp_path_factory.mktemp("logs")
    config = {
        "logging": {"level": "DEBUG", "access_log": True, "format": "json"},
        "node": {"name": "logs-node"},
    }
    with running_daemon(base / "data", config) as proc:
        yield proc


@pytest.fixture(scope="module")
def admin(daemon: DaemonProcess) -> Client:
    client = daemon.client()
    client.add_script("noop", JOB_SCRIPTS / "noop.py")
    return client


def records(daemon: DaemonProcess) -> list[dict[str, Any]]:
    """Every line of the daemon's log, each parsed as JSON (a line that is not fails)."""
    out = []
    for number, line in enumerate(daemon.log_path.read_text().splitlines(), 1):
        try:
            out.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"log line {number} is not JSON: {line!r}") from None
        assert isinstance(out[-1], dict), line
    return out


def access_line(daemon: DaemonProcess, request_id: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        for record in records(daemon):
            if record["logger"] == "jobferry.access" and record.get("request_id") == request_id:
                return record
        return None

    found: dict[str, Any] = wait_for(f"the access line of request {request_id}", find)
    return found


def test_json_logs__every_line_is_a_json_object_with_the_base_fields(
    daemon: DaemonProcess, admin: Client
) -> None:
    assert admin.get("/api/scripts/v1/list/").status_code == 200
    lines = records(daemon)
    assert any("serving on" in line["message"] for line in lines)
    for line in lines:
        assert {"time", "level", "logger", "message"} <= line.keys(), line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"]), line
        assert line["node"] == "logs-node", line


def test_access_line__carries_request_id_user_route_template_status_bytes_duration(
    daemon: DaemonProcess, admin: Client
) -> None:
    job_id = admin.submit("noop")
    response = admin.get(f"/api/jobs/v1/{job_id}/status/")
    assert response.status_code == 200
    rid = response.headers["X-Request-Id"]
    assert MADE_ID.fullmatch(rid)
    line = access_line(daemon, rid)
    assert ACCESS_FIELDS <= line.keys(), line
    user_id = admin.get("/api/whoami").json()["id"]
    assert line["user_id"] == user_id
    assert (line["method"], line["route"], line["status"]) == (
        "GET",
        "/api/jobs/v1/{}/status",
        200,
    )
    assert job_id not in line["route"] and job_id not in line["message"]
    assert line["bytes"] == len(response.content)
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0


def test_access_line__of_an_unauthenticated_request_has_no_user(daemon: DaemonProcess) -> None:
    response = requests.get(daemon.url + "/api/scripts/v1/list/", timeout=60)
    assert response.status_code == 403
    line = access_line(daemon, response.headers["X-Request-Id"])
    assert line["user_id"] is None and line["status"] == 403
    assert line["route"] == "/api/scripts/v1/list"


def test_request_id__is_on_200_4xx_and_404_answers_and_a_sane_one_is_echoed(
    daemon: DaemonProcess, admin: Client
) -> None:
    answers = {
        "200": admin.get("/api/scripts/v1/list/"),
        "403": requests.get(daemon.url + "/api/jobs/v1/0123456789abcdef/status/", timeout=60),
        "404": admin.get("/no/such/route"),
    }
    for expected, response in answers.items():
        assert str(response.status_code) == expected, (expected, response.text)
        assert MADE_ID.fullmatch(response.headers.get("X-Request-Id", "")), expected
    assert answers["403"].json()["error"]  # a JSON error
    assert answers["404"].json()["error"] == "not_found"
    assert access_line(daemon, answers["404"].headers["X-Request-Id"])["route"] == "(unmatched)"
    ids = {response.headers["X-Request-Id"] for response in answers.values()}
    assert len(ids) == len(answers)  # one per request

    sane = "proxy-req_42.a"
    echoed = admin.get("/no/such/route", headers={"X-Request-Id": sane})
    assert echoed.headers["X-Request-Id"] == sane
    assert access_line(daemon, sane)["status"] == 404
    for insane in ("has space", "x" * 65, "semi;colon", "new\tline"):
        made = admin.get("/api/scripts/v1/list/", headers={"X-Request-Id": insane})
        assert MADE_ID.fullmatch(made.headers["X-Request-Id"]), insane


def test_job_lines__carry_job_id_attempt_node_and_destination(
    daemon: DaemonProcess, admin: Client
) -> None:
    response = admin.post(
        "/api/scripts/v1/noop/submit/", data={"job_name": "logged", "command": ""}
    )
    assert response.status_code == 200 and response.json()["valid"], response.text
    job_id = str(response.json()["job_id"])
    assert admin.wait(job_id)["status"] == "completed"

    def job_lines() -> list[dict[str, Any]]:
        """Every line that is about the job: it has the job's id, in a field or the text."""
        return [r for r in records(daemon) if r.get("job_id") == job_id or job_id in r["message"]]

    # The submission, the runner's start and end, the end recorded: all about the job.
    wait_for("its end's lines", lambda: sum("ended" in r["message"] for r in job_lines()) >= 2)
    lines = job_lines()
    for line in lines:
        fields = {name: line.get(name, "missing") for name in JOB_FIELDS}
        if "submitted by user" in line["message"] and fields["attempt"] == 0:
            fields["attempt"] = 1  # submitted and queued: claimed (attempt 1) later
        assert fields == {
            "job_id": job_id,
            "attempt": 1,
            "node": "logs-node",
            "destination": "local",
        }, line
    loggers = {line["logger"] for line in lines}
    assert {"jobferry.services.jobs", "jobferry.runners.local"} <= loggers, loggers
    # The submission was logged while serving its request (in a worker thread).
    [submitted] = [r for r in lines if "submitted by user" in r["message"]]
    assert submitted["request_id"] == response.headers["X-Request-Id"]


def test_json_logs__tornados_malformed_message_warnings_carry_no_key_or_job_key(
    daemon: DaemonProcess, admin: Client
) -> None:
    key = daemon.admin_key
    job_key = "0123456789abcdef" * 4
    host, port = daemon.url.removeprefix("http://").rsplit(":", 1)
    heads = (
        f"GET /api/jobs/{'e' * 16}/files?job_key={job_key}&path=x HTTP/1.1\r\nBad header\r\n",
        f"GET /api/whoami?key={key} HTTP/1.1\r\nAuthorization: Bearer {key}\x01\r\n",
    )
    for head in heads:
        with socket.create_connection((host, int(port)), timeout=60) as conn:
            conn.sendall(f"{head}Host: x\r\n\r\n".encode())
            while conn.recv(65536):
                pass
    requests.get(f"{daemon.url}/api/jobs/{'e' * 16}/files?job_key={job_key}&path=x", timeout=60)

    def malformed() -> list[dict[str, Any]]:
        return [r for r in records(daemon) if "Malformed HTTP" in r["message"]]

    wait_for("Tornado's two warnings", lambda: len(malformed()) >= 2)
    text = daemon.log_path.read_text()
    assert job_key not in text and key not in text and key[3:20] not in text


def test_secrets_watch__finds_a_key_job_key_or_password_in_a_json_line(tmp_path: Path) -> None:
    key = "jf_" + "Zq9" * 10
    job_key = "ab" * 32
    password = 'pa"ss wörd'
    log = tmp_path / "daemon.log"
    clean = json.dumps({"message": "serving", "route": "/api/jobs/{}/files"})
    log.write_text(clean + "\n")
    assert find_secrets({log}, {job_key, password}) == []
    for planted in (key, job_key, password):
        log.write_text(clean + "\n" + json.dumps({"message": f"oops {planted}"}) + "\n")
        found = find_secrets({log}, {job_key, password})
        assert len(found) == 1 and found[0].startswith(f"{log}:2: "), (planted, found)
