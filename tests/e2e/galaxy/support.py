"""What the Galaxy-face modules share: a client that requests the way bioblend does, the
shapes and error checks they compare against, and small CLI helpers."""

from __future__ import annotations

import json
import re
import subprocess
import time
from typing import Any

import requests

from tests.helpers import DEADLINE_S, DaemonProcess

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}$")
ID = re.compile(r"^[0-9a-f]{16}$")
SUMMARY_KEYS = {
    "model_class",
    "id",
    "state",
    "exit_code",
    "create_time",
    "update_time",
    "galaxy_version",
    "tool_id",
    "tool_version",
    "history_id",
}
ADMIN_KEYS = {"external_id", "command_line", "traceback"}
ALICE_PASSWORD = "correct horse: battery"


class Galaxy:
    """requests the way bioblend sends them: x-api-key header, JSON content type."""

    def __init__(self, url: str, key: str | None) -> None:
        self.url = url
        self.session = requests.Session()
        self.session.headers["Content-Type"] = "application/json"
        if key:
            self.session.headers["x-api-key"] = key

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.session.get(self.url + path, timeout=30, **kw)

    def post(self, path: str, payload: Any = None, **kw: Any) -> requests.Response:
        data = None if payload is None else json.dumps(payload)
        return self.session.post(
            self.url + path, data=data, timeout=60, allow_redirects=False, **kw
        )

    def delete(self, path: str, **kw: Any) -> requests.Response:
        return self.session.delete(self.url + path, timeout=30, allow_redirects=False, **kw)

    def ok(self, path: str, **kw: Any) -> Any:
        response = self.get(path, **kw)
        assert response.status_code == 200, (path, response.text)
        return response.json()

    def wait(self, job_id: str, timeout_s: float = DEADLINE_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job = self.ok(f"/api/jobs/{job_id}")
            if job["state"] in ("ok", "error", "deleted"):
                return dict(job)
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} did not finish in {timeout_s}s")

    def run(self, tool_id: str, inputs: dict[str, Any], **extra: Any) -> dict[str, Any]:
        response = self.post("/api/tools", {"tool_id": tool_id, "inputs": inputs, **extra})
        assert response.status_code == 200, response.text
        return dict(response.json())


def assert_error(response: requests.Response, status: int, err_code: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["err_code"] == err_code and isinstance(body["err_msg"], str), body
    return dict(body)


def passwd(daemon: DaemonProcess, name: str, password: str) -> subprocess.CompletedProcess[str]:
    return daemon.cli("user", "passwd", name, input=password + "\n", check=False)


def dataset_of(client: Galaxy, job_id: str, kind: str, name: str) -> str:
    for item in client.ok(f"/api/jobs/{job_id}/{kind}"):
        if item["name"] == name:
            return str(item["dataset"]["id"])
    raise AssertionError(f"job {job_id} has no {kind} named {name}")
