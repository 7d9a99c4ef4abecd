"""One contract, every runner: the same script through local, Docker and Slurm.

A daemon process serves five destinations: ``local``, ``docker`` and ``slurm``
with shared staging (the runner sees the daemon's job directory), and
``docker-remote`` and ``slurm-remote`` whose wrapper works in a scratch
directory of its own and moves every file over HTTP (job_files + the state
callback). Each test runs on every destination and expects the same outcome.
Docker and Slurm tests need the real services (``scripts/services``): skipped
without them on a developer's machine, failed under ``CI=true``.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.helpers import JOB_SCRIPTS, Client, DaemonProcess, eventually
from tests.services import PYTHON_IMAGE, require

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

DESTINATIONS = ["local", "docker", "slurm", "docker-remote", "slurm-remote"]
INPUT = b"the quick brown fox\njumps over the lazy dog\n"


def service_of(destination: str) -> str | None:
    return None if destination == "local" else destination.split("-")[0]


class Contract:
    def __init__(self, daemon: DaemonProcess, client: Client, scratch: Path) -> None:
        self.daemon = daemon
        self.client = client
        self.scratch = scratch

    def submit(self, destination: str, command: str = "", **fields: Any) -> str:
        return self.client.submit("behave", command, destination=destination, **fields)

    def job(self, job_id: str) -> dict[str, Any]:
        out = self.daemon.cli("job", "show", job_id, "--json").stdout
        return dict(json.loads(out))

    def job_dir(self, job_id: str) -> Path:
        return self.daemon.data_dir.resolve() / "jobs" / job_id[:2] / job_id

    def wait_running(self, job_id: str, timeout_s: float = 60) -> None:
        """Until the job's command has started (its stdout says so, or a remote job
        reported running and its scratch directory holds the line)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for path in (self.job_dir(job_id) / "stdout", *self.scratch.glob(f"{job_id}.*/stdout")):
                try:
                    if b"sleeping" in path.read_bytes():
                        return
                except OSError:
                    pass
            if self._container_says_running(job_id):
                return
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} did not start within {timeout_s}s: {self.job(job_id)}")

    def _container_says_running(self, job_id: str) -> bool:
        """docker-remote keeps its scratch directory inside the container."""
        found = subprocess.run(
            ["docker", "ps", "-q", "--filter", f"label=jobferry.job_id={job_id}"],
            capture_output=True,
            text=True,
        )
        for cid in found.stdout.split():
            out = subprocess.run(
                ["docker", "exec", cid, "sh", "-c", "cat /tmp/jf-scratch/*/stdout"],
                capture_output=True,
            )
            if b"sleeping" in out.stdout:
                return True
        return False


@pytest.fixture(scope="module")
def contract(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Contract]:
    base = tmp_path_factory.mktemp("contract")
    scratch = Path("/tmp/jf-scratch")  # the remote wrappers' scratch (host: Slurm)
    config = {
        "logging": {"access_log": True, "level": "DEBUG"},
        "jobs": {"max_log_mb": 1},  # the log cap, 1 MiB per stream
        # Jobs here mostly sleep: let several share the two cores of a test machine.
        "node": {"cores": 8},
        "runners": {
            "local": {"slots": 8},
            "docker": {"enabled": True, "slots": 8},
            "slurm": {"enabled": True, "poll_interval_s": 1.0},
        },
        "destinations": {
            "local": {"runner": "local", "memory_mb": 300},
            "docker": {"runner": "docker", "image": PYTHON_IMAGE, "memory_mb": 300},
            "slurm": {"runner": "slurm", "partition": "debug", "memory_mb": 300},
            "docker-remote": {
                "runner": "docker",
                "image": PYTHON_IMAGE,
                "memory_mb": 300,
                "network": True,
                "staging": "remote",
                "scratch_dir": str(scratch),
            },
            "slurm-remote": {
                "runner": "slurm",
                "memory_mb": 300,
                "staging": "remote",
                "scratch_dir": str(scratch),
            },
        },
    }
    daemon = DaemonProcess(base / "data", config).start()
    client = daemon.client()
    client.add_script("behave", JOB_SCRIPTS / "behave.py")
    client.add_script("chatty", JOB_SCRIPTS / "chatty.py")
    try:
        yield Contract(daemon, client, scratch)
    finally:
        daemon.stop()


@pytest.fixture(params=DESTINATIONS)
def destination(request: pytest.FixtureRequest, contract: Contract) -> Iterator[str]:
    service = service_of(request.param)
    if service is not None:
        require(service)
    yield str(request.param)
    # A failed test must not leave jobs that hold the node's cores for the next one.
    for state in ("running", "queued"):
        listed = contract.daemon.cli("job", "list", "--state", state, "--json").stdout
        for job in json.loads(listed):
            contract.daemon.cli("job", "cancel", job["id"], check=False)


def test_contract__same_script_gives_same_outputs_on_every_runner(
    contract: Contract, destination: str
) -> None:
    job_id = contract.submit(destination, "--infile doc", files={"doc": ("doc.txt", INPUT)})
    details = contract.client.wait(job_id, timeout_s=120)
    assert details["status"] == "completed", (details, contract.job(job_id))
    job_dir = contract.job_dir(job_id)
    assert (job_dir / "work" / "copy.txt").read_bytes() == INPUT
    assert (job_dir / "work" / "sub" / "count.txt").read_text() == "9\n"
    assert (job_dir / "work" / "runs.txt").read_text() == f"{job_id}\n"
    assert b"done" in (job_dir / "stdout").read_bytes()
    assert (job_dir / "stderr").read_bytes() == b"to stderr\n"
    outputs = {f["name"] for f in contract.job(job_id)["files"] if f["kind"] == "output"}
    assert {"copy.txt", "sub/count.txt", "runs.txt", "where.txt"} <= outputs
    shown = contract.job(job_id)
    assert shown["destination"] == destination
    assert shown["runner"] == destination.split("-")[0]
    assert shown["exit_code"] == 0 and shown["attempt"] == 1


def test_contract__log_cap_keeps_head_marker_and_tail_on_every_runner(
    contract: Contract, destination: str
) -> None:
    job_id = contract.client.submit("chatty", "--mb 3 --exit-code 3", destination=destination)
    contract.client.wait(job_id, timeout_s=120)
    shown = contract.job(job_id)
    assert shown["exit_code"] == 3, shown  # the job's own, not a filter's
    cap = 1 << 20
    for name, tag in (("stdout", b"OUT"), ("stderr", b"ERR")):
        log = (contract.job_dir(job_id) / name).read_bytes()
        found = re.search(rb"\n\[jobferry: (\d+) bytes dropped here; [^\n]*\]\n", log)
        assert found is not None, (name, log[:100])
        written = len(b"FIRST-OUT\n") + (3 << 20) + len(b"LAST-OUT\n")
        assert int(found.group(1)) == written - cap
        assert len(log) == cap + len(found.group(0))
        assert log.startswith(b"FIRST-" + tag + b"\n") and log.endswith(b"LAST-" + tag + b"\n")


def test_contract__non_zero_exit_ends_error_with_the_code(
    contract: Contract, destination: str
) -> None:
    job_id = contract.submit(destination, "--exit-code 3")
    contract.client.wait(job_id, timeout_s=120)
    shown = contract.job(job_id)
    assert shown["state"] == "error"
    assert shown["exit_code"] == 3 and shown["state_reason"] == "exit code 3"


def test_contract__cancel_while_running_revokes_and_stops_it(
    contract: Contract, destination: str
) -> None:
    job_id = contract.submit(destination, "--sleep 120")
    contract.wait_running(job_id)
    contract.daemon.cli("job", "cancel", job_id)
    details = contract.client.wait(job_id, timeout_s=60)
    assert details["status"] == "REVOKED" and details["reason"] == "cancelled"
    _assert_nothing_left(job_id, destination)


def test_contract__walltime_exceeded_ends_error_with_the_reason(
    contract: Contract, destination: str
) -> None:
    job_id = contract.submit(destination, "--sleep 120", walltime_s="3")
    contract.client.wait(job_id, timeout_s=90)
    shown = contract.job(job_id)
    assert shown["state"] == "error" and "walltime" in (shown["state_reason"] or ""), shown
    _assert_nothing_left(job_id, destination)


def test_contract__out_of_memory_ends_error(contract: Contract, destination: str) -> None:
    job_id = contract.submit(destination, "--alloc-mb 1200")
    contract.client.wait(job_id, timeout_s=120)
    shown = contract.job(job_id)
    assert shown["state"] == "error", shown
    reason = shown["state_reason"] or ""
    if destination.startswith("docker"):  # the engine says why: the cgroup OOM killer
        assert "out of memory" in reason
    else:  # no cgroup: the address-space cap makes the allocation fail
        assert b"MemoryError" in (contract.job_dir(job_id) / "stderr").read_bytes()


def test_contract__remote_staging_moves_files_only_over_http(contract: Contract) -> None:
    for destination in ("docker-remote", "slurm-remote"):
        require(service_of(destination) or "")
        job_id = contract.submit(destination, "--infile doc", files={"doc": ("doc.txt", INPUT)})
        assert contract.client.wait(job_id, timeout_s=120)["status"] == "completed"
        job_dir = contract.job_dir(job_id)
        where = (job_dir / "work" / "where.txt").read_text().strip()
        assert where.startswith(str(contract.scratch) + "/") and str(job_dir) not in where
        # Access lines name the route template, never the path (it holds the job id):
        # that the wrapper fetched and posted over HTTP shows as those routes' lines.
        log = contract.daemon.log_text()
        assert "GET /api/jobs/{}/files" in log
        assert "POST /api/jobs/{}/files" in log
        assert "POST /api/jobs/{}/state" in log
        # The wrapper removes its scratch directory right after its last report.
        deadline = time.monotonic() + 60
        while list(contract.scratch.glob(f"{job_id}.*")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not list(contract.scratch.glob(f"{job_id}.*")), "scratch left behind"


def _assert_nothing_left(job_id: str, destination: str) -> None:
    if destination.startswith("docker"):
        out = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=jobferry.job_id={job_id}"],
            capture_output=True,
            text=True,
        ).stdout
        deadline = time.monotonic() + 60
        while out.strip() and time.monotonic() < deadline:
            time.sleep(0.5)
            out = subprocess.run(
                ["docker", "ps", "-aq", "--filter", f"label=jobferry.job_id={job_id}"],
                capture_output=True,
                text=True,
            ).stdout
        assert out.strip() == "", f"containers left for {job_id}: {out}"
    if destination.startswith("slurm"):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            out = subprocess.run(
                ["squeue", "-h", "-n", f"jobferry-{job_id}-1", "-o", "%i %T"],
                capture_output=True,
                text=True,
            ).stdout
            if not out.strip():
                return
            time.sleep(0.5)
        raise AssertionError(f"Slurm job of {job_id} still queued: {out}")


def test_contract__daemon_killed_and_restarted_jobs_end_with_their_true_outcome_once(
    tmp_path: Path, destination: str, contract: Contract
) -> None:
    """kill -9 of the daemon while one job runs and another is about to end: the next
    daemon re-attaches, each job ends with its own outcome, and none ran twice."""
    config = json.loads(contract.daemon.config_path.read_text())  # type: ignore[union-attr]
    config.pop("database", None)  # its own store (on PostgreSQL: its own database)
    # A fixed port: remote wrappers report to the URL they were started with.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        config["server"] = {"port": probe.getsockname()[1]}
    daemon = DaemonProcess(tmp_path / "data", config).start()
    try:
        client = daemon.client()
        client.add_script("behave", JOB_SCRIPTS / "behave.py")
        other = Contract(daemon, client, contract.scratch)
        ends_while_down = other.submit(destination, "--sleep 1 --exit-code 3")
        outlives = other.submit(destination, "--sleep 8")
        other.wait_running(ends_while_down)
        other.wait_running(outlives)
        daemon.kill()
        time.sleep(4)  # the first job ends while no daemon runs
        daemon.start()
        client = other.client = daemon.client()
        assert client.wait(ends_while_down, timeout_s=120)["is_complete"]
        assert client.wait(outlives, timeout_s=120)["is_complete"]
        first, second = other.job(ends_while_down), other.job(outlives)
        assert (first["state"], first["exit_code"]) == ("error", 3), _ending(first, daemon)
        assert (second["state"], second["exit_code"]) == ("ok", 0), _ending(second, daemon)
        for job_id, shown in ((ends_while_down, first), (outlives, second)):
            assert shown["attempt"] == 1
            runs = other.job_dir(job_id) / "work" / "runs.txt"
            assert runs.read_text() == f"{job_id}\n", "the job ran more than once"
        _assert_nothing_left(outlives, destination)
    finally:
        daemon.stop()


def test_callbacks__duplicated_late_and_reordered_reports_change_nothing(
    contract: Contract,
) -> None:
    # Long enough to send every report below while the process still runs, on a busy machine.
    job_id = contract.submit("local", "--sleep 15")
    contract.wait_running(job_id)
    key = contract.daemon.cli("job", "key", job_id).stdout.strip()
    url = f"{contract.client.url}/api/jobs/{job_id}/state"

    def report(body: Any, job_key: str = key) -> Any:
        return requests.post(url, params={"job_key": job_key}, json=body, timeout=30)

    assert report({"state": "running", "attempt": 1}).json() == {
        "state": "running",
        "accepted": True,
    }
    stale = report({"state": "finished", "attempt": 2, "exit_code": 9})
    assert stale.json() == {"state": "running", "accepted": False}
    done = {"state": "finished", "attempt": 1, "exit_code": 0, "metrics": {"wall_s": 1.5}}
    assert report(done).json() == {"state": "ok", "accepted": True}
    # The same report again, a different ending, and a late "running": all ignored.
    assert report(done).json() == {"state": "ok", "accepted": False}
    assert report({**done, "exit_code": 5}).json() == {"state": "ok", "accepted": False}
    assert report({"state": "running", "attempt": 1}).json() == {"state": "ok", "accepted": False}
    shown = contract.job(job_id)
    assert (shown["state"], shown["exit_code"], shown["wall_s"]) == ("ok", 0, 1.5)
    # Bad reports: JSON errors, nothing changed.
    assert report(done, job_key="0" * 64).status_code == 403
    assert (
        requests.post(url, data=b"{not json", params={"job_key": key}, timeout=30).status_code
        == 400
    )
    assert report({"state": "exploded", "attempt": 1}).status_code == 400
    assert report({"state": "finished", "attempt": 1}).status_code == 400  # no exit code
    assert report({"state": "finished", "attempt": "1", "exit_code": 0}).status_code == 400
    assert requests.post(url, json=done, timeout=30).status_code == 400  # no key at all
    bad_id = requests.post(
        f"{contract.client.url}/api/jobs/..%2Fetc/state", params={"job_key": key}, json=done
    )
    assert bad_id.status_code in (400, 404)
    assert contract.job(job_id)["state"] == "ok"
    # The process itself ends (its wrapper writes the result file); its late end, which
    # the daemon then notices, changes nothing either.
    result = contract.job_dir(job_id) / "result"
    assert eventually(lambda: "exit_code=" in (result.read_text() if result.exists() else ""))
    assert contract.job(job_id)["exit_code"] == 0


def test_slurm_controller_down__jobs_stay_queued_and_run_once_it_is_back(
    tmp_path: Path,
) -> None:
    """sbatch failing like a down slurmctld: the job stays queued, the outage is logged
    once, and claims retry with back-off until Slurm answers again."""
    require("slurm")
    bin_dir = tmp_path / "slurm-bin"
    bin_dir.mkdir()
    for name in ("squeue", "scontrol", "scancel", "sacct", "sinfo"):
        real = shutil.which(name)
        assert real is not None
        (bin_dir / name).symlink_to(real)
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(
        "#!/bin/sh\necho 'sbatch: error: Batch job submission failed: "
        "Unable to contact slurm controller (connect failure)' >&2\nexit 1\n"
    )
    sbatch.chmod(0o755)
    config = {
        "runners": {"slurm": {"enabled": True, "bin_dir": str(bin_dir), "poll_interval_s": 1.0}},
        "destinations": {"local": {}, "slurm": {"runner": "slurm", "memory_mb": 32}},
        "routing": {"default": "slurm"},
    }
    daemon = DaemonProcess(tmp_path / "data", config).start()
    try:
        client = daemon.client()
        client.add_script("behave", JOB_SCRIPTS / "behave.py")
        job_id = client.submit("behave", "")
        time.sleep(6)  # several claim rounds against the "down" controller
        status = client.get(f"/api/jobs/v1/{job_id}/status/").json()
        assert status == {"status": "queued", "is_complete": False}
        log = daemon.log_path.read_text()
        assert log.count("runner slurm is unavailable") == 1, log
        sbatch.unlink()
        real_sbatch = shutil.which("sbatch")
        assert real_sbatch is not None
        sbatch.symlink_to(real_sbatch)
        details = client.wait(job_id, timeout_s=90)
        assert details["status"] == "completed", details
        assert "runner slurm is available again" in daemon.log_path.read_text()
    finally:
        daemon.stop()


def _ending(job: dict[str, Any], daemon: DaemonProcess) -> str:
    """What a failed assertion on a job's end shows: the fields that say how it ended
    and the daemon's log lines about it (the job dict alone is cut off by pytest)."""
    fields = {k: job.get(k) for k in ("state", "exit_code", "reason", "attempt", "node")}
    log = daemon.log_path.read_text(errors="replace")
    lines = [line for line in log.splitlines() if job["id"] in line]
    return f"{fields}\n" + "\n".join(lines[-40:])
