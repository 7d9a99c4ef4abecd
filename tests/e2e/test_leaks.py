"""Small leaks and deviations (issue #10, item 10), against a real daemon process:
baseauth's one 401 and its failure limits, key replacement, users' emails and the
CLI's global options. Each test names the failure it guards."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.helpers import DaemonProcess, _env, eventually, running_daemon

pytestmark = pytest.mark.e2e

PASSWORD = "a good long password"
LIMIT = 3


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    base = tmp_path_factory.mktemp("leaks")
    # xheaders: the tests speak from several client addresses through X-Real-Ip.
    config = {
        "server": {"xheaders": True},
        "api": {"baseauth_failures_per_minute": LIMIT, "key_cache_s": 0.0},
        "logging": {"level": "DEBUG", "access_log": True},
    }
    with running_daemon(base / "data", config) as proc:
        yield proc


def make_user(daemon: DaemonProcess, name: str, *extra: str, password: bool = True) -> str:
    key = daemon.cli("user", "create", name, *extra).stdout.strip()
    if password:
        daemon.cli("user", "passwd", name, input=PASSWORD + "\n")
    return key


def baseauth(
    daemon: DaemonProcess, identity: str, password: str, address: str
) -> requests.Response:
    encoded = base64.b64encode(f"{identity}:{password}".encode()).decode()
    return requests.get(
        f"{daemon.url}/api/authenticate/baseauth",
        headers={"Authorization": f"Basic {encoded}", "X-Real-Ip": address},
        timeout=30,
    )


def whoami(daemon: DaemonProcess, key: str) -> requests.Response:
    return requests.get(f"{daemon.url}/api/whoami", headers={"x-api-key": key}, timeout=30)


# --- baseauth ---------------------------------------------------------------------------------


def test_baseauth__unknown_user_and_wrong_password_are_the_same_401(daemon: DaemonProcess) -> None:
    """Guards: an unknown user answered 404 and a wrong password 401, which told who has
    an account."""
    make_user(daemon, "uma")
    unknown = baseauth(daemon, "nobody-at-all", PASSWORD, "10.1.0.1")
    wrong = baseauth(daemon, "uma", "not the password", "10.1.0.2")
    assert unknown.status_code == wrong.status_code == 401
    assert unknown.json() == wrong.json()
    assert wrong.json()["err_code"] == 401001


def test_baseauth__failures_are_limited_per_user_and_per_address(daemon: DaemonProcess) -> None:
    """Guards: failed attempts were unlimited (only delayed), so a password could be
    guessed at any rate from many connections; past the limit, 429 with Retry-After,
    even for the right password, without checking it."""
    make_user(daemon, "vera")
    make_user(daemon, "walt")
    # Per user: LIMIT wrong passwords from different addresses...
    for n in range(LIMIT):
        assert baseauth(daemon, "vera", f"guess {n}", f"10.2.0.{n + 1}").status_code == 401
    # ...and the user is held back from anywhere, right password included.
    held = baseauth(daemon, "vera", PASSWORD, "10.2.1.1")
    assert held.status_code == 429, held.text
    assert 1 <= int(held.headers["Retry-After"]) <= 60
    assert held.json()["err_code"] == 429001
    # Per address: LIMIT failures (unknown users count too) from one address...
    for n in range(LIMIT):
        assert baseauth(daemon, f"ghost{n}", "whatever", "10.3.0.1").status_code == 401
    # ...hold back that address, even for another user with the right password...
    assert baseauth(daemon, "walt", PASSWORD, "10.3.0.1").status_code == 429
    # ...while that user, from another address, is served.
    served = baseauth(daemon, "walt", PASSWORD, "10.3.0.2")
    assert served.status_code == 200, served.text
    assert whoami(daemon, served.json()["api_key"]).json()["username"] == "walt"


# --- keys -------------------------------------------------------------------------------------


def test_post_api_key__replaces_the_users_key_cli_key_create_adds(daemon: DaemonProcess) -> None:
    """Guards: ``POST /api/users/{id}/api_key`` left the old key working, where Galaxy
    replaces it (a client rotating a leaked key stayed exposed)."""
    old = make_user(daemon, "xena", password=False)
    added = daemon.cli("key", "create", "xena").stdout.strip()  # the CLI adds a key
    assert whoami(daemon, old).status_code == 200
    assert whoami(daemon, added).status_code == 200
    user_id = whoami(daemon, old).json()["id"]
    response = requests.post(
        f"{daemon.url}/api/users/{user_id}/api_key",
        headers={"x-api-key": old},
        json={"user_id": user_id},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    fresh = response.json()
    assert whoami(daemon, fresh).json()["username"] == "xena"
    for gone in (old, added):
        assert whoami(daemon, gone).status_code == 401
    # By an admin, for the user: replaces again.
    admin = requests.post(
        f"{daemon.url}/api/users/{user_id}/api_key",
        headers={"x-api-key": daemon.admin_key},
        timeout=30,
    ).json()
    assert whoami(daemon, admin).json()["username"] == "xena"
    assert whoami(daemon, fresh).status_code == 401
    assert whoami(daemon, daemon.admin_key).status_code == 200  # the admin's own is untouched


# --- emails -----------------------------------------------------------------------------------


def test_users_without_email__answer_a_stable_placeholder_string(daemon: DaemonProcess) -> None:
    """Guards: ``/api/whoami`` and ``/api/users/{id}`` answered ``"email": null`` for users
    created without one; Galaxy's clients expect a string."""
    key = make_user(daemon, "yuri", password=False)
    given = make_user(daemon, "zoe", "--email", "zoe@example.org", password=False)
    me = whoami(daemon, key).json()
    assert me["email"] == "yuri@localhost"
    shown = requests.get(
        f"{daemon.url}/api/users/{me['id']}", headers={"x-api-key": key}, timeout=30
    ).json()
    assert shown["email"] == "yuri@localhost"
    assert whoami(daemon, given).json()["email"] == "zoe@example.org"
    listed = requests.get(
        f"{daemon.url}/api/users", headers={"x-api-key": daemon.admin_key}, timeout=30
    ).json()
    assert all(isinstance(u["email"], str) and "@" in u["email"] for u in listed), listed


# --- CLI --------------------------------------------------------------------------------------


def test_cli__global_options_before_and_after_the_subcommand(tmp_path: Path) -> None:
    """Guards: ``jobferry --data-dir D user create X`` failed ("unrecognized arguments"):
    the global options were only accepted after the subcommand."""
    daemon = DaemonProcess(tmp_path / "data", {})  # its config names the store (PostgreSQL)
    assert daemon.config_path is not None
    where = ["--data-dir", str(daemon.data_dir), "--config", str(daemon.config_path)]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "jobferry.cli", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=_env(),
        )

    assert run(*where, "db", "upgrade").returncode == 0
    before = run(*where, "--json", "user", "create", "early")
    assert before.returncode == 0, before.stderr
    assert '"username": "early"' in before.stdout
    after = run("user", "create", "late", *where, "--json")
    assert after.returncode == 0, after.stderr
    between = run("user", *where, "list", "--json")
    assert between.returncode == 0, between.stderr
    assert {"early", "late"} <= {u["username"] for u in json.loads(between.stdout)}
    mixed = run(
        "--data-dir", str(daemon.data_dir), "user", "list", "--config", str(daemon.config_path)
    )
    assert mixed.returncode == 0 and "early" in mixed.stdout, mixed.stderr


# --- logs -------------------------------------------------------------------------------------


def raw_request(daemon: DaemonProcess, data: bytes) -> bytes:
    """*data* sent as is on a new connection; whatever comes back until it closes."""
    host, port = daemon.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(data)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer


def test_logs__no_line_carries_a_key_from_malformed_headers_urls_or_credentials(
    daemon: DaemonProcess,
) -> None:
    """Guards: a malformed header put the API key into the log (Tornado's "Malformed
    HTTP message ... 'Bearer jf_...'"), so reading the log gave a user's access."""
    key = make_user(daemon, "logan")
    job_key = "0123456789abcdef" * 4
    # Header values Tornado refuses, and quotes in its "Malformed HTTP message" line.
    for header in (
        f"Authorization: Bearer {key}\x01",
        f"x-api-key: {key}\x7f",
        f"Cookie: job_key={job_key}\x02",
        f"Authorization Bearer {key}",  # no colon
    ):
        raw_request(daemon, f"GET /api/whoami HTTP/1.1\r\nHost: x\r\n{header}\r\n\r\n".encode())
    for path in (f"/api/whoami?key={key}", f"/api/jobs/{'f' * 16}/files?job_key={job_key}&path=x"):
        requests.get(daemon.url + path, timeout=30)
    requests.get(
        daemon.url + "/api/whoami", headers={"Authorization": f"Bearer {key}x"}, timeout=30
    )
    baseauth(daemon, "logan", PASSWORD, "10.9.0.1")
    assert eventually(lambda: daemon.log_path.read_text().count("Malformed HTTP") >= 4, 60)
    log = daemon.log_path.read_text()
    assert "logan" in log or "whoami" in log  # the requests were logged...
    for secret in (key, key[3:20], job_key, PASSWORD):
        assert secret not in log  # ...but not one secret
