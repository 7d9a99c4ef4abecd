"""Deeply nested and huge JSON on every JSON route of a real daemon.

Guards against: a body of 60,000 ``[`` (or ``{"a":`` nested as deep) answering
500 — Python's decoder raised RecursionError on ``/api/tools``,
``/api/jobs/search``, ``/api/users``, ``/api/users/{id}/api_key`` and every other
route that decoded JSON itself — and against a too-large JSON body being read
instead of refused with 413. Every route now goes through
``jobferry.staging.json_body.parse_json``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from jobferry.errors import PayloadTooLargeError, RequestError
from jobferry.staging.json_body import MAX_JSON_DEPTH, nesting_problem, parse_json
from tests.helpers import JOB_SCRIPTS, DaemonProcess

pytestmark = [pytest.mark.engine_independent, pytest.mark.timeout(300)]

#: server.max_form_kb of the daemon under test: "huge" is beyond it.
FORM_KB = 256
#: Deep, yet below every route's size cap (the state callback takes 64 KiB).
DEEP_ARRAY = "[" * 60_000
DEEP_OBJECT = '{"a":' * 10_000 + "1" + "}" * 10_000

#: (method, path template, content type) of every route that reads a JSON body.
ROUTES = [
    ("POST", "/api/tools", "application/json"),
    ("POST", "/api/jobs/search", "application/json"),
    ("POST", "/api/users", "application/json"),
    ("POST", "/api/users/{user}/api_key", "application/json"),
    ("DELETE", "/api/jobs/{job}", "application/json"),
    ("POST", "/api/jobs/{job}/state", "application/json"),
    ("POST", "/api/scripts/v1/wordcount/submit/", "application/json"),
    ("POST", "/api/scripts/v1/add-or-update/", "application/json"),
]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    base = tmp_path_factory.mktemp("json-bodies")
    proc = DaemonProcess(base / "data", {"server": {"max_form_kb": FORM_KB}}).start()
    try:
        proc.client().add_script("wordcount", JOB_SCRIPTS / "wordcount.py")
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def ids(daemon: DaemonProcess) -> dict[str, str]:
    """A real user id and job id for the routes that name one."""
    client = daemon.client()
    job = client.submit("wordcount", "--infile doc", files={"doc": ("doc.txt", b"one two")})
    user = requests.get(
        daemon.url + "/api/users/current", params={"key": daemon.admin_key}, timeout=60
    ).json()["id"]
    return {"job": job, "user": user}


def send(daemon: DaemonProcess, ids: dict[str, str], route: tuple[str, str, str], body: bytes):
    method, template, kind = route
    return requests.request(
        method,
        daemon.url + template.format(**ids),
        data=body,
        headers={"Content-Type": kind, "Authorization": f"Bearer {daemon.admin_key}"},
        params={"job_key": "0" * 32} if template.endswith("/state") else None,
        timeout=120,
    )


def assert_json_error(response: requests.Response, status: int) -> None:
    assert response.status_code == status, (response.status_code, response.text[:300])
    body = response.json()
    assert body.get("err_msg") or body.get("errors"), body


@pytest.mark.parametrize("route", ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
@pytest.mark.parametrize("deep", [DEEP_ARRAY, DEEP_OBJECT], ids=["array", "object"])
def test_deep_json_is_400_not_500(
    daemon: DaemonProcess, ids: dict[str, str], route: tuple[str, str, str], deep: str
) -> None:
    """Guards: RecursionError (500) from a deeply nested JSON body."""
    assert_json_error(send(daemon, ids, route, deep.encode()), 400)


@pytest.mark.parametrize("route", ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_huge_json_is_413(
    daemon: DaemonProcess, ids: dict[str, str], route: tuple[str, str, str]
) -> None:
    """Guards: a JSON body past the route's size cap being read and decoded."""
    huge = json.dumps({"padding": "x" * (FORM_KB * 1024 + 10)}).encode()
    assert_json_error(send(daemon, ids, route, huge), 413)


def test_deep_json_inside_galaxy_inputs_is_400(daemon: DaemonProcess, ids: dict[str, str]) -> None:
    """Guards: Galaxy's ``inputs`` may be a JSON *string*, decoded a second time."""
    body = json.dumps({"tool_id": "wordcount", "inputs": DEEP_ARRAY}).encode()
    assert_json_error(send(daemon, ids, ("POST", "/api/tools", "application/json"), body), 400)
    # A search whose inputs cannot match anything finds nothing (its documented answer).
    found = send(daemon, ids, ("POST", "/api/jobs/search", "application/json"), body)
    assert found.status_code == 200 and found.json() == [], found.text[:300]


def test_daemon_still_answers(daemon: DaemonProcess, ids: dict[str, str]) -> None:
    """After all of the above the daemon serves as before (nothing crashed or hung)."""
    response = requests.get(daemon.url + "/api/version", timeout=60)
    assert response.status_code == 200
    assert "RecursionError" not in Path(daemon.log_path).read_text()


def test_parser_limits() -> None:
    """The function itself: depth measured outside strings, limits as documented."""
    assert nesting_problem('{"a": "[[[[[[[[" }', 2) is None
    assert nesting_problem("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), 64)
    assert parse_json("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH, max_bytes=None)
    assert parse_json(b"  ", max_bytes=10, empty={}) == {}
    with pytest.raises(RequestError):
        parse_json("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), max_bytes=None)
    with pytest.raises(PayloadTooLargeError):
        parse_json(b"[1, 2, 3]", max_bytes=8)
    with pytest.raises(RequestError):
        parse_json("[1, 2", max_bytes=None)
