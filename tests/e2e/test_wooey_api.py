"""The Wooey-compatible face, through a real daemon process on 127.0.0.1."""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.helpers import JOB_SCRIPTS, Client, DaemonProcess, eventually, running_daemon

pytestmark = pytest.mark.e2e

NOT_AUTHENTICATED = {"__all__": ["Must be authenticated to use this method."]}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    base = tmp_path_factory.mktemp("wooey")
    with running_daemon(base / "data", {"server": {"max_upload_mb": 2}}) as proc:
        yield proc


@pytest.fixture(scope="module")
def admin(daemon: DaemonProcess) -> Client:
    client = daemon.client()
    client.add_script("wordcount", JOB_SCRIPTS / "wordcount.py")
    client.add_script("sleeper", JOB_SCRIPTS / "sleeper.py")
    return client


@pytest.fixture(scope="module")
def user(daemon: DaemonProcess, admin: Client) -> Client:
    key = daemon.cli("user", "create", "alice", "--email", "alice@example.org").stdout.strip()
    return daemon.client(key)


def submit_wordcount(client: Client, text: bytes = b"one two three", extra: str = "") -> str:
    return client.submit(
        "wordcount", f"--infile doc {extra}".strip(), files={"doc": ("doc.txt", text)}
    )


# --- authentication -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [None, "Bearer wrong-key", "bearer {key}", "Token {key}", "Bearer  {key}", "Bearer"],
)
def test_bad_or_missing_key__is_403_in_wooeys_shape(
    daemon: DaemonProcess, admin: Client, header: str | None
) -> None:
    headers = {} if header is None else {"Authorization": header.format(key=daemon.admin_key)}
    response = requests.get(f"{daemon.url}/api/scripts/v1/list/", headers=headers, timeout=60)
    assert response.status_code == 403
    body = response.json()
    assert body["valid"] is False and body["errors"] == NOT_AUTHENTICATED


def test_revoked_key__is_refused_and_last_use_is_recorded(daemon: DaemonProcess) -> None:
    key = daemon.cli("user", "create", "mallory").stdout.strip()
    assert daemon.client(key).get("/api/jobs/v1/nope/status/").status_code == 404
    listed = daemon.cli("key", "list", "--user", "mallory", "--json").stdout
    import json

    keys = json.loads(listed)
    assert keys[0]["last_used_at"] is not None
    daemon.cli("key", "revoke", keys[0]["id"])
    revoked = daemon.client(key)
    # A revocation by another process applies within api.key_cache_s (1 s).
    assert eventually(lambda: revoked.get("/api/jobs/v1/nope/status/").status_code == 403)


# --- scripts --------------------------------------------------------------------------------


def test_add_script__non_admin_is_refused(user: Client) -> None:
    with open(JOB_SCRIPTS / "noop.py", "rb") as handle:
        response = user.post("/api/scripts/v1/add-or-update/", files={"noop": handle})
    assert response.status_code == 403
    assert response.json()["errors"] == {
        "__all__": ["You do not have permission to manage scripts."]
    }


def test_add_script__without_a_file_is_400(admin: Client) -> None:
    response = admin.post("/api/scripts/v1/add-or-update/", data={"group": "x"})
    assert response.status_code == 400
    assert response.json()["errors"] == {"script_file": ["A script file is required."]}


def test_add_script__versions_dedup_and_default(admin: Client, tmp_path: Path) -> None:
    script = tmp_path / "versioned.py"
    script.write_text("import argparse\nargparse.ArgumentParser().parse_args()\n")
    first = admin.add_script("versioned", script)
    assert (first["iteration"], first["is_default"], first["created"]) == (1, True, True)
    again = admin.add_script("versioned", script)
    assert (again["iteration"], again["created"]) == (1, False)
    script.write_text(script.read_text() + "# v2\n")
    second = admin.add_script("versioned", script)
    assert (second["iteration"], second["is_default"]) == (2, True)
    script.write_text(script.read_text() + "# v3\n")
    third = admin.add_script("versioned", script, default="false")
    assert (third["iteration"], third["is_default"]) == (3, False)
    detail = admin.get(f"/api/scripts/v1/{first['slug']}/").json()
    assert detail["valid"] and detail["script"]["default_version"]["script_iteration"] == 2
    assert detail["script"]["versions_count"] == 3


def test_add_script__several_files_answer_in_order_even_when_one_fails(
    admin: Client, tmp_path: Path
) -> None:
    good = tmp_path / "good.py"
    good.write_text(
        "import argparse\np = argparse.ArgumentParser()\np.add_argument('--x')\np.parse_args()\n"
    )
    bad = tmp_path / "bad.py"
    bad.write_text("print('no parser here')\n")
    with open(good, "rb") as g, open(bad, "rb") as b:
        response = admin.post(
            "/api/scripts/v1/add-or-update/", files=[("good-one", g), ("bad-one", b)]
        )
    assert response.status_code == 200
    results = response.json()
    assert [r["script"] for r in results] == ["good-one", "bad-one"]
    assert results[0]["success"] is True
    assert results[1]["success"] is False and results[1]["errors"].startswith("ParserError: ")
    listing = admin.get("/api/scripts/v1/list/").json()
    assert "bad-one" not in [s["script_name"] for s in listing["scripts"]]


def test_script_detail__unknown_slug_is_404_with_a_list(admin: Client) -> None:
    response = admin.get("/api/scripts/v1/no-such-script/")
    assert response.status_code == 404
    assert response.json()["errors"] == {"script": ["Unable to find script."]}


# --- submit: errors -------------------------------------------------------------------------


def test_submit__missing_job_name_is_200_invalid(admin: Client) -> None:
    response = admin.post("/api/scripts/v1/wordcount/submit/", data={"command": ""})
    assert response.status_code == 200
    assert response.json()["errors"] == {"job_name": ["This field is required."]}


def test_submit__unknown_script_is_200_with_a_string(admin: Client) -> None:
    response = admin.post("/api/scripts/v1/nope/submit/", data={"job_name": "x"})
    assert response.status_code == 200
    assert response.json()["errors"] == {"script": "Unable to find script."}


@pytest.mark.parametrize(
    ("command", "key", "fragment"),
    [
        ("--infile 'doc", "command", "quotation"),
        ("--infile doc --bogus 1", "command", "unrecognized arguments: --bogus"),
        ("", "command", "required"),
        ("--infile doc --repeat x", "repeat", "Enter a whole number."),
        ("--infile doc --repeat 7", "repeat", "Select a valid choice."),
        ("--infile other", "infile", "Referenced file could not be found."),
        ("--infile doc --out ../escape.txt", "out", "relative"),
        ("--infile doc --out /etc/passwd", "out", "relative"),
    ],
)
def test_submit__invalid_command_is_400_and_queues_nothing(
    daemon: DaemonProcess, admin: Client, command: str, key: str, fragment: str
) -> None:
    before = len(list((daemon.data_dir / "jobs").rglob("work")))
    response = admin.post(
        "/api/scripts/v1/wordcount/submit/",
        data={"job_name": "bad", "command": command},
        files={"doc": ("doc.txt", b"a b")},
    )
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["valid"] is False
    assert fragment in str(body["errors"][key])
    assert len(list((daemon.data_dir / "jobs").rglob("work"))) == before
    assert not any((daemon.data_dir / "tmp").iterdir())


def test_submit__ambiguous_version_is_a_json_error(admin: Client, tmp_path: Path) -> None:
    script = tmp_path / "amb.py"
    script.write_text("import argparse\nargparse.ArgumentParser().parse_args()\n")
    admin.add_script("ambiguous", script)
    script.write_text(script.read_text() + "# 2\n")
    admin.add_script("ambiguous", script)
    response = admin.post(
        "/api/scripts/v1/ambiguous/submit/", data={"job_name": "x", "version": "1"}
    )
    assert response.status_code == 400
    assert "iteration" in response.json()["errors"]["version"][0]
    ok = admin.post(
        "/api/scripts/v1/ambiguous/submit/",
        data={"job_name": "x", "version": "1", "iteration": "1"},
    )
    assert ok.json()["valid"] is True


def test_submit__oversize_upload_is_413_and_leaves_nothing(
    daemon: DaemonProcess, admin: Client
) -> None:
    response = admin.post(
        "/api/scripts/v1/wordcount/submit/",
        data={"job_name": "big", "command": "--infile doc"},
        files={"doc": ("doc.txt", b"x" * (3 * 1024 * 1024))},
    )
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"
    assert not any((daemon.data_dir / "tmp").iterdir())


def test_submit__upload_cut_off_half_way_leaves_no_job_and_no_file(
    daemon: DaemonProcess, admin: Client
) -> None:
    jobs_before = admin.get("/api/jobs/v1/x/status/")  # warm the connection path
    assert jobs_before.status_code == 404
    before = sorted(p.name for p in (daemon.data_dir / "jobs").glob("*/*"))
    boundary = "XyZ"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="job_name"\r\n\r\ncut\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="command"\r\n\r\n--infile doc\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="doc"; filename="d.txt"\r\n'
        "Content-Type: text/plain\r\n\r\n"
    ).encode()
    payload = head + b"y" * 500_000
    host, port = daemon.url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(
            (
                "POST /api/scripts/v1/wordcount/submit/ HTTP/1.1\r\n"
                f"Host: {host}\r\nAuthorization: Bearer {daemon.admin_key}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                f"Content-Length: {len(payload) * 2}\r\n\r\n"
            ).encode()
            + payload
        )
        streaming = eventually(lambda: any((daemon.data_dir / "tmp").iterdir()))
        assert streaming, "the upload should be streaming to a temporary file"
    deadline = time.monotonic() + 60
    while any((daemon.data_dir / "tmp").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any((daemon.data_dir / "tmp").iterdir())
    assert sorted(p.name for p in (daemon.data_dir / "jobs").glob("*/*")) == before


def test_submit__truncated_multipart_body_is_400(daemon: DaemonProcess, admin: Client) -> None:
    body = b'--B\r\nContent-Disposition: form-data; name="job_name"\r\n\r\nx\r\n--B\r\nContent-Di'
    response = admin.post(
        "/api/scripts/v1/wordcount/submit/",
        data=body,
        headers={"Content-Type": "multipart/form-data; boundary=B"},
    )
    assert response.status_code == 400
    assert "multipart" in response.json()["message"]


# --- submit, run, status, details, assets ---------------------------------------------------


def test_submit__runs_the_job_and_serves_its_assets(admin: Client) -> None:
    text = b"the quick brown fox jumps"
    job_id = submit_wordcount(admin, text, "-o result.txt --upper --repeat 2")
    assert len(job_id) >= 16 and not job_id.isdigit()
    details = admin.wait(job_id)
    assert details["status"] == "completed" and details["is_complete"] is True
    assert list(details)[:8] == [
        "status",
        "is_complete",
        "uuid",
        "job_name",
        "job_description",
        "stdout",
        "stderr",
        "assets",
    ]
    assert details["stdout"] == "counted 5 words\n"
    assets = {a["name"]: a for a in details["assets"]}
    assert set(assets) == {"result.txt", "upper.txt"}
    url = assets["result.txt"]["url"]
    path = url.split("//", 1)[1].split("/", 1)[1]
    download = admin.get("/" + path)
    assert download.status_code == 200 and download.content == b"10\n"
    assert hashlib.sha256(download.content).hexdigest() == assets["result.txt"]["sha256"]
    head = admin.head("/" + path)
    assert head.status_code == 200 and head.headers["Content-Length"] == "3"
    upper = admin.get(
        "/" + assets["upper.txt"]["url"].split("//", 1)[1].split("/", 1)[1],
        headers={"Range": "bytes=4-8"},
    )
    assert upper.status_code == 206 and upper.content == b"QUICK"
    unsatisfiable = admin.get("/" + path, headers={"Range": "bytes=100-200"})
    assert unsatisfiable.status_code == 416


def test_submit__short_and_long_option_names_and_json_body(admin: Client) -> None:
    job_id = admin.submit("sleeper", "0.01 --exit-code 3")
    details = admin.wait(job_id)
    assert details["status"] == "FAILURE" and details["exit_code"] == 3
    response = admin.post(
        "/api/scripts/v1/sleeper/submit/",
        json={"job_name": "json", "command": "0", "job_description": "from JSON"},
    )
    assert response.json()["valid"] is True
    details = admin.wait(response.json()["job_id"])
    assert details["status"] == "completed" and details["job_description"] == "from JSON"


def test_status__unknown_or_malformed_ids_are_json_404(admin: Client) -> None:
    for job_id in ["0000000000000000", "123", "..%2F..%2Fetc", "x" * 300]:
        for kind in ("status", "details"):
            response = admin.get(f"/api/jobs/v1/{job_id}/{kind}/")
            assert response.status_code == 404, (job_id, response.text)
            assert response.json()["valid"] is False


def test_status__users_see_only_their_own_jobs_admins_see_all(admin: Client, user: Client) -> None:
    mine = submit_wordcount(user)
    theirs = submit_wordcount(admin)
    assert user.wait(mine)["status"] == "completed"
    # Another user's job answers as a missing one: a 403 told that the id exists.
    hidden = user.get(f"/api/jobs/v1/{theirs}/status/")
    assert hidden.status_code == 404
    missing = user.get("/api/jobs/v1/0123456789abcdef/status/")
    assert missing.status_code == 404
    assert hidden.text.replace(theirs, "ID") == missing.text.replace("0123456789abcdef", "ID")
    details = admin.wait(mine)
    asset = details["assets"][0]["url"].split("//", 1)[1].split("/", 1)[1]
    assert user.get("/" + asset).status_code == 200
    other = admin.wait(theirs)["assets"][0]["url"].split("//", 1)[1].split("/", 1)[1]
    assert user.get("/" + other).status_code == 404


def test_unknown_route_and_wrong_method_are_json(admin: Client) -> None:
    response = admin.get("/api/nothing/here")
    assert response.status_code == 404 and response.json()["error"] == "not_found"
    response = admin.session.delete(admin.url + "/api/jobs/v1/abc/status/", timeout=60)
    assert response.status_code == 405 and "error" in response.json()


def test_fifty_concurrent_submissions__none_lost(admin: Client) -> None:
    def one(i: int) -> str:
        return admin.submit("sleeper", "0", job_name=f"c{i}")

    with ThreadPoolExecutor(max_workers=25) as pool:
        ids = list(pool.map(one, range(50)))
    assert len(set(ids)) == 50
    outcomes: list[Any] = [admin.wait(job_id, timeout_s=120)["status"] for job_id in ids]
    assert outcomes == ["completed"] * 50


def test_status_wait__answers_when_the_job_completes(admin: Client) -> None:
    job_id = admin.submit("sleeper", "0.3")
    started = time.monotonic()
    status = admin.get(f"/api/jobs/v1/{job_id}/status/?wait=20").json()
    assert status == {"status": "completed", "is_complete": True}
    assert time.monotonic() - started < 15
    for bad in ("abc", "-1", "1000"):
        response = admin.get(f"/api/jobs/v1/{job_id}/status/?wait={bad}")
        assert response.status_code == 400 and "wait" in response.json()["errors"]


def test_multipart_field_names_outside_latin1__are_accepted(admin: Client) -> None:
    response = admin.post(
        "/api/scripts/v1/wordcount/submit/",
        data={"job_name": "unicode", "command": "--infile ȧ€"},
        files={"ȧ€": ("dȯc.txt", b"a b c")},
    )
    assert response.status_code == 200 and response.json()["valid"], response.text
    assert admin.wait(response.json()["job_id"])["stdout"] == "counted 3 words\n"


def test_refused_upload__says_connection_close_and_the_session_keeps_working(
    daemon: DaemonProcess, admin: Client
) -> None:
    session = requests.Session()
    session.headers["Authorization"] = "Bearer wrong"
    for _ in range(5):
        response = session.post(
            f"{daemon.url}/api/scripts/v1/wordcount/submit/",
            files={"doc": ("d.txt", b"x" * 200_000)},
            timeout=60,
        )
        assert response.status_code == 403
        assert response.headers.get("Connection") == "close"


def test_asset_range_past_the_end__is_a_json_416(admin: Client) -> None:
    details = admin.wait(submit_wordcount(admin))
    path = "/" + details["assets"][0]["url"].split("//", 1)[1].split("/", 1)[1]
    response = admin.get(path, headers={"Range": "bytes=1000000-"})
    assert response.status_code == 416
    assert response.json()["error"] == "range_not_satisfiable"
    assert response.headers["Content-Range"].startswith("bytes */")
