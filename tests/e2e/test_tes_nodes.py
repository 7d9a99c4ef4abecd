"""A TES task on nodes that share the store but not a file system: any node shows it.

Two daemons n1 and n2 on one PostgreSQL store (a fresh database, from tests.db) with
``node.shared_filesystem: false``: a task created on n1 runs on n1, and its state
and executor logs are in files only n1 reads until it ends. py-tes asks n2, which
asks n1 with the client's credential and relays the answer (a redirect would lose
the credential: requests drops it on another port). A node that does not answer
is shown from the store. Once the task ended, its logs are in the store and every
node shows the same task.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tes

from tests.db import fresh_pg_database, store_sql
from tests.e2e.tes_support import remove_task_containers
from tests.helpers import DEADLINE_S, DaemonProcess, wait_for
from tests.services import PYTHON_IMAGE, require

# Several daemons on one store is PostgreSQL's case whatever engine the rest of the
# run uses: this test makes its own database and runs once.
pytestmark = [pytest.mark.e2e, pytest.mark.engine_independent, pytest.mark.timeout(300)]

#: py-tes wants whole seconds.
TIMEOUT = int(DEADLINE_S)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Nodes:
    """n1 and n2 on one fresh store, no shared file system, TES on Docker."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.store_url = fresh_pg_database()
        self.daemons: dict[str, DaemonProcess] = {}

    def start(self, name: str) -> DaemonProcess:
        config = {
            "database": {"url": self.store_url, "pool_size": 3},
            "server": {"host": "127.0.0.1", "port": free_port()},
            "node": {
                "name": name,
                "cores": 4,
                "heartbeat_s": 0.5,
                # Long enough that a node stopped for the "no answer" case stays alive.
                "dead_after_s": 120,
                "shared_filesystem": False,
            },
            "runners": {
                "local": {"slots": 2, "kill_grace_s": 1},
                "docker": {"enabled": True, "slots": 2},
            },
            "destinations": {
                "local": {"runner": "local"},
                "dock": {"runner": "docker", "image": PYTHON_IMAGE},
            },
            "tes": {"enabled": True, "destination": "dock"},
        }
        daemon = DaemonProcess(self.base / name / "data", config)
        self.daemons[name] = daemon
        return daemon.start()

    def client(self, name: str) -> tes.HTTPClient:
        key = self.daemons["n1"].admin_key
        return tes.HTTPClient(self.daemons[name].url, token=key, timeout=TIMEOUT)

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


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Nodes]:
    require("postgres")
    require("docker")
    found = Nodes(tmp_path)
    try:
        yield found
    finally:
        found.close()


def test_a_running_task_on_another_node_shows_its_logs_and_state_through_any_node(
    nodes: Nodes,
) -> None:
    n1 = nodes.start("n1")
    nodes.start("n2")
    doc = tes.Task(
        name="elsewhere",
        executors=[
            tes.Executor(image=PYTHON_IMAGE, command=["sh", "-c", "echo first"]),
            tes.Executor(image=PYTHON_IMAGE, command=["sleep", "300"]),
        ],
    )
    task_id = str(nodes.client("n1").create_task(doc))
    try:
        _check(nodes, n1, task_id)
    finally:
        if n1.proc is not None and n1.proc.poll() is None:
            os.kill(n1.proc.pid, signal.SIGCONT)
        remove_task_containers([task_id])


def _check(nodes: Nodes, n1: DaemonProcess, task_id: str) -> None:
    home, other = nodes.client("n1"), nodes.client("n2")

    def second_running() -> bool:
        task = home.get_task(task_id, view="FULL")
        return task.state == "RUNNING" and len(task.logs[0].logs or []) == 1

    wait_for("the first executor's log on n1", second_running)
    assert nodes.job(task_id)["node"] == "n1"
    assert nodes.job(task_id)["home_node"] == "n1"  # its directory is on n1's disk only

    # n2 reads no file of the task: it relays what n1 shows.
    seen = other.get_task(task_id, view="FULL")
    assert seen.state == "RUNNING"
    assert [e.stdout for e in seen.logs[0].logs] == ["first\n"]
    assert seen == home.get_task(task_id, view="FULL")
    assert other.get_task(task_id).state == "RUNNING"  # MINIMAL, as engines poll
    listed = other.list_tasks(view="MINIMAL")
    # The list is read from the store on n2: claimed by its node, the task is begun.
    assert [(t.id, t.state) for t in listed.tasks] == [(task_id, "INITIALIZING")]

    # n1 stops answering (stopped, not yet dead): n2 shows the task from the store.
    assert n1.proc is not None
    os.kill(n1.proc.pid, signal.SIGSTOP)
    try:
        stalled = other.get_task(task_id, view="BASIC")
    finally:
        os.kill(n1.proc.pid, signal.SIGCONT)
    assert stalled.state == "INITIALIZING" and stalled.id == task_id
    assert stalled.executors[1].command == ["sleep", "300"]

    # Cancelled through n2: n1 stops the task; its logs are then in the store for all.
    other.cancel_task(task_id)

    def canceled() -> bool:
        return other.get_task(task_id).state == "CANCELED"

    wait_for("the task to be CANCELED", canceled)
    ended = other.get_task(task_id, view="FULL")
    assert ended == home.get_task(task_id, view="FULL")
    assert [e.stdout for e in ended.logs[0].logs][:1] == ["first\n"]
