"""What only DockerRunner does, against a real Docker engine (scripts/services docker):
confinement, limits, labels and mounts, images, OOM kills, engine stats, containers
and their removal.

What every runner does (exit codes, streams, outputs, hostile argv, walltime, cancel,
restart re-attachment, leftovers, garbage handles) is the contract suite's
(``tests/integration/test_runner_contract_suite.py``).

Every test uses its own node label and unique job ids, and removes the containers
carrying its node label afterwards, so nothing is left behind and no one else's
containers are touched.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from jobferry.errors import RunnerError, RunnerUnavailableError, SubmitError
from jobferry.runners.base import RunHandle, RunSpec, RunState, RunStatus
from jobferry.runners.docker import LABEL_DESTINATION, LABEL_NODE, DockerRunner
from jobferry.services.execution import _outcome
from jobferry.store.models import JobState
from tests.helpers import wait_for
from tests.services import BUSYBOX_IMAGE, PYTHON_IMAGE, require

pytestmark = [pytest.mark.timeout(90), pytest.mark.engine_independent]

SOCKET = "unix:///var/run/docker.sock"


@pytest.fixture
def node() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def engine() -> Iterator[Any]:
    require("docker")
    client = docker.DockerClient(base_url=SOCKET, timeout=30)
    yield client
    client.close()


@pytest.fixture
def runner(engine: Any, node: str) -> Iterator[DockerRunner]:
    runner = DockerRunner(base_url=SOCKET, node=node, kill_grace_s=1.0, timeout_s=30)
    yield runner
    runner.close()
    remove_node_containers(engine, node)


def remove_node_containers(engine: Any, node: str) -> None:
    for row in engine.api.containers(all=True, filters={"label": [f"{LABEL_NODE}={node}"]}):
        engine.api.remove_container(row["Id"], force=True)


def make_spec(tmp_path: Path, *argv: str, image: str = BUSYBOX_IMAGE, **kwargs: Any) -> RunSpec:
    """A spec laid out like the daemon's job directory: work/, stdout, stderr, result."""
    job_dir = tmp_path / "job"
    (job_dir / "work").mkdir(parents=True, exist_ok=True)
    kwargs.setdefault("job_id", f"t{uuid.uuid4().hex[:12]}")
    return RunSpec(
        argv=tuple(argv),
        workdir=str(job_dir / "work"),
        stdout_path=str(job_dir / "stdout"),
        stderr_path=str(job_dir / "stderr"),
        result_path=str(job_dir / "result"),
        job_dir=str(job_dir),
        image=image,
        destination="docker-test",
        **kwargs,
    )


def wait(runner: DockerRunner, handle: RunHandle, timeout: float = 60) -> RunStatus:
    async def main() -> RunStatus:
        return await asyncio.wait_for(runner.wait(handle), timeout)

    return asyncio.run(main())


def run_job(runner: DockerRunner, spec: RunSpec) -> RunStatus:
    return wait(runner, runner.submit(spec))


def exists(engine: Any, container_id: str) -> bool:
    try:
        engine.api.inspect_container(container_id)
        return True
    except docker.errors.NotFound:
        return False


# --- running jobs -----------------------------------------------------------------


def test_docker_runner__env_and_home_reach_the_job(runner: DockerRunner, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "sh", "-c", 'echo "$GREETING|$HOME"', env={"GREETING": "hi there"})

    run_job(runner, spec)

    assert Path(spec.stdout_path).read_text() == f"hi there|{spec.workdir}\n"


def test_docker_runner__runs_unprivileged_without_network(
    runner: DockerRunner, tmp_path: Path
) -> None:
    script = "id -u; id -g; ls /sys/class/net"
    script += "; grep -E '^(Cap(Eff|Prm|Bnd)|NoNewPrivs):' /proc/self/status"
    spec = make_spec(tmp_path, "sh", "-c", script)

    status = run_job(runner, spec)

    assert (status.state, status.exit_code) == (RunState.EXITED, 0)
    lines = Path(spec.stdout_path).read_text().split("\n")
    assert lines[0] != "0" and lines[1] != "0"
    uid, gid = ("65534", "65534") if os.geteuid() == 0 else (str(os.geteuid()), str(os.getegid()))
    assert lines[:3] == [uid, gid, "lo"]
    fields = dict(line.split(":\t") for line in lines[3:] if line)
    assert fields["CapEff"] == fields["CapPrm"] == fields["CapBnd"] == "0000000000000000"
    assert fields["NoNewPrivs"] == "1"


def test_docker_runner__configured_user_owns_the_job_directory(
    engine: Any, node: str, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("only a root daemon hands the job directory to another user")
    runner = DockerRunner(base_url=SOCKET, node=node, user="4321:4322")
    spec = make_spec(tmp_path, "sh", "-c", "id -u; id -g; echo x > out.txt")
    try:
        status = run_job(runner, spec)
    finally:
        runner.close()
        remove_node_containers(engine, node)

    assert (status.state, status.exit_code) == (RunState.EXITED, 0)
    assert Path(spec.stdout_path).read_text() == "4321\n4322\n"
    out = Path(spec.workdir) / "out.txt"
    assert (out.stat().st_uid, out.stat().st_gid) == (4321, 4322)


def test_docker_runner__network_destination_uses_host_network(
    runner: DockerRunner, engine: Any, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path, "true", network=True)

    handle = runner.submit(spec)
    wait(runner, handle)

    host_config = engine.api.inspect_container(handle.external_id)["HostConfig"]
    assert host_config["NetworkMode"] == "host"


def test_docker_runner__container_carries_limits_labels_and_name(
    runner: DockerRunner, engine: Any, node: str, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path, "true", cores=2, memory_mb=128, attempt=3)

    handle = runner.submit(spec)
    wait(runner, handle)

    attrs = engine.api.inspect_container(handle.external_id)
    host = attrs["HostConfig"]
    assert attrs["Name"] == f"/jobferry-{spec.job_id}-3"
    assert attrs["Config"]["Labels"] == {
        "jobferry.job_id": spec.job_id,
        "jobferry.attempt": "3",
        "jobferry.node": node,
        LABEL_DESTINATION: "docker-test",
    }
    assert (host["NanoCpus"], host["Memory"]) == (2 * 10**9, 128 << 20)
    assert host["MemorySwap"] == 128 << 20
    assert host["PidsLimit"] > 0 and host["Privileged"] is False
    assert host["CapDrop"] == ["ALL"] and host["SecurityOpt"] == ["no-new-privileges"]
    assert host["NetworkMode"] == "none"
    assert [(m["Source"], m["Destination"]) for m in attrs["Mounts"]] == [(spec.job_dir,) * 2]


def test_docker_runner__remote_staging_mounts_nothing_of_the_daemon(
    runner: DockerRunner, engine: Any, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path, "sh", "-c", "pwd", staging="remote", remote_dir="/tmp/jf-remote")

    handle = runner.submit(spec)
    status = wait(runner, handle)

    attrs = engine.api.inspect_container(handle.external_id)
    assert attrs["Mounts"] == [] and not attrs["HostConfig"]["Binds"]
    assert attrs["Config"]["WorkingDir"] in ("", "/")
    # Whatever the wrapper did in remote_dir stays in the container: results come back
    # over HTTP (the wrapper's job), never through the daemon's disk.
    assert status.is_final
    assert sorted(p.name for p in Path(spec.job_dir).iterdir()) == ["work"]


# --- ending jobs ------------------------------------------------------------------


def test_docker_runner__cancel_kills_and_removes_the_container(
    runner: DockerRunner, engine: Any, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path, "sh", "-c", "touch started; exec sleep 60")
    handle = runner.submit(spec)
    wait_for("the job to start", (Path(spec.workdir) / "started").exists)

    started = time.monotonic()
    runner.cancel(handle)
    took = time.monotonic() - started

    assert took < 10
    assert not exists(engine, handle.external_id)
    status = wait(runner, handle)
    assert (status.state, status.reason) == (RunState.KILLED, "cancelled")
    assert _outcome(status, cancelled=False)[0] is JobState.DELETED
    # The job got SIGTERM (the wrapper recorded it), not only the SIGKILL after the grace.
    assert status.exit_code == 143


def test_docker_runner__oom_kill_ends_with_out_of_memory_reason(
    runner: DockerRunner, tmp_path: Path
) -> None:
    hog = "b = b'x' * (200 << 20); print(len(b))"
    spec = make_spec(tmp_path, "python3", "-c", hog, image=PYTHON_IMAGE, memory_mb=64)

    status = run_job(runner, spec)

    assert (status.state, status.reason) == (RunState.KILLED, "out of memory (limit 64 MB)")
    assert _outcome(status, cancelled=False) == (JobState.ERROR, "out of memory (limit 64 MB)")
    assert Path(spec.stdout_path).read_text() == ""


def test_docker_runner__wait_reports_peak_memory_from_engine_stats(
    runner: DockerRunner, tmp_path: Path
) -> None:
    script = "import time; b = b'x' * (40 << 20); time.sleep(2); print(len(b))"
    spec = make_spec(tmp_path, "python3", "-c", script, image=PYTHON_IMAGE, memory_mb=256)

    status = run_job(runner, spec)

    assert (status.state, status.exit_code) == (RunState.EXITED, 0)
    assert status.metrics.peak_rss_kb is not None
    assert 40 << 10 <= status.metrics.peak_rss_kb <= 256 << 10
    assert status.metrics.wall_s is not None and 2 <= status.metrics.wall_s < 30
    assert status.metrics.cpu_user_s is not None and status.metrics.cpu_sys_s is not None


# --- submit failures --------------------------------------------------------------


def test_docker_runner__missing_image_is_a_submit_error_and_leaves_nothing(
    runner: DockerRunner, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path, "true", image="jobferry-test/no-such-image:0")

    with pytest.raises(SubmitError, match="pulling is disabled \\(runners.docker.pull\\)"):
        runner.submit(spec)

    assert runner.containers() == []


def test_docker_runner__pull_failure_is_a_clear_submit_error(
    engine: Any, node: str, tmp_path: Path
) -> None:
    runner = DockerRunner(base_url=SOCKET, node=node, pull=True)
    spec = make_spec(tmp_path, "true", image="127.0.0.1:9/jobferry-test/no-such-image:0")
    try:
        with pytest.raises(SubmitError, match="cannot pull image 127.0.0.1:9/jobferry-test"):
            runner.submit(spec)
        assert runner.containers() == []
    finally:
        runner.close()
        remove_node_containers(engine, node)


def test_docker_runner__unreachable_engine_is_runner_unavailable(node: str, tmp_path: Path) -> None:
    require("docker")
    runner = DockerRunner(base_url="unix:///nonexistent/docker.sock", node=node)
    spec = make_spec(tmp_path, "true")
    handle = RunHandle("docker", "0" * 64, time.time(), {"name": "x", "result_path": "/x"})
    try:
        with pytest.raises(RunnerUnavailableError, match="unreachable"):
            runner.submit(spec)
        with pytest.raises(RunnerUnavailableError):
            runner.poll(handle)
        with pytest.raises(RunnerUnavailableError):
            runner.containers()
    finally:
        runner.close()


def test_docker_runner__missing_workdir_is_a_submit_error(
    runner: DockerRunner, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path, "true")
    Path(spec.workdir).rmdir()

    with pytest.raises(SubmitError, match="does not exist"):
        runner.submit(spec)
    assert runner.containers() == []


# --- re-attaching -----------------------------------------------------------------


def test_docker_runner__adopt_rejects_malformed_handles(
    runner: DockerRunner, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path, "true")
    with pytest.raises(RunnerError):
        runner.adopt(RunHandle("docker", "abc", 0.0, {}), spec)


def test_docker_runner__container_gone_without_result_is_lost(
    runner: DockerRunner, engine: Any, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path, "sleep", "60")
    handle = runner.submit(spec)
    engine.api.remove_container(handle.external_id, force=True)

    runner.adopt(handle, spec)  # not an error: poll says what happened
    status = runner.poll(handle)

    assert status.state is RunState.LOST and status.reason
    assert _outcome(status, cancelled=False)[0] is JobState.ERROR


def test_docker_runner__containers_lists_by_label_and_cleanup_removes(
    runner: DockerRunner, engine: Any, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path, "true", attempt=2)
    handle = runner.submit(spec)
    wait(runner, handle)

    assert runner.containers() == [(spec.job_id, 2, handle.external_id)]
    runner.cleanup(handle)
    runner.cleanup(handle)  # idempotent

    assert runner.containers() == []
    assert not exists(engine, handle.external_id)
    # The finished job's status survives the container through its result file.
    assert runner.poll(handle).state is RunState.EXITED


def test_docker_runner__find_removes_a_never_started_container(
    runner: DockerRunner, engine: Any, node: str, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path, "true")
    labels = {"jobferry.job_id": spec.job_id, "jobferry.attempt": "1", "jobferry.node": node}
    created = engine.containers.create(BUSYBOX_IMAGE, ["true"], labels=labels)

    assert runner.find(spec) is None

    assert not exists(engine, created.id)


def test_docker_runner__find_tells_attempts_apart(runner: DockerRunner, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "true")
    handle = runner.submit(spec)
    wait(runner, handle)

    found = runner.find(spec)
    assert found is not None and found.external_id == handle.external_id
    assert runner.find(make_spec(tmp_path, "true", job_id=spec.job_id, attempt=2)) is None
