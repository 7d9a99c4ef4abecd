"""Several daemons, one PostgreSQL store: every job runs exactly once.

Three ``jobferry serve`` processes on 127.0.0.1 share one fresh PostgreSQL
database (their data directories differ; on one host every job directory is
visible to every node: ``node.shared_filesystem``). Jobs go to random nodes;
each run appends its job id and attempt to one shared log, from which
duplicates and losses are counted. These tests always use PostgreSQL (they are
about it), so they run once, whatever engine the rest of the run uses.
"""

from __future__ import annotations

import random
import socket
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.db import fresh_pg_database, store_sql
from tests.helpers import DEADLINE_S, JOB_SCRIPTS, Client, DaemonProcess
from tests.pg_cluster import PrivateCluster, require_cluster_tools
from tests.services import require

pytestmark = [pytest.mark.e2e, pytest.mark.engine_independent, pytest.mark.timeout(420)]


def start_nodes(base: Path, url: str, count: int, **node: Any) -> list[DaemonProcess]:
    daemons: list[DaemonProcess] = []
    try:
        for i in range(1, count + 1):
            config = {
                "database": {"url": url, "pool_size": 4},
                "node": {"name": f"n{i}", "heartbeat_s": 0.5, **node},
                "runners": {"local": {"slots": 2}},
            }
            daemons.append(DaemonProcess(base / f"n{i}", config).start())
    except BaseException:
        for daemon in daemons:
            daemon.stop()
        raise
    return daemons


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[tuple[list[DaemonProcess], str]]:
    require("postgres")
    url = fresh_pg_database()
    daemons = start_nodes(tmp_path, url, 3)
    try:
        yield daemons, url
    finally:
        for daemon in daemons:
            daemon.stop()


def clients(daemons: list[DaemonProcess]) -> list[Client]:
    """One client per node, all with the admin key the first node created."""
    key = daemons[0].admin_key
    return [Client(d.url, key) for d in daemons]


def runs(log: Path) -> Counter[str]:
    if not log.exists():
        return Counter()
    return Counter(line.split()[0] for line in log.read_text().splitlines() if line.strip())


def wait_all_ended(url: str, total: int, timeout_s: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    counts: dict[str, int] = {}
    while time.monotonic() < deadline:
        try:
            rows = store_sql(url, "SELECT state, count(*) AS n FROM jobs GROUP BY state")
        except Exception:  # the store may be restarting in the test
            time.sleep(0.5)
            continue
        counts = {str(row["state"]): int(row["n"]) for row in rows}
        if sum(counts.get(s, 0) for s in ("ok", "error", "deleted")) >= total:
            return counts
        time.sleep(0.5)
    raise AssertionError(f"jobs did not all end within {timeout_s}s: {counts}")


def test_nodes__1000_jobs_on_random_nodes_each_run_exactly_once(
    nodes: tuple[list[DaemonProcess], str], tmp_path: Path
) -> None:
    daemons, url = nodes
    log = tmp_path / "runs.log"
    http = clients(daemons)
    http[0].add_script("counter", JOB_SCRIPTS / "counter.py")
    total = 1000
    rng = random.Random(7)

    def submit(i: int) -> str:
        return http[rng.randrange(3)].submit("counter", f"--log {log}", job_name=f"j{i}")

    with ThreadPoolExecutor(8) as pool:
        submitted = list(pool.map(submit, range(total)))
    assert len(set(submitted)) == total
    counts = wait_all_ended(url, total, timeout_s=360)
    assert counts == {"ok": total}, counts
    ran = runs(log)
    duplicates = {job: n for job, n in ran.items() if n > 1}
    lost = set(submitted) - set(ran)
    assert (len(duplicates), len(lost)) == (0, 0), (duplicates, lost)
    rows = store_sql(url, "SELECT node, count(*) AS n FROM jobs GROUP BY node")
    per_node = {row["node"]: row["n"] for row in rows}
    assert set(per_node) == {"n1", "n2", "n3"}, per_node  # every node took work
    attempts = store_sql(url, "SELECT max(attempt) AS a FROM jobs")[0]["a"]
    assert attempts == 1


def test_nodes__postgres_restarted_under_load_loses_nothing(tmp_path: Path) -> None:
    require_cluster_tools()
    cluster = PrivateCluster()
    daemons: list[DaemonProcess] = []
    try:
        cluster.start()
        cluster.create_database("jobferry")
        daemons = start_nodes(tmp_path, cluster.url, 2)
        http = clients(daemons)
        http[0].add_script("counter", JOB_SCRIPTS / "counter.py")
        log = tmp_path / "runs.log"
        submitted: list[str] = []
        refused = 0

        def submit(client: Client, i: int) -> None:
            nonlocal refused
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    response = client.post(
                        "/api/scripts/v1/counter/submit/",
                        data={"job_name": f"j{i}", "command": f"--log {log} --sleep 0.2"},
                    )
                except requests.RequestException:
                    response = None
                if response is not None and response.status_code == 200:
                    submitted.append(response.json()["job_id"])
                    return
                assert response is None or response.status_code == 503, response.text
                refused += 1
                time.sleep(0.2)
            raise AssertionError(f"submission {i} never accepted")

        for i in range(40):
            submit(http[i % 2], i)
        cluster.stop()  # mid-run: jobs are running and queued
        down = http[0].get("/api/jobs/v1/" + submitted[-1] + "/status/")
        assert down.status_code == 503, down.text
        time.sleep(3)
        cluster.start()
        for i in range(40, 80):
            submit(http[i % 2], i)
        counts = wait_all_ended(cluster.url, 80, timeout_s=240)
        assert counts == {"ok": 80}, counts
        ran = runs(log)
        assert set(ran) == set(submitted) and max(ran.values()) == 1, ran
        for daemon in daemons:
            assert daemon.proc is not None and daemon.proc.poll() is None  # never restarted
    finally:
        for daemon in daemons:
            daemon.stop()
        cluster.close()


def test_nodes__without_shared_filesystem_files_are_redirected_to_their_node(
    tmp_path: Path,
) -> None:
    """A job runs on the node that accepted it; asking another node for its files
    gives a 307 to that node (followed: the right bytes), and a clear 503 once
    that node is dead."""
    require("postgres")
    url = fresh_pg_database()
    daemons = start_nodes(tmp_path, url, 2, shared_filesystem=False, dead_after_s=2.0)
    try:
        first, second = clients(daemons)
        first.add_script("wordcount", JOB_SCRIPTS / "wordcount.py")
        job_id = first.submit("wordcount", "--infile doc", files={"doc": ("d.txt", b"a b c")})
        assert first.wait(job_id, timeout_s=60)["status"] == "completed"
        row = store_sql(url, "SELECT node, home_node FROM jobs WHERE id = :id", {"id": job_id})
        assert row == [{"node": "n1", "home_node": "n1"}]
        # Details (with the logs) through the other node: redirected, then answered.
        moved = second.get(f"/api/jobs/v1/{job_id}/details/", allow_redirects=False)
        assert moved.status_code == 307, moved.text
        assert moved.headers["Location"] == f"{daemons[0].url}/api/jobs/v1/{job_id}/details/"
        # (HTTP clients drop credentials on a redirect to another port: re-send them.)
        details = second.session.get(moved.headers["Location"], timeout=30).json()
        assert details["stdout"] == "counted 3 words\n"
        path = details["assets"][0]["url"].split(daemons[0].url, 1)[1]
        asset = second.get(path, allow_redirects=False)
        assert asset.status_code == 307
        assert second.session.get(asset.headers["Location"], timeout=30).content == b"3\n"
        # The node holding the files dies: a clear error, no guessing.
        daemons[0].kill()
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            down = second.get(f"/api/jobs/v1/{job_id}/details/", allow_redirects=False)
            if down.status_code == 503:
                break
            time.sleep(0.5)
        assert down.status_code == 503, down.text
        assert down.json()["error"] == "node_down" and "n1" in down.json()["message"]
    finally:
        for daemon in daemons:
            daemon.stop()


def test_nodes__slurm_job_of_a_dead_node_is_adopted_and_ends_with_its_true_outcome(
    tmp_path: Path,
) -> None:
    """kill -9 of the node that submitted a Slurm job: Slurm keeps running it, a live
    node adopts it (same attempt, never resubmitted) and records its real end."""
    require("postgres")
    require("slurm")
    url = fresh_pg_database()
    daemons: list[DaemonProcess] = []

    def start(name: str) -> DaemonProcess:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        config = {
            "database": {"url": url, "pool_size": 3},
            "server": {"port": port},
            "node": {"name": name, "heartbeat_s": 0.5, "dead_after_s": 3.0},
            "runners": {"slurm": {"enabled": True, "poll_interval_s": 0.5}},
            "destinations": {"local": {}, "slurm": {"runner": "slurm", "memory_mb": 32}},
            "routing": {"default": "slurm"},
        }
        daemon = DaemonProcess(tmp_path / name, config).start()
        daemons.append(daemon)
        return daemon

    def job(job_id: str) -> dict[str, Any]:
        return dict(store_sql(url, "SELECT * FROM jobs WHERE id = :id", {"id": job_id})[0])

    try:
        first = start("n1")
        client = first.client()
        client.add_script("behave", JOB_SCRIPTS / "behave.py")
        job_id = client.submit("behave", "--sleep 8 --exit-code 3")
        deadline = time.monotonic() + 60
        while not (job(job_id)["external_id"] and job(job_id)["node"] == "n1"):
            assert time.monotonic() < deadline, job(job_id)
            time.sleep(0.2)
        slurm_id = job(job_id)["external_id"]
        start("n2")
        first.kill()  # the daemon only: its Slurm job runs on
        deadline = time.monotonic() + DEADLINE_S
        while job(job_id)["node"] != "n2":
            assert time.monotonic() < deadline, f"not adopted: {job(job_id)}"
            time.sleep(0.2)
        deadline = time.monotonic() + 90
        while job(job_id)["state"] not in ("ok", "error", "deleted"):
            assert time.monotonic() < deadline, job(job_id)
            time.sleep(0.3)
        ended = job(job_id)
        assert (ended["state"], ended["exit_code"], ended["attempt"]) == ("error", 3, 1), ended
        assert ended["external_id"] == slurm_id  # the same Slurm job, never resubmitted
        runs = Path(ended["job_dir"]) / "work" / "runs.txt"
        assert runs.read_text() == f"{job_id}\n"
    finally:
        for daemon in daemons:
            daemon.stop()
