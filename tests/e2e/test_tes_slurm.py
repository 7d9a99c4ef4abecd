"""TES tasks on a Slurm destination: the batch job runs the task program, whose
executors are containers of the destination's runtime on the execution host.

One daemon serves the module with a Docker destination (``dock``: the task
program through the local runner) and a Slurm destination with ``container:
{runtime: docker}`` (``cluster``, partition ``debug``). The same task on both must
give the same outputs and the same executor logs; a cancel on Slurm must reach the
task program (scancel's SIGTERM) so that it removes its container. Destinations
that cannot run containers (a plain local one, a Slurm one without ``container``,
a Slurm one that stages remotely) are refused at create.

Needs the real Docker engine and Slurm: skipped without them on a developer's
machine, failed under ``CI=true``.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.tes_support import ENDED, TesHttp
from tests.helpers import DaemonProcess, eventually
from tests.services import PYTHON_IMAGE, require

# What these check (staging, runners) does not depend on the store engine: SQLite only.
pytestmark = [pytest.mark.e2e, pytest.mark.engine_independent, pytest.mark.timeout(300)]

INPUT = "the quick brown fox\njumps over the lazy dog\n"


@dataclass
class Setup(TesHttp):
    files: Path


def containers(task_id: str) -> list[str]:
    """The task's containers, running or not (named jobferry-<id>-<attempt>-<index>)."""
    found = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"name=^jobferry-{task_id}-"],
        capture_output=True,
        text=True,
        check=True,
    )
    return found.stdout.split()


def job_of(setup: Setup, task_id: str) -> dict[str, Any]:
    """The task's job as the CLI shows it (its runner, its Slurm job id)."""
    return dict(json.loads(setup.daemon.cli("job", "show", task_id, "--json").stdout))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    require("docker")
    require("slurm")
    base = tmp_path_factory.mktemp("tes-slurm")
    files = base / "files"
    files.mkdir()
    files.chmod(0o777)
    slurm = {"runner": "slurm", "partition": "debug"}
    config = {
        "node": {"cores": 8},
        "runners": {
            "local": {"slots": 8},
            "docker": {"enabled": True, "slots": 8},
            "slurm": {"enabled": True, "poll_interval_s": 1.0},
        },
        "destinations": {
            "local": {"runner": "local"},
            "dock": {"runner": "docker", "image": PYTHON_IMAGE},
            "cluster": {**slurm, "container": {"runtime": "docker"}},
            "cluster-plain": slurm,
            "cluster-remote": {
                **slurm,
                "container": {"runtime": "docker"},
                "staging": "remote",
                "scratch_dir": "/tmp/jf-scratch",
            },
        },
        "tes": {"enabled": True, "destination": "dock", "file_roots": [str(files)]},
    }
    setup = Setup(DaemonProcess(base / "data", config).start(), files)
    try:
        yield setup
    finally:
        setup.daemon.stop()
        # Only this module's containers: other modules may be running theirs.
        for task_id in setup.created:
            for container in containers(task_id):
                subprocess.run(["docker", "rm", "-f", container], capture_output=True)


def two_step_task(destination: str, out: Path) -> dict[str, Any]:
    """Two executors over a content input: the first fails (ignored) after writing a
    file and its stdout to a file, the second reads the file; two file:// outputs."""
    return {
        "name": f"two-steps-{destination}",
        "inputs": [{"path": "/data/in.txt", "content": INPUT}],
        "outputs": [
            {"path": "/data/out/upper.txt", "url": f"file://{out}/upper.txt"},
            {"path": "/data/out/first.log", "url": f"file://{out}/first.log"},
        ],
        "executors": [
            {
                "image": PYTHON_IMAGE,
                "command": [
                    "sh",
                    "-c",
                    "tr a-z A-Z < /data/in.txt > /data/out/upper.txt; echo wrote; exit 3",
                ],
                "stdout": "/data/out/first.log",
                "ignore_error": True,
            },
            {
                "image": PYTHON_IMAGE,
                "command": ["sh", "-c", "wc -l < /data/out/upper.txt; echo note >&2"],
                "workdir": "/data",
            },
        ],
        "resources": {
            "cpu_cores": 1,
            "ram_gb": 0.25,
            "backend_parameters": {"destination": destination},
        },
    }


def test_same_task__on_docker_and_on_slurm__gives_the_same_outputs_and_executor_logs(
    setup: Setup,
) -> None:
    results: dict[str, tuple[dict[str, bytes], list[Any], list[Any]]] = {}
    for destination in ("dock", "cluster"):
        out = setup.files / destination
        out.mkdir()
        out.chmod(0o777)
        task_id = setup.create(two_step_task(destination, out))
        task = setup.wait_state(task_id, ENDED)
        assert task["state"] == "COMPLETE", task
        attempt = task["logs"][0]
        assert attempt["metadata"]["destination"] == destination
        logs = [(x["exit_code"], x["stdout"], x["stderr"]) for x in attempt["logs"]]
        delivered = sorted((o["path"], o["size_bytes"]) for o in attempt["outputs"])
        files = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
        results[destination] = (files, logs, delivered)
        assert not containers(task_id)
        job = job_of(setup, task_id)
        assert job["runner"] == ("slurm" if destination == "cluster" else "local")
        assert attempt["metadata"]["node"] == job["node"]  # the jobferry node that ran it
        if destination == "cluster":
            assert job["external_id"]  # a Slurm job id: the batch job ran the task program
            # The host the task program ran on: Slurm's compute host.
            hosts = subprocess.run(["sinfo", "-h", "-o", "%n"], capture_output=True, text=True)
            assert attempt["metadata"]["host"] in hosts.stdout.split()
        else:
            assert attempt["metadata"]["host"] == os.uname().nodename

    files, logs, delivered = results["cluster"]
    assert results["dock"] == results["cluster"]
    assert files == {"first.log": b"wrote\n", "upper.txt": INPUT.upper().encode()}
    # The first executor's stdout went to its file, and its tail to its log.
    assert logs == [(3, "wrote\n", ""), (0, "2\n", "note\n")]
    assert delivered == [("/data/out/first.log", "6"), ("/data/out/upper.txt", str(len(INPUT)))]


def test_cancel__of_a_running_task_on_slurm__ends_canceled_and_leaves_no_container(
    setup: Setup,
) -> None:
    task_id = setup.create(
        {
            "name": "sleeper",
            "executors": [{"image": PYTHON_IMAGE, "command": ["sleep", "300"]}],
            "resources": {"ram_gb": 0.25, "backend_parameters": {"destination": "cluster"}},
        }
    )
    assert eventually(lambda: containers(task_id)), setup.get(task_id)
    assert setup.get(task_id, "MINIMAL")["state"] == "RUNNING"
    # Slurm allocated the task's memory (not the whole node's); the container has it.
    slurm_job = job_of(setup, task_id)["external_id"]
    shown = subprocess.run(["scontrol", "show", "job", slurm_job], capture_output=True, text=True)
    assert "mem=256M" in shown.stdout, shown.stdout
    assert containers(task_id), (setup.get(task_id), job_of(setup, task_id))
    limit = subprocess.run(
        ["docker", "inspect", "-f", "{{.HostConfig.Memory}}", containers(task_id)[0]],
        capture_output=True,
        text=True,
    )
    assert limit.stdout.strip() == str(256 << 20)

    response = setup.call("POST", f"/tasks/{task_id}:cancel")
    assert response.status_code == 200, response.text
    task = setup.wait_state(task_id, ENDED)

    assert task["state"] == "CANCELED"
    assert not containers(task_id)
    # The task program saw scancel's SIGTERM (it was not just killed): it says so,
    # and the executor's log was recorded as it stopped.
    attempt = task["logs"][0]
    assert "canceled" in attempt["system_logs"]
    assert [log["exit_code"] for log in attempt["logs"]] == [137]  # killed by its removal
    assert job_of(setup, task_id)["runner"] == "slurm"


@pytest.mark.parametrize(
    ("destination", "why"),
    [
        ("local", "local destination without container"),
        ("cluster-plain", "slurm destination without container"),
        ("cluster-remote", "stages remotely"),
    ],
)
def test_create__on_a_destination_that_cannot_run_containers__is_refused(
    setup: Setup, destination: str, why: str
) -> None:
    response = setup.call(
        "POST",
        "/tasks",
        json={
            "executors": [{"image": PYTHON_IMAGE, "command": ["true"]}],
            "resources": {"backend_parameters": {"destination": destination}},
        },
    )
    assert response.status_code == 400, response.text
    assert "cannot run containers" in response.text and why in response.text


def test_executor_error__on_slurm__ends_the_task_and_skips_the_next_executor(
    setup: Setup,
) -> None:
    failing = {"image": PYTHON_IMAGE, "command": ["sh", "-c", "echo failing >&2; exit 7"]}
    never = {"image": PYTHON_IMAGE, "command": ["echo", "never"]}
    task_id = setup.create(
        {
            "executors": [failing, never],
            "resources": {"backend_parameters": {"destination": "cluster"}},
        }
    )
    task = setup.wait_state(task_id, ENDED)

    assert task["state"] == "EXECUTOR_ERROR", task
    logs = task["logs"][0]["logs"]
    assert [(log["exit_code"], log["stderr"]) for log in logs] == [(7, "failing\n")]
    assert not containers(task_id)
