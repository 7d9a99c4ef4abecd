"""A TES task whose node dies: another node reruns it, and py-tes sees both attempts.

Two daemons n1 and n2 on one PostgreSQL store (a fresh database, from tests.db),
heartbeats every 0.5 s and death after 3 s of silence, as in ``test_nodes.py``; both
have the TES face on a Docker destination, and share this host's disk (the task's
directory is in n1's data dir). n2 is drained until n1 runs the task. The task has
two executors: the first echoes, the second leaves a marker in the task's volume and
sleeps (attempt 1) or, finding the marker, ends at once (attempt 2: the volume lives
in the task's directory, which both attempts share).

The machine "dies" once attempt 1's first executor log is visible: its daemon and
the task's process group get SIGKILL, but attempt 1's sleeping container lives on (as
on a machine whose daemon alone died). Attempt 2 removes it before it stages anything,
and says so; attempt 1's log says why it ended (the reaper's requeue) and where both
attempts ran. Any container left is removed at the end, by the test's task id.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import tes

from tests.db import store_sql
from tests.e2e.tes_support import TIMEOUT, TesNodes
from tests.helpers import DEADLINE_S, DaemonProcess, wait_for
from tests.services import PYTHON_IMAGE, require

# Several daemons on one store is PostgreSQL's case whatever engine the rest of the
# run uses: this test makes its own database and runs once.
pytestmark = [pytest.mark.e2e, pytest.mark.engine_independent, pytest.mark.timeout(300)]

DEAD_AFTER_S = 3.0
#: The daemons' ``jobs.max_attempts`` (the reaper's requeue reason names it).
MAX_ATTEMPTS = 3


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[TesNodes]:
    require("postgres")
    require("docker")
    nodes = TesNodes(
        tmp_path,
        node={"dead_after_s": DEAD_AFTER_S},
        extra={"jobs": {"max_attempts": MAX_ATTEMPTS}},
    )
    try:
        yield nodes
    finally:
        nodes.close()


def test_node_killed__another_node_reruns_the_task_and_full_shows_two_attempts(
    pair: TesNodes,
) -> None:
    n1 = pair.start("n1")
    n2 = pair.start("n2")
    n1.cli("node", "drain", "n2")
    second = "test -e /shared/begun && echo second || { touch /shared/begun; exec sleep 300; }"
    doc = tes.Task(
        name="twice",
        executors=[
            tes.Executor(image=PYTHON_IMAGE, command=["sh", "-c", "echo first"]),
            tes.Executor(image=PYTHON_IMAGE, command=["sh", "-c", second]),
        ],
        volumes=["/shared"],
    )
    task_id = str(pair.client("n1").create_task(doc))
    try:
        _run_and_kill_n1(pair, n1, n2, task_id)
    finally:
        # Attempt 1's container outlives its killed CLI (as on a machine that is still up).
        subprocess.run(
            f"docker ps -aq --filter name=^jobferry-{task_id}- | xargs -r docker rm -f",
            shell=True,
            capture_output=True,
            check=False,
        )


def _container_exists(name: str) -> bool:
    ps = ["docker", "ps", "-aq", "--filter", f"name=^{name}$"]
    return bool(subprocess.run(ps, capture_output=True, text=True, check=True).stdout.strip())


def _run_and_kill_n1(pair: TesNodes, n1: DaemonProcess, n2: DaemonProcess, task_id: str) -> None:
    client = pair.client("n1")

    def first_executor_logged() -> bool:
        task = client.get_task(task_id, view="FULL")
        return bool(task.logs and task.logs[0].logs)

    wait_for("attempt 1's first executor log", first_executor_logged)
    # Its second executor has begun (else attempt 2 would find no marker, and sleep).
    marker = Path(pair.job(task_id)["job_dir"]) / "tes" / "root" / "shared" / "begun"
    wait_for("attempt 1's second executor to begin", marker.exists)
    running = client.get_task(task_id, view="FULL")
    assert running.state == "RUNNING" and len(running.logs) == 1
    assert pair.job(task_id)["node"] == "n1"
    assert running.logs[0].metadata["node"] == "n1"
    assert running.logs[0].metadata["host"] == os.uname().nodename
    sleeper = f"jobferry-{task_id}-1-1"  # attempt 1's second executor
    assert _container_exists(sleeper)

    # The machine dies: the daemon and its task's processes, all at once.
    assert n1.proc is not None
    os.kill(n1.proc.pid, signal.SIGKILL)
    n1.proc.wait(DEADLINE_S)
    pid = int(str(pair.job(task_id)["external_id"]).split("@")[0])
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    undrain = f"{n2.url}/api/nodes/n2/undrain"
    headers = {"Authorization": f"Bearer {pair.admin_key}"}
    assert requests.put(undrain, headers=headers, timeout=TIMEOUT).ok

    survivor = pair.client("n2")
    survivor.wait(task_id, timeout=TIMEOUT)
    full = survivor.get_task(task_id, view="FULL")  # py-tes's strict model: it parsed
    assert full.state == "COMPLETE", full
    assert [log.metadata["attempt"] for log in full.logs] == ["1", "2"]
    first, rerun = full.logs
    assert [e.stdout for e in first.logs] == ["first\n"]  # cut off in its second executor
    ended = [line for line in first.system_logs if line.startswith("attempt 1 ended: ")]
    assert ended == [f"attempt 1 ended: requeued: node n1 died (attempt 1 of {MAX_ATTEMPTS})"]
    assert first.metadata["node"] == "n1" and first.metadata["host"] == os.uname().nodename
    assert [(e.exit_code, e.stdout) for e in rerun.logs] == [(0, "first\n"), (0, "second\n")]
    assert rerun.metadata["node"] == "n2" and rerun.end_time is not None
    assert rerun.metadata["host"] == os.uname().nodename
    # Attempt 2 removed attempt 1's container (by its exact name) before it staged.
    assert f"removed {sleeper}: earlier attempts' containers" in rerun.system_logs
    assert not _container_exists(sleeper)
    row = pair.job(task_id)
    assert row["attempt"] == 2 and row["node"] == "n2"
    kept = store_sql(
        pair.store_url, "SELECT final_state FROM tes_tasks WHERE job_id = :id", {"id": task_id}
    )
    assert kept[0]["final_state"] == "COMPLETE"
    shutil.rmtree(row["job_dir"])  # what retention does to an old job's files
    assert survivor.get_task(task_id, view="FULL") == full
