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
from collections.abc import Iterator
from pathlib import Path

import pytest
import tes

from tests.e2e.tes_support import TesNodes, remove_task_containers
from tests.helpers import DaemonProcess, wait_for
from tests.services import PYTHON_IMAGE, require

# Several daemons on one store is PostgreSQL's case whatever engine the rest of the
# run uses: this test makes its own database and runs once.
pytestmark = [pytest.mark.e2e, pytest.mark.engine_independent, pytest.mark.timeout(300)]


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[TesNodes]:
    require("postgres")
    require("docker")
    # dead_after_s: long enough that a node stopped for the "no answer" case stays alive.
    found = TesNodes(tmp_path, node={"dead_after_s": 120, "shared_filesystem": False})
    try:
        yield found
    finally:
        found.close()


def test_a_running_task_on_another_node_shows_its_logs_and_state_through_any_node(
    nodes: TesNodes,
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


def _check(nodes: TesNodes, n1: DaemonProcess, task_id: str) -> None:
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
