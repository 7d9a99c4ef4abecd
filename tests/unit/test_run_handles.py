"""Typed handle payloads: the stored JSON stays what earlier versions wrote and read.

A job that survives a daemon upgrade is re-attached from the handle the old daemon
stored, so each runner's payload must load the old JSON as it is, and write the
same keys back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from jobferry.errors import RunnerError
from jobferry.runners.base import HandlePayload, RunHandle, RunSpec, RunState
from jobferry.runners.docker import DockerPayload
from jobferry.runners.fake import FakePayload, FakeRunner
from jobferry.runners.local import LocalPayload, LocalRunner
from tests.helpers import DEADLINE_S, wait_for

# Handles exactly as the store's handle column held them before payloads were typed
# (each runner built its ``data`` dict by hand).
OLD_LOCAL = (
    '{"data": {"create_time": 1764680000.12, "pid": 4242, "result_path": "/j/result",'
    ' "start_ticks": 987654, "stderr_path": "/j/stderr", "stdout_path": "/j/stdout",'
    ' "walltime_s": 60}, "external_id": "4242@1764680000.12", "runner": "local",'
    ' "started_at": 1764680000.1}'
)
OLD_DOCKER = (
    '{"data": {"memory_mb": 512, "name": "jobferry-abc-1", "result_path": "/j/result",'
    ' "stderr_path": "/j/stderr", "stdout_path": "/j/stdout", "user": "1000:1000",'
    ' "walltime_s": null}, "external_id": "' + "c0ffee" * 10 + 'abcd", "runner": "docker",'
    ' "started_at": 1764680000.5}'
)
OLD_SLURM = (
    '{"data": {"job_name": "jobferry-abc-1", "node": "n1", "result_path": "/j/result",'
    ' "script_path": "/j/slurm.sh", "staging": "shared", "stderr_path": "/j/stderr",'
    ' "stdout_path": "/j/stdout", "submitted_at": 1764680001.0, "walltime_s": 90},'
    ' "external_id": "4711", "runner": "slurm", "started_at": 1764680001.0}'
)
OLD_FAKE = (
    '{"data": {"job_id": "abc"}, "external_id": "fake-1", "runner": "fake",'
    ' "started_at": 1764680000.0}'
)


def test_old_local_handle__loads_into_the_typed_payload() -> None:
    handle = RunHandle.loads(OLD_LOCAL)

    assert LocalPayload.of(handle) == LocalPayload(
        pid=4242,
        create_time=1764680000.12,
        result_path="/j/result",
        start_ticks=987654,
        stdout_path="/j/stdout",
        stderr_path="/j/stderr",
        walltime_s=60.0,
    )


def test_old_docker_handle__loads_into_the_typed_payload() -> None:
    payload = DockerPayload.of(RunHandle.loads(OLD_DOCKER))

    assert payload == DockerPayload(
        name="jobferry-abc-1",
        result_path="/j/result",
        stdout_path="/j/stdout",
        stderr_path="/j/stderr",
        walltime_s=None,
        memory_mb=512,
        user="1000:1000",
    )


def test_old_slurm_handle__loads_into_the_typed_payload() -> None:
    from jobferry.runners.slurm import SlurmPayload

    payload = SlurmPayload.of(RunHandle.loads(OLD_SLURM))

    assert payload.result_path == "/j/result"
    assert payload.job_name == "jobferry-abc-1"
    assert payload.walltime_s == 90.0
    assert payload.script_path == "/j/slurm.sh"
    assert payload.submitted_at == 1764680001.0


def test_old_fake_handle__loads_into_the_typed_payload() -> None:
    assert FakePayload.of(RunHandle.loads(OLD_FAKE)) == FakePayload(job_id="abc")


@pytest.mark.parametrize("stored", [OLD_LOCAL, OLD_DOCKER, OLD_SLURM, OLD_FAKE])
def test_typed_payload__writes_back_the_same_json(stored: str) -> None:
    from jobferry.runners.slurm import SlurmPayload

    kinds: dict[str, type[HandlePayload]] = {
        "local": LocalPayload,
        "docker": DockerPayload,
        "slurm": SlurmPayload,
        "fake": FakePayload,
    }
    old = RunHandle.loads(stored)
    payload = kinds[old.runner].of(old)

    again = RunHandle.of(old.runner, old.external_id, old.started_at, payload)

    assert json.loads(again.dumps()) == json.loads(stored)


def test_minimal_old_handles__take_the_defaults() -> None:
    """Handles written by hand (and by the oldest versions) hold only what is required."""
    from jobferry.runners.slurm import SlurmPayload

    slurm = SlurmPayload.of(RunHandle("slurm", "12345", 1.0, {"result_path": "/r"}))
    docker = DockerPayload.of(RunHandle("docker", "c1", 1.0, {"name": "n", "result_path": "/r"}))
    local = LocalPayload.of(
        RunHandle("local", "1@2", 1.0, {"pid": "1", "create_time": 2, "result_path": "/r"})
    )

    assert (slurm.walltime_s, slurm.script_path, slurm.job_name) == (None, None, "")
    assert (docker.user, docker.memory_mb) == ("65534:65534", None)
    assert (local.pid, local.create_time, local.start_ticks) == (1, 2.0, None)
    assert FakePayload.of(RunHandle("fake", "fake-9", 1.0)).job_id == ""


@pytest.mark.parametrize(
    ("data", "what"),
    [
        ({"create_time": 2.0, "result_path": "/r"}, "missing pid"),
        ({"pid": None, "create_time": 2.0, "result_path": "/r"}, "null pid"),
        ({"pid": "x", "create_time": 2.0, "result_path": "/r"}, "pid not a number"),
        ({"pid": 1, "create_time": 2.0, "result_path": "/r", "walltime_s": "long"}, "walltime"),
    ],
)
def test_malformed_handle__is_a_runner_error_naming_the_runner(
    data: dict[str, object], what: str
) -> None:
    with pytest.raises(RunnerError, match="malformed local run handle '1@2'"):
        LocalPayload.of(RunHandle("local", "1@2", 1.0, data))


def test_payload_fields__must_be_plain_scalars() -> None:
    @dataclass(frozen=True)
    class Listy(HandlePayload):
        runner: ClassVar[str] = "listy"
        names: list[str]

    with pytest.raises(TypeError, match="str, int or float only"):
        Listy.of(RunHandle("listy", "1", 1.0, {"names": []}))


def test_old_local_handle__of_a_running_job_is_re_attached(tmp_path: Path) -> None:
    """A job started by this version, stored as the previous version wrote its handle,
    is followed and stopped by a fresh runner (a daemon after an upgrade)."""
    (tmp_path / "work").mkdir()
    spec = RunSpec(
        job_id="upgraded",
        argv=("sleep", "60"),
        workdir=str(tmp_path / "work"),
        stdout_path=str(tmp_path / "stdout"),
        stderr_path=str(tmp_path / "stderr"),
        result_path=str(tmp_path / "result"),
    )
    first = LocalRunner(kill_grace_s=1.0)
    started = first.submit(spec)
    new = LocalPayload.of(started)
    old_data = {
        "pid": new.pid,
        "create_time": new.create_time,
        "start_ticks": new.start_ticks,
        "result_path": spec.result_path,
        "stdout_path": spec.stdout_path,
        "stderr_path": spec.stderr_path,
        "walltime_s": None,
    }
    stored = json.dumps(
        {
            "runner": "local",
            "external_id": started.external_id,
            "started_at": started.started_at,
            "data": old_data,
        }
    )
    try:
        upgraded = LocalRunner(kill_grace_s=1.0)
        handle = RunHandle.loads(stored)
        upgraded.adopt(handle, spec)
        assert upgraded.poll(handle).state is RunState.RUNNING

        upgraded.cancel(handle, "after the upgrade")

        wait_for("the job's end", lambda: first.poll(started).is_final, DEADLINE_S)
        status = upgraded.poll(handle)
        assert (status.state, status.reason) == (RunState.KILLED, "after the upgrade")
    finally:
        if not first.poll(started).is_final:  # (reaps our child once it has ended)
            first.cancel(started)
            first.poll(started)


def test_fake_runner__names_jobs_by_the_typed_payload() -> None:
    runner = FakeRunner()
    spec = RunSpec("j1", ("true",), "/w", "/o", "/e", "/r")

    handle = runner.submit(spec)

    assert FakePayload.of(handle).job_id == "j1"
    assert runner.poll(handle).state is RunState.EXITED
    assert ("poll", "j1") in runner.calls
