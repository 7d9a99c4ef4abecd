"""The Galaxy-compatible face's users side, through a real daemon process on 127.0.0.1,
requested the way bioblend requests it: version, whoami, configuration, baseauth, API keys,
routing, and users."""

from __future__ import annotations

import base64
import time

import pytest
import requests

from tests.e2e.galaxy.support import ALICE_PASSWORD, ID, TIMESTAMP, Galaxy, assert_error, passwd
from tests.helpers import DaemonProcess, eventually

pytestmark = pytest.mark.e2e


# --- version, whoami, configuration -------------------------------------------------------------


def test_version__is_public_with_string_versions(daemon: DaemonProcess) -> None:
    response = requests.get(f"{daemon.url}/api/version", timeout=60)
    assert response.status_code == 200
    assert response.json() == {"version_major": "24.1", "version_minor": "0"}


def test_whoami__null_without_key_user_with_key_401_for_bad_key(
    daemon: DaemonProcess, alice: Galaxy
) -> None:
    anonymous = requests.get(f"{daemon.url}/api/whoami", timeout=60)
    assert anonymous.status_code == 200 and anonymous.json() is None
    me = alice.ok("/api/whoami")
    assert me["model_class"] == "User" and ID.match(me["id"])
    assert (me["username"], me["email"], me["deleted"], me["active"]) == (
        "alice",
        "alice@example.org",
        False,
        True,
    )
    assert TIMESTAMP.match(me["last_password_change"])
    bad = Galaxy(daemon.url, "nope").get("/api/whoami")
    assert_error(bad, 401, 401001)


def test_configuration__anonymous_user_and_admin_views(
    daemon: DaemonProcess, admin: Galaxy, alice: Galaxy
) -> None:
    anonymous = requests.get(f"{daemon.url}/api/configuration", timeout=60).json()
    assert "brand" in anonymous and anonymous["is_admin_user"] is False
    assert anonymous["version_major"] == "24.1" and anonymous["version_minor"] == "0"
    assert isinstance(anonymous["server_startttime"], int)
    user = alice.ok("/api/configuration")
    assert user["is_admin_user"] is False and "allow_user_deletion" not in user
    full = admin.ok("/api/configuration/")
    assert full["is_admin_user"] is True and "allow_user_deletion" in full
    assert set(full) > set(user)
    assert admin.ok("/api/configuration?keys=brand,is_admin_user&view=all") == {
        "brand": "jobferry",
        "is_admin_user": True,
    }
    assert_error(admin.get("/api/configuration?view=bogus"), 400, 400008)


# --- authentication -----------------------------------------------------------------------------


def test_baseauth__bare_and_basic_forms_by_email_or_username_give_working_keys(
    daemon: DaemonProcess, alice: Galaxy
) -> None:
    credentials = [f"alice@example.org:{ALICE_PASSWORD}", f"alice:{ALICE_PASSWORD}"]
    for index, text in enumerate(credentials):
        encoded = base64.b64encode(text.encode()).decode()
        header = encoded if index == 0 else f"Basic {encoded}"
        response = requests.get(
            f"{daemon.url}/api/authenticate/baseauth",
            headers={"Authorization": header},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        key = response.json()["api_key"]
        assert Galaxy(daemon.url, key).ok("/api/whoami")["username"] == "alice"


@pytest.mark.parametrize(
    ("header", "status", "err_code"),
    [
        (None, 400, 400008),
        ("Basic", 400, 400008),
        ("Basic !!!notbase64", 400, 400008),
        ("Bearer " + base64.b64encode(b"alice:x").decode(), 400, 400008),
        ("a b c", 400, 400008),
        (base64.b64encode(b"no-colon-here").decode(), 400, 400008),
        # An unknown user answers as a wrong password (Galaxy's 404 told who has an account).
        (base64.b64encode(b"nobody@example.org:secret").decode(), 401, 401001),
        (base64.b64encode(b"alice@example.org:wrong password").decode(), 401, 401001),
    ],
)
def test_baseauth__bad_credentials_are_refused_with_galaxys_codes(
    daemon: DaemonProcess, alice: Galaxy, header: str | None, status: int, err_code: int
) -> None:
    headers = {} if header is None else {"Authorization": header}
    started = time.monotonic()
    response = requests.get(f"{daemon.url}/api/authenticate/baseauth/", headers=headers, timeout=60)
    assert_error(response, status, err_code)
    if status == 401:
        assert time.monotonic() - started >= 0.25  # failures are held back
        assert response.json()["err_msg"] == "Invalid email, username or password."


def test_baseauth__user_without_password_is_401(daemon: DaemonProcess, bob: Galaxy) -> None:
    encoded = base64.b64encode(b"bob:anything-at-all").decode()
    response = requests.get(
        f"{daemon.url}/api/authenticate/baseauth", headers={"Authorization": encoded}, timeout=60
    )
    assert_error(response, 401, 401001)


def test_passwd_cli__short_password_or_unknown_user_fails(daemon: DaemonProcess) -> None:
    short = passwd(daemon, "bob", "abc")
    assert short.returncode == 1 and "at least 6" in short.stderr
    unknown = passwd(daemon, "nobody", "long enough")
    assert unknown.returncode == 1 and "nobody" in unknown.stderr


def test_api_key__query_header_and_bearer_forms_missing_is_403_bad_is_401(
    daemon: DaemonProcess, alice_key: str
) -> None:
    url = f"{daemon.url}/api/jobs"
    assert requests.get(url, params={"key": alice_key}, timeout=60).status_code == 200
    assert requests.get(url, headers={"X-API-KEY": alice_key}, timeout=60).status_code == 200
    bearer = {"Authorization": f"Bearer {alice_key}"}
    assert requests.get(url, headers=bearer, timeout=60).status_code == 200
    assert_error(requests.get(url, timeout=60), 403, 403001)
    assert_error(requests.get(url, headers={"x-api-key": "wrong"}, timeout=60), 401, 401001)
    assert_error(requests.get(url, params={"key": "wrong"}, timeout=60), 401, 401001)


# --- routing ------------------------------------------------------------------------------------


def test_routes__answer_with_and_without_trailing_slash_never_redirecting(
    admin: Galaxy, alice_job: str
) -> None:
    paths = [
        "/api/version",
        "/api/whoami",
        "/api/configuration",
        "/api/jobs",
        f"/api/jobs/{alice_job}",
        f"/api/jobs/{alice_job}/inputs",
        f"/api/jobs/{alice_job}/outputs",
        f"/api/jobs/{alice_job}/build_for_rerun",
        "/api/tools",
        "/api/tools/wordcount",
        "/api/users",
        "/api/users/current",
    ]
    for path in paths:
        for variant in (path, path + "/"):
            response = admin.get(variant, allow_redirects=False)
            assert response.status_code == 200, (variant, response.status_code)
    search = admin.post("/api/jobs/search/", {"tool_id": "wordcount", "inputs": {}})
    assert search.status_code == 200


def test_wrong_method_is_json_405_and_unimplemented_routes_501(
    admin: Galaxy, alice_job: str
) -> None:
    response = admin.session.put(admin.url + "/api/version", timeout=60)
    assert response.status_code == 405 and response.json()["err_code"] == 405001
    assert_error(admin.session.put(admin.url + f"/api/jobs/{alice_job}/resume"), 501, 501001)


# --- users --------------------------------------------------------------------------------------


def test_users__admin_lists_all_user_sees_self_show_and_current(
    admin: Galaxy, alice: Galaxy, bob: Galaxy
) -> None:
    everyone = {u["username"]: u for u in admin.ok("/api/users")}
    assert {"admin", "alice", "bob"} <= set(everyone)
    assert [u["username"] for u in alice.ok("/api/users")] == ["alice"]
    alice_id = everyone["alice"]["id"]
    assert [u["username"] for u in admin.ok("/api/users?f_email=alice@")] == ["alice"]
    assert [u["username"] for u in admin.ok("/api/users?f_any=bo")] == ["bob"]
    shown = alice.ok(f"/api/users/{alice_id}")
    assert shown["username"] == "alice" and shown["is_admin"] is False
    assert shown["total_disk_usage"] > 0 and shown["nice_total_disk_usage"]
    assert alice.ok("/api/users/current") == shown
    assert admin.ok(f"/api/users/{alice_id}")["email"] == "alice@example.org"
    assert_error(bob.get(f"/api/users/{alice_id}"), 403, 403002)
    assert_error(admin.get("/api/users/0123456789abcdef"), 404, 404001)
    assert_error(admin.get("/api/users/not-an-id"), 400, 400009)
    assert admin.ok("/api/users/deleted") == []
    assert_error(alice.get("/api/users/deleted"), 403, 403006)


def test_users__admin_creates_a_local_user_who_can_baseauth(
    daemon: DaemonProcess, admin: Galaxy, alice: Galaxy
) -> None:
    payload = {"username": "carol", "email": "carol@example.org", "password": "s3cret-pw"}
    assert_error(alice.post("/api/users", payload), 403, 403006)
    response = admin.post("/api/users", payload)
    assert response.status_code == 200, response.text
    carol = response.json()
    assert carol["username"] == "carol" and ID.match(carol["id"])
    assert_error(admin.post("/api/users", payload), 409, 409001)
    short = {"username": "dave", "email": "dave@example.org", "password": "abc"}
    assert_error(admin.post("/api/users", short), 400, 400008)
    assert_error(admin.post("/api/users", {"username": "erin"}), 400, 400008)
    encoded = base64.b64encode(b"carol@example.org:s3cret-pw").decode()
    key = requests.get(
        f"{daemon.url}/api/authenticate/baseauth", headers={"Authorization": encoded}, timeout=60
    ).json()["api_key"]
    assert Galaxy(daemon.url, key).ok("/api/whoami")["id"] == carol["id"]


def test_users__api_keys_new_for_self_or_by_admin_and_own_key_handed_back(
    daemon: DaemonProcess, admin: Galaxy, bob: Galaxy
) -> None:
    # A user of its own: POST replaces the user's key, as Galaxy does.
    frank_key = daemon.cli("user", "create", "frank").stdout.strip()
    frank = Galaxy(daemon.url, frank_key)
    frank_id = frank.ok("/api/whoami")["id"]
    assert frank.ok(f"/api/users/{frank_id}/api_key") == frank_key
    assert frank.ok(f"/api/users/{frank_id}/api_key/detailed")["key"] == frank_key
    assert_error(bob.post(f"/api/users/{frank_id}/api_key"), 403, 403002)
    response = frank.post(f"/api/users/{frank_id}/api_key", {"user_id": frank_id})
    assert response.status_code == 200
    fresh = response.json()
    assert isinstance(fresh, str) and fresh != frank_key
    frank = Galaxy(daemon.url, fresh)
    assert frank.ok("/api/whoami")["username"] == "frank"
    assert eventually(lambda: Galaxy(daemon.url, frank_key).get("/api/whoami").status_code == 401)
    assert frank.ok(f"/api/users/{frank_id}/api_key") == fresh
    by_admin = admin.post(f"/api/users/{frank_id}/api_key").json()
    assert Galaxy(daemon.url, by_admin).ok("/api/whoami")["username"] == "frank"
