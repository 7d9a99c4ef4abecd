"""Several daemons (nodes) on one PostgreSQL store: listing, drain, failover, fencing, placement.

Every test starts its own nodes n1, n2, n3: the SAME database (a fresh one per test,
from tests.db), their own data directories and fixed ports, heartbeats every 0.5 s and
death after 3 s of silence. Jobs submitted to a node keep their directory in that
node's data dir; all nodes share this host's disk (``node.shared_filesystem``).

Teardown stops every daemon by pid, then kills by pid whatever job process is left in
the test's directories.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.db import fresh_pg_database, store_sql
from tests.helpers import JOB_SCRIPTS, Client, DaemonProcess, job_hosts, wait_for
from tests.services import require

# Several daemons on one store is PostgreSQL's case whatever engine the rest of the
# run uses: these tests make their own database and run once.
pytestmark = [pytest.mark.e2e, pytest.mark.engine_independent, pytest.mark.timeout(300)]

HEARTBEAT_S = 0.5
DEAD_AFTER_S = 3.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Nodes:
    """Up to three daemons n1..n3 on one store; the job scripts registered once."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.runs = base / "runs.log"
        self.runs.touch()
        # A fresh PostgreSQL database for this test is every node's store.
        self.store_url = fresh_pg_database()
        self.daemons: dict[str, DaemonProcess] = {}
        self.ports: dict[str, int] = {}

    def start(self, name: str, cores: int = 2, slots: int = 2) -> DaemonProcess:
        port = self.ports.setdefault(name, free_port())
        config = {
            "database": {"url": self.store_url, "pool_size": 3},
            "server": {"host": "127.0.0.1", "port": port},
            "node": {
                "name": name,
                "cores": cores,
                "heartbeat_s": HEARTBEAT_S,
                "dead_after_s": DEAD_AFTER_S,
                "labels": {"rack": name},
            },
            "runners": {"local": {"slots": slots, "kill_grace_s": 1}},
        }
        daemon = DaemonProcess(self.base / name / "data", config)
        self.daemons[name] = daemon
        daemon.start()
        if name == "n1" and not (self.base / "scripts-added").exists():
            daemon.client().add_script("runlog", JOB_SCRIPTS / "runlog.py")
            (self.base / "scripts-added").touch()
        return daemon

    @property
    def admin_key(self) -> str:
        return self.daemons["n1"].admin_key

    def client(self, name: str) -> Client:
        return Client(self.daemons[name].url, self.admin_key)

    def submit(self, via: str, sleep: float, extra: str = "", **data: Any) -> str:
        command = f"--log {shlex.quote(str(self.runs))} --sleep {sleep} {extra}"
        return self.client(via).submit("runlog", command, **data)

    def job(self, job_id: str) -> dict[str, Any]:
        rows = store_sql(self.store_url, "SELECT * FROM jobs WHERE id = :id", {"id": job_id})
        assert rows, job_id
        return dict(rows[0])

    def node_row(self, name: str) -> dict[str, Any]:
        rows = store_sql(self.store_url, "SELECT * FROM nodes WHERE name = :n", {"n": name})
        return dict(rows[0]) if rows else {}

    def api_node(self, via: str, name: str) -> dict[str, Any]:
        response = self.client(via).get(f"/api/nodes/{name}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def done(self, job_ids: list[str]) -> bool:
        return all(self.job(j)["state"] in ("ok", "error", "deleted") for j in job_ids)

    def runs_by_job(self) -> dict[str, list[tuple[str, int, int, float]]]:
        """job id -> [(start|end, attempt, pid, time)] from the shared run log."""
        found: dict[str, list[tuple[str, int, int, float]]] = defaultdict(list)
        for line in self.runs.read_text().splitlines():
            what, job, attempt, pid, at = line.split()
            found[job].append((what, int(attempt), int(pid), float(at)))
        return found

    def kill_job_processes(self, job_id: str) -> None:
        """SIGKILL the job's whole process group (the job leads a session)."""
        external = self.job(job_id)["external_id"]
        pid = int(str(external).split("@")[0])
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        for daemon in self.daemons.values():
            if daemon.proc is None:
                continue
            try:
                if daemon.proc.poll() is None:
                    os.kill(daemon.proc.pid, signal.SIGCONT)  # a test may have stopped it
                daemon.stop()
            except Exception:
                daemon.kill()
        roots = [str(self.base) + os.sep]
        for proc in psutil.process_iter():
            try:
                cwd = proc.cwd() + os.sep
                if proc.pid != os.getpid() and any(cwd.startswith(r) for r in roots):
                    proc.kill()
            except (psutil.Error, OSError):
                pass


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Nodes]:
    require("postgres")
    cluster = Nodes(tmp_path)
    try:
        yield cluster
    finally:
        cluster.close()


# --- listing -------------------------------------------------------------------------------


def test_node_list_and_show__three_live_nodes_with_totals_and_free__admins_only(
    nodes: Nodes,
) -> None:
    for name, cores in (("n1", 1), ("n2", 2), ("n3", 4)):
        nodes.start(name, cores=cores)
    client = nodes.client("n2")

    def all_alive() -> list[dict[str, Any]] | None:
        listed = client.get("/api/nodes").json()
        return listed if len(listed) == 3 and all(n["alive"] for n in listed) else None

    listed = wait_for("three live nodes", all_alive)
    assert [n["name"] for n in listed] == ["n1", "n2", "n3"]
    for node, cores in zip(listed, (1, 2, 4), strict=True):
        assert node["state"] == "up" and node["drained"] is False
        assert node["total"]["cores"] == cores and node["free"]["cores"] == cores
        assert node["total"]["memory_mb"] > 0 and node["running_jobs"] == 0
        assert node["url"] == nodes.daemons[node["name"]].url
        assert node["labels"] == {"rack": node["name"]}
        assert node["heartbeat_age_s"] is not None and node["heartbeat_age_s"] < DEAD_AFTER_S
        assert node["pid"] == nodes.daemons[node["name"]].proc.pid  # type: ignore[union-attr]

    # A running job shows in its node's free cores.
    job = nodes.submit("n1", 30)
    wait_for("the job to start", lambda: nodes.job(job)["external_id"])
    where = nodes.job(job)["node"]
    wait_for(
        "the node to publish its use",
        lambda: nodes.api_node("n3", where)["running_jobs"] == 1,
    )
    shown = nodes.api_node("n3", where)
    assert shown["free"]["cores"] == shown["total"]["cores"] - 1
    nodes.daemons["n1"].cli("job", "cancel", job)

    # The CLI, from any node's configuration (same store).
    out = nodes.daemons["n3"].cli("node", "list").stdout
    header, *rows = out.splitlines()
    assert header.split()[:4] == ["NAME", "STATE", "DRAINED", "ALIVE"]
    assert [r.split()[0] for r in rows] == ["n1", "n2", "n3"]
    assert "4/4" in rows[2] or "3/4" in rows[2]
    as_json = json.loads(nodes.daemons["n1"].cli("node", "list", "--json").stdout)
    assert {n["name"] for n in as_json} == {"n1", "n2", "n3"}
    show = json.loads(nodes.daemons["n1"].cli("node", "show", "n2", "--json").stdout)
    assert show["name"] == "n2" and show["total"]["cores"] == 2 and show["alive"] is True
    missing = nodes.daemons["n1"].cli("node", "show", "nope", check=False)
    assert missing.returncode == 1 and "no node named" in missing.stderr

    # Admins only; unknown nodes 404.
    key = nodes.daemons["n1"].cli("user", "create", "bob").stdout.strip()
    bob = Client(nodes.daemons["n2"].url, key)
    assert bob.get("/api/nodes").status_code == 403
    assert bob.get("/api/nodes/n1").status_code == 403
    assert bob.session.put(bob.url + "/api/nodes/n1/drain", timeout=30).status_code == 403
    assert client.get("/api/nodes/nope").status_code == 404
    assert Client(nodes.daemons["n2"].url, "").get("/api/nodes").status_code == 403

    # A clean stop says so.
    nodes.daemons["n3"].stop()
    stopped = nodes.api_node("n1", "n3")
    assert stopped["state"] == "stopped" and stopped["alive"] is False


# --- drain -----------------------------------------------------------------------------------


def test_drain__a_drained_node_claims_nothing_while_others_do__undrain_resumes(
    nodes: Nodes,
) -> None:
    for name in ("n1", "n2", "n3"):
        nodes.start(name)
    cli = nodes.daemons["n2"].cli
    cli("node", "drain", "n1")
    assert nodes.api_node("n3", "n1")["drained"] is True
    wait_for("n1 to say draining", lambda: nodes.api_node("n3", "n1")["state"] == "draining")

    jobs = [nodes.submit("n1", 0.3) for _ in range(8)]
    wait_for("the jobs to end", lambda: nodes.done(jobs), timeout_s=60)
    ran_on = {nodes.job(j)["node"] for j in jobs}
    assert "n1" not in ran_on and ran_on <= {"n2", "n3"}
    assert all(nodes.job(j)["state"] == "ok" for j in jobs)

    # Undrain n1 (API), drain the others (API): new work lands on n1 only.
    client = nodes.client("n3")
    undrained = client.session.put(client.url + "/api/nodes/n1/undrain", timeout=30)
    assert undrained.status_code == 200 and undrained.json()["drained"] is False
    for other in ("n2", "n3"):
        assert client.session.put(client.url + f"/api/nodes/{other}/drain", timeout=30).ok
    more = [nodes.submit("n2", 0.3) for _ in range(3)]
    wait_for("the jobs to end on n1", lambda: nodes.done(more), timeout_s=60)
    assert {nodes.job(j)["node"] for j in more} == {"n1"}

    # A drained node finishes what it runs.
    long = nodes.submit("n1", 2)
    wait_for("the job to start on n1", lambda: nodes.job(long)["external_id"])
    cli("node", "drain", "n1")
    wait_for("the job to end", lambda: nodes.done([long]))
    assert nodes.job(long)["state"] == "ok" and nodes.job(long)["node"] == "n1"


# --- failover --------------------------------------------------------------------------------


def test_kill9_of_a_node__declared_dead_and_its_jobs_requeued_and_run_on_survivors(
    nodes: Nodes,
) -> None:
    for name in ("n1", "n2", "n3"):
        nodes.start(name)
    for other in ("n2", "n3"):
        nodes.daemons["n1"].cli("node", "drain", other)
    running = [nodes.submit("n1", 4) for _ in range(2)]
    for job in running:
        wait_for(f"{job} to run on n1", lambda job=job: nodes.job(job)["external_id"])
    assert {nodes.job(j)["node"] for j in running} == {"n1"}
    queued = [nodes.submit("n1", 0.5) for _ in range(3)]  # n1 has 2 slots: these wait

    # The machine dies: the daemon, its job host and its jobs' processes, all at once.
    hosts = job_hosts(nodes.daemons["n1"].proc.pid)  # type: ignore[union-attr]
    os.kill(nodes.daemons["n1"].proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
    for host in hosts:
        os.kill(host, signal.SIGKILL)
    for job in running:
        nodes.kill_job_processes(job)
    killed_at = time.time()
    survivor = nodes.client("n2")
    for other in ("n2", "n3"):  # by HTTP: a CLI run can take seconds on a busy machine
        assert survivor.session.put(f"{survivor.url}/api/nodes/{other}/undrain", timeout=60).ok

    declared = wait_for(
        "n1 to be declared dead", lambda: nodes.node_row("n1")["state"] == "dead" and time.time()
    )
    # dead_after_s plus the reaper's round, with room for a busy machine.
    assert declared - killed_at <= DEAD_AFTER_S + 10
    assert nodes.api_node("n2", "n1")["alive"] is False
    all_jobs = running + queued
    wait_for("every job to end", lambda: nodes.done(all_jobs), timeout_s=60)

    runs = nodes.runs_by_job()
    for job in all_jobs:
        row = nodes.job(job)
        assert row["state"] == "ok", row
        assert row["node"] in ("n2", "n3"), row
    for job in running:
        row = nodes.job(job)
        assert row["attempt"] == 2, row
        starts = [r for r in runs[job] if r[0] == "start"]
        ends = [r for r in runs[job] if r[0] == "end"]
        assert [s[1] for s in starts] == [1, 2], runs[job]  # twice at most, in order
        assert [e[1] for e in ends] == [2], runs[job]  # attempt 1 died with its node
        assert starts[1][3] >= killed_at  # never concurrently: attempt 2 began after the death
    for job in queued:
        assert [r[0] for r in runs[job]] == ["start", "end"], runs[job]  # exactly once


def test_stale_node__cannot_overwrite_the_new_attempts__then_rejoins_and_works(
    nodes: Nodes,
) -> None:
    n1 = nodes.start("n1")
    nodes.start("n2")
    n1.cli("node", "drain", "n2")
    # Attempt 1 fails (exit 3) and ends while n1 is frozen; attempt 2 succeeds on n2.
    # Attempt 1 waits for the gate: on a busy machine a fixed sleep could end first.
    gate = nodes.base / "gate"
    jobs = [nodes.submit("n1", 0.2, f"--fail-attempt 1 --gate {gate}") for _ in range(2)]
    for job in jobs:
        wait_for(f"{job} to run on n1", lambda job=job: nodes.job(job)["external_id"])
    n1.cli("node", "undrain", "n2")

    assert n1.proc is not None
    os.kill(n1.proc.pid, signal.SIGSTOP)
    try:
        gate.touch()
        wait_for(
            "attempt 1 to end while n1 is frozen",
            lambda: all(("end", 1) in [(r[0], r[1]) for r in nodes.runs_by_job()[j]] for j in jobs),
        )
        wait_for("n1 to be declared dead", lambda: nodes.node_row("n1")["state"] == "dead")
        wait_for(
            "the jobs' second attempts to run on n2",
            lambda: all(
                nodes.job(j)["attempt"] == 2 and nodes.job(j)["node"] == "n2" for j in jobs
            ),
        )
    finally:
        os.kill(n1.proc.pid, signal.SIGCONT)

    wait_for("n1 to be up again", lambda: nodes.node_row("n1")["state"] == "up")
    wait_for("the second attempts to end", lambda: nodes.done(jobs))
    # n1 noticed it had been declared dead, so it has had its chance to write.
    wait_for("n1 to notice", lambda: "had been declared dead" in n1.log_path.read_text())
    for job in jobs:
        row = nodes.job(job)
        assert (row["state"], row["exit_code"], row["attempt"], row["node"]) == ("ok", 0, 2, "n2")
    log = n1.log_path.read_text()
    assert "had been declared dead" in log
    runs = nodes.runs_by_job()
    for job in jobs:
        assert [(r[0], r[1]) for r in runs[job]].count(("start", 1)) == 1

    # Rejoined: it claims and runs jobs again.
    n1.cli("node", "drain", "n2")
    again = nodes.submit("n2", 0.2)
    wait_for("the job to end on n1", lambda: nodes.done([again]))
    row = nodes.job(again)
    assert (row["state"], row["node"], row["attempt"]) == ("ok", "n1", 1)
    assert nodes.api_node("n2", "n1")["alive"] is True


# --- placement -------------------------------------------------------------------------------


def test_placement__a_job_needing_3_cores_runs_on_the_node_that_has_them(nodes: Nodes) -> None:
    nodes.start("n1", cores=1)
    nodes.start("n2", cores=4)
    wait_for("n2 to be alive", lambda: nodes.api_node("n1", "n2")["alive"])
    big = nodes.submit("n1", 0.3, cores="3")
    small = [nodes.submit("n1", 0.3) for _ in range(3)]
    wait_for("the jobs to end", lambda: nodes.done([big, *small]), timeout_s=60)
    row = nodes.job(big)
    assert (row["state"], row["node"], row["cores"]) == ("ok", "n2", 3)
    # Nothing alive can hold 8 cores: refused at submission.
    response = nodes.client("n1").post(
        "/api/scripts/v1/runlog/submit/",
        data={"job_name": "x", "command": f"--log {nodes.runs}", "cores": "8"},
    )
    assert response.status_code == 400 and response.json()["valid"] is False, response.text
    assert response.json()["error"] == "unsatisfiable"
