"""A destination's ``container:`` (the engine TES executors run with on its execution
host): what the schema accepts, which command line and runner a task gets from it,
and which destinations are refused (pure: no store, no daemon)."""

from __future__ import annotations

from typing import Any

import pytest

from jobferry.config import Config, parse_config
from jobferry.errors import ConfigError, ValidationError
from jobferry.services.tes_plan import TES_TASK_PROGRAM, container_command, job_runner, runs_task

IMAGE = "jobferry-test/python:1"


def config(**destinations: dict[str, Any]) -> Config:
    return parse_config(
        {
            "runners": {"docker": {"enabled": True}, "slurm": {"enabled": True}},
            "destinations": {"local": {"runner": "local"}, **destinations},
        }
    )


def command_of(cfg: Config, name: str) -> list[str]:
    return container_command(cfg, name, cfg.destinations[name])


def test_container__on_a_slurm_destination_gives_its_runtime_and_the_slurm_runner() -> None:
    cfg = config(
        hpc={"runner": "slurm", "container": {"runtime": "docker"}},
        pod={"runner": "slurm", "container": {"runtime": "podman", "command": ["/opt/podman"]}},
    )
    assert command_of(cfg, "hpc") == ["docker"]
    assert command_of(cfg, "pod") == ["/opt/podman"]
    assert job_runner(cfg.destinations["hpc"]) == "slurm"


def test_container__on_a_local_destination_runs_the_task_program_locally() -> None:
    cfg = config(here={"runner": "local", "container": {"runtime": "podman"}})
    assert command_of(cfg, "here") == ["podman"]
    assert job_runner(cfg.destinations["here"]) == "local"


@pytest.mark.parametrize(
    ("destination", "message"),
    [
        ({"runner": "slurm", "container": {"runtime": "lxc"}}, "container.runtime"),
        ({"runner": "slurm", "container": {"runtime": "docker", "command": []}}, "non-empty"),
        ({"runner": "slurm", "container": {"runtime": "docker", "image": "x"}}, "image"),
        ({"runner": "slurm", "container": {}}, "runtime"),
        (
            {"runner": "docker", "image": IMAGE, "container": {"runtime": "docker"}},
            "container: for slurm or local",
        ),
    ],
)
def test_container__is_strict(destination: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config(bad=destination)


@pytest.mark.parametrize(
    ("destination", "why"),
    [
        ({"runner": "slurm"}, "slurm destination without container"),
        ({"runner": "local", "cores": 2}, "local destination without container"),
        (
            {"runner": "slurm", "staging": "remote", "container": {"runtime": "docker"}},
            "stages remotely",
        ),
    ],
)
def test_container_command__refuses_destinations_that_cannot_run_containers(
    destination: dict[str, Any], why: str
) -> None:
    cfg = config(bad=destination)
    with pytest.raises(ValidationError, match=f"cannot run containers: .*{why}"):
        command_of(cfg, "bad")


def test_runs_task__names_jobs_that_run_the_task_program_only() -> None:
    assert runs_task(["/usr/bin/python3", str(TES_TASK_PROGRAM), "/d/tes/plan-1.json"])
    assert not runs_task(["/usr/bin/python3", "/data/scripts/tes_task.py"])
    assert not runs_task(["/bin/true"])
