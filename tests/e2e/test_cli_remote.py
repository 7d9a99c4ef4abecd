"""``jobferry remote``, as real client processes against a real daemon: every command in
text and JSON, submit with files and --wait, a followed log, cancel, the job list."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest

from tests.e2e.remote_helpers import SCRIPT, Remote, remote_daemon  # noqa: F401 (a fixture)
from tests.helpers import DEADLINE_S, wait_for

pytestmark = pytest.mark.e2e


def submit(remote: Remote, *args: str) -> str:
    result = remote.ok("submit", SCRIPT, *args)
    job_id = result.stdout.strip()
    assert re.fullmatch(r"\S+", job_id), result.stdout  # the id alone: $(jobferry remote submit)
    return job_id


def fields(text: str) -> dict[str, str]:
    """``key  value`` lines as a dict (an empty value: "")."""
    return {
        p[0]: (p[1].strip() if len(p) > 1 else "")
        for p in (x.split(None, 1) for x in text.splitlines())
    }


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Path]:
    """A file a gated job waits for; opened at the end whatever happened (a job left
    waiting would outlive the daemon: local jobs are re-attached, not killed, on stop)."""
    path = tmp_path / "gate"
    yield path
    path.touch()


def holds_connection(pid: int, port: int | None) -> bool:
    """Whether process *pid* has a TCP connection open to *port* on this host."""
    connections = psutil.Process(pid).net_connections(kind="tcp")
    return any(c.raddr and c.raddr.port == port and c.status == "ESTABLISHED" for c in connections)


def state(remote: Remote, job_id: str) -> str:
    return str(
        remote.daemon.client(remote.key).get(f"/api/jobs/v1/{job_id}/status/").json()["status"]
    )


def test_scripts__lists_the_registered_script_as_a_table_and_as_json(remote: Remote) -> None:
    text = remote.ok("scripts").stdout.splitlines()
    assert text[0].split()[:3] == ["SLUG", "NAME", "VERSION"]
    assert any(line.split()[0] == SCRIPT for line in text[1:]), text
    listed = json.loads(remote.ok("scripts", "--json").stdout)
    assert [s["slug"] for s in listed] == [SCRIPT]
    assert set(listed[0]) == {"slug", "name", "version", "group", "description"}


def test_submit__uploads_files_waits_and_prints_the_finished_job(remote: Remote, tmp_path) -> None:
    doc = tmp_path / "doc.txt"
    doc.write_text("one two three\n")
    result = remote.ok("submit", SCRIPT, "--file", f"doc={doc}", "--wait", "--", "-i", "doc")
    shown = fields(result.stdout)
    assert shown["status"] == "completed", result.stdout
    assert shown["exit_code"] == "0" and shown["job_name"] == SCRIPT
    assert "copy.txt (14 bytes)" in shown["assets"]
    as_json = remote.ok(
        "submit",
        SCRIPT,
        "--file",
        f"doc={doc}",
        "--wait",
        "--json",
        "--name",
        "jsonwait",
        "--",
        "--infile",
        "doc",
    )
    details = json.loads(as_json.stdout)
    assert details["status"] == "completed" and details["is_complete"] is True
    assert details["job_name"] == "jsonwait"
    assert "copied 3 words" in details["stdout"]
    [asset] = details["assets"]
    assert asset["name"] == "copy.txt" and asset["size"] == 14 and len(asset["sha256"]) == 64
    downloaded = tmp_path / "out"
    remote.ok("download", details["job_id"], "--to", str(downloaded))
    assert (downloaded / "copy.txt").read_text() == "one two three\n"


def test_submit__without_wait_prints_the_id_and_json_names_it(remote: Remote) -> None:
    job_id = submit(remote)
    data = json.loads(remote.ok("submit", SCRIPT, "--json").stdout)
    assert set(data) == {"job_id"} and data["job_id"] != job_id
    remote.ok("wait", job_id)


def test_submit_wait__a_failing_job_exits_3_with_its_details(remote: Remote) -> None:
    result = remote.run("submit", SCRIPT, "--wait", "--json", "--", "--exit-code", "2")
    assert result.returncode == 3, result.stderr
    details = json.loads(result.stdout)
    assert details["status"] == "FAILURE" and details["exit_code"] == 2


def test_status_and_wait__report_a_gated_job_and_wait_long_polls(
    remote: Remote, gate: Path
) -> None:
    job_id = submit(remote, "--", "--gate", str(gate))
    wait_for("the job to run", lambda: state(remote, job_id) == "running")
    status = json.loads(remote.ok("status", job_id, "--json").stdout)
    assert status == {"job_id": job_id, "status": "running", "is_complete": False}
    text = remote.ok("status", job_id).stdout
    assert fields(text) == {"job_id": job_id, "status": "running", "is_complete": "no"}
    before = len(remote.daemon.log_text())
    with remote.popen("wait", job_id, "--json") as waiting:
        try:
            port = urlsplit(remote.daemon.url).port
            wait_for("the client's request to be held", lambda: holds_connection(waiting.pid, port))
            assert waiting.poll() is None  # still waiting: the job is held by its gate
            gate.touch()
            out, err = waiting.communicate(timeout=DEADLINE_S)
        finally:
            waiting.kill()
    assert waiting.returncode == 0, err
    details = json.loads(out)
    assert details["status"] == "completed" and "through the gate" in details["stdout"]
    # A long poll, not a busy loop: the one held request answered when the job ended.
    # (Access lines name the route template, never the job id or the query.)
    polls = [
        line
        for line in remote.daemon.log_text()[before:].splitlines()
        if "jobferry.access: " in line and " GET /api/jobs/v1/{}/status " in line
    ]
    assert 1 <= len(polls) <= 2, polls
    assert fields(remote.ok("status", job_id).stdout)["status"] == "completed"


def test_wait__timeout_says_what_the_job_still_is(remote: Remote, gate: Path) -> None:
    job_id = submit(remote, "--", "--gate", str(gate))
    try:
        result = remote.run("wait", job_id, "--timeout", "1")
        assert result.returncode == 1
        assert result.stderr.startswith(f"jobferry: error: job {job_id} is still ")
        assert "after 1s" in result.stderr and len(result.stderr.splitlines()) == 1
    finally:
        gate.touch()
    remote.ok("wait", job_id)


def test_logs__prints_stdout_stderr_and_json(remote: Remote) -> None:
    job_id = submit(remote, "--", "--mb", "1")
    remote.ok("wait", job_id)
    assert remote.ok("logs", job_id).stdout == "wrote 1 MiB\n"
    assert remote.ok("logs", job_id, "--stderr").stdout == "to stderr\n"
    data = json.loads(remote.ok("logs", job_id, "--json").stdout)
    assert data["stdout"] == "wrote 1 MiB\n" and data["stderr"] == "to stderr\n"
    assert data["is_complete"] is True and data["job_id"] == job_id


def test_logs_follow__prints_a_running_jobs_output_as_it_comes(remote: Remote, gate: Path) -> None:
    job_id = submit(remote, "--", "--gate", str(gate))
    with remote.popen("logs", job_id, "--follow") as follower:
        try:
            assert follower.stdout is not None
            first = follower.stdout.readline()  # before the job can end: it waits on the gate
            assert first == "waiting for the gate\n"
            assert state(remote, job_id) == "running" and follower.poll() is None
            gate.touch()
            rest, err = follower.communicate(timeout=DEADLINE_S)
        finally:
            follower.kill()
    assert follower.returncode == 0, err
    assert rest == "through the gate\n"


def test_logs_follow_json__one_json_line_per_new_piece(remote: Remote, gate: Path) -> None:
    job_id = submit(remote, "--", "--gate", str(gate))
    with remote.popen("logs", job_id, "--follow", "--json") as follower:
        try:
            assert follower.stdout is not None
            first = json.loads(follower.stdout.readline())
            assert first == {"job_id": job_id, "stream": "stdout", "text": "waiting for the gate\n"}
            gate.touch()
            rest, _ = follower.communicate(timeout=DEADLINE_S)
        finally:
            follower.kill()
    pieces = [json.loads(line)["text"] for line in rest.splitlines()]
    assert "".join(pieces) == "through the gate\n"


def test_cancel__stops_a_running_job_then_says_it_is_finished(remote: Remote, gate: Path) -> None:
    job_id = submit(remote, "--", "--gate", str(gate))
    wait_for("the job to run", lambda: state(remote, job_id) == "running")
    assert remote.ok("cancel", job_id).stdout == f"job {job_id}: cancelled\n"
    wait_for("the job to be revoked", lambda: state(remote, job_id) == "REVOKED")
    again = json.loads(remote.ok("cancel", job_id, "--json").stdout)
    assert again == {"job_id": job_id, "cancelled": False}
    assert "already finished" in remote.ok("cancel", job_id).stdout


def test_jobs__lists_with_a_state_filter_in_either_faces_names(remote: Remote, gate: Path) -> None:
    running = submit(remote, "--", "--gate", str(gate))
    done = submit(remote)
    remote.ok("wait", done)
    wait_for("the job to run", lambda: state(remote, running) == "running")
    try:
        rows = json.loads(remote.ok("jobs", "--state", "running", "--json").stdout)
        assert [r["id"] for r in rows] == [running] and rows[0]["state"] == "running"
        assert rows[0]["script"] == SCRIPT
        for name in ("completed", "ok", "OK,deleted"):
            ids = [r["id"] for r in json.loads(remote.ok("jobs", "--state", name, "--json").stdout)]
            assert done in ids and running not in ids, name
        table = remote.ok("jobs", "--state", "running").stdout.splitlines()
        assert table[0].split() == [
            "ID",
            "SCRIPT",
            "STATE",
            "EXIT_CODE",
            "CREATE_TIME",
            "UPDATE_TIME",
        ]
        assert len(table) == 2 and table[1].split()[:3] == [running, SCRIPT, "running"]
        everyone = {r["id"] for r in json.loads(remote.ok("jobs", "--json").stdout)}
        assert {running, done} <= everyone
    finally:
        gate.touch()
    remote.ok("wait", running)
