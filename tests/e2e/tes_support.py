"""What the TES end-to-end tests share."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import tes

from tests.db import fresh_pg_database, store_sql
from tests.helpers import DEADLINE_S, DaemonProcess
from tests.services import PYTHON_IMAGE

#: py-tes wants whole seconds.
TIMEOUT = int(DEADLINE_S)
#: The states a task ends in.
ENDED = frozenset({"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED"})


@dataclass
class TesHttp:
    """A daemon's TES face over plain HTTP (the admin's key), and the tasks created."""

    daemon: DaemonProcess
    created: list[str] = field(default_factory=list, kw_only=True)

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(
            method,
            self.daemon.url + "/ga4gh/tes/v1" + path,
            headers={"Authorization": f"Bearer {self.daemon.admin_key}"},
            timeout=DEADLINE_S,
            **kwargs,
        )

    def create(self, doc: dict[str, Any]) -> str:
        response = self.call("POST", "/tasks", json=doc)
        assert response.status_code == 200, response.text
        self.created.append(str(response.json()["id"]))
        return self.created[-1]

    def get(self, task_id: str, view: str = "FULL") -> dict[str, Any]:
        response = self.call("GET", f"/tasks/{task_id}", params={"view": view})
        assert response.status_code == 200, response.text
        return dict(response.json())

    def wait_state(self, task_id: str, states: set[str] | frozenset[str] = ENDED) -> dict[str, Any]:
        """The task (FULL) once in one of *states* (by default: ended)."""
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            task = self.get(task_id)
            if task["state"] in states:
                return task
            time.sleep(0.2)
        raise AssertionError(f"task {task_id} never reached {states}: {self.get(task_id)}")


def task_job_ids(daemon: DaemonProcess) -> list[str]:
    """The ids of the daemon's jobs (TES tasks among them), read before it stops."""
    listed = daemon.cli("job", "list", "--json", "--limit", "10000", check=False).stdout
    try:
        return [str(job["id"]) for job in json.loads(listed or "[]")]
    except ValueError:
        return []


def remove_task_containers(job_ids: list[str]) -> None:
    """Remove, by name, any container left by these tasks' executors (named
    ``jobferry-<job id>-<attempt>-<index>``). Never a wider filter: the other engine's
    suite runs Docker jobs (``jobferry-<job id>-<attempt>``) at the same time."""
    names = subprocess.run(
        ["docker", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True
    ).stdout.split()
    ours = [n for n in names if any(n.startswith(f"jobferry-{j}-") for j in job_ids)]
    if ours:
        subprocess.run(["docker", "rm", "-f", *ours], capture_output=True, check=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TesNodes:
    """Daemons (nodes) on one fresh PostgreSQL store (from tests.db), each with the TES
    face on a Docker destination (``dock``) and heartbeats every 0.5 s; *node* and
    *extra* add to every node's ``node:`` section and top-level configuration."""

    def __init__(
        self, base: Path, node: dict[str, Any] | None = None, extra: dict[str, Any] | None = None
    ) -> None:
        self.base, self.node, self.extra = base, dict(node or {}), dict(extra or {})
        self.store_url = fresh_pg_database()
        self.daemons: dict[str, DaemonProcess] = {}

    def start(self, name: str) -> DaemonProcess:
        config = {
            "database": {"url": self.store_url, "pool_size": 3},
            "server": {"host": "127.0.0.1", "port": free_port()},
            "node": {"name": name, "cores": 4, "heartbeat_s": 0.5, **self.node},
            "runners": {
                "local": {"slots": 2, "kill_grace_s": 1},
                "docker": {"enabled": True, "slots": 2},
            },
            "destinations": {
                "local": {"runner": "local"},
                "dock": {"runner": "docker", "image": PYTHON_IMAGE},
            },
            "tes": {"enabled": True, "destination": "dock"},
            **self.extra,
        }
        daemon = DaemonProcess(self.base / name / "data", config)
        self.daemons[name] = daemon
        return daemon.start()

    @property
    def admin_key(self) -> str:
        return next(iter(self.daemons.values())).admin_key

    def client(self, name: str) -> tes.HTTPClient:
        return tes.HTTPClient(self.daemons[name].url, token=self.admin_key, timeout=TIMEOUT)

    def job(self, job_id: str) -> dict[str, Any]:
        rows = store_sql(self.store_url, "SELECT * FROM jobs WHERE id = :id", {"id": job_id})
        assert rows, job_id
        return dict(rows[0])

    def close(self) -> None:
        for daemon in self.daemons.values():
            try:
                daemon.stop()
            except Exception:
                daemon.kill()
