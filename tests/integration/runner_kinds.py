"""The runners the contract suite holds to one contract, and how to drive each.

A ``Kind`` knows how to make its runner (again, from the same configuration: a
restarted daemon), how to lay out a job's directory for it, how to make a job
behave a given way (``Exits``, ``Blocks``) and what to remove at the end of a test.
Everything else in ``test_runner_contract_suite.py`` goes through
``jobferry.runners.base.Runner`` only.

The fake runner runs no program: an ``Exits`` job is scripted as its outcome, a
``Blocks`` job is held running and ended through its ``FakeJobs``, as a process
ends outside any one daemon.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker  # type: ignore[import-untyped]

from jobferry.errors import JobferryError
from jobferry.runners.base import RunHandle, Runner, RunSpec, RunState, RunStatus
from jobferry.runners.docker import LABEL_NODE, DockerRunner
from jobferry.runners.fake import FakeJobs, FakeRunner
from jobferry.runners.local import LocalRunner
from jobferry.runners.slurm import SlurmRunner
from tests.helpers import DEADLINE_S
from tests.services import BUSYBOX_IMAGE, require

#: Every runner under contract, in the order the suite runs them.
NAMES = ("local", "docker", "slurm", "fake")
SOCKET = "unix:///var/run/docker.sock"
#: The log cap of the suite's jobs, bytes (1 MiB: jobs.max_log_mb = 1).
LOG_CAP = 1 << 20


@dataclass(frozen=True)
class Exits:
    """A job that writes *stdout* and *stderr* and exits with *code* at once."""

    code: int
    stdout: str = ""
    stderr: str = ""


@dataclass(frozen=True)
class Blocks:
    """A job that says it started, then runs until ``Kind.release`` (or a kill) and
    exits with *code*."""

    code: int = 0


#: Blocks: writes ``started`` in its work dir, waits for ``go`` there, exits with $1.
_BLOCKS = 'echo started > started; while [ ! -e go ]; do sleep 0.1; done; exit "$1"'
#: Exits: $1 to stdout, $2 to stderr, exit $3.
_EXITS = 'printf "%s" "$1"; printf "%s" "$2" >&2; exit "$3"'


def wait(runner: Runner, handle: RunHandle, timeout_s: float = DEADLINE_S) -> RunStatus:
    """``runner.wait(handle)`` on a fresh event loop, failing after *timeout_s*."""

    async def main() -> RunStatus:
        return await asyncio.wait_for(runner.wait(handle), timeout_s)

    return asyncio.run(main())


class Kind(abc.ABC):
    """One runner under contract (subclasses: one per runner)."""

    name = "base"
    #: False for the fake runner: it runs no program, so no argv, output or file.
    runs_programs = True

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.made: list[Runner] = []
        #: (runner, handle) of every job submitted through a runner this kind made.
        self.submitted: list[tuple[Runner, RunHandle]] = []

    def _new(self) -> Runner:
        raise NotImplementedError

    def make(self) -> Runner:
        """A new runner from this kind's configuration (a restarted daemon's, if the
        test made one before); every job it submits is stopped at teardown."""
        runner = self._new()
        submit = runner.submit

        def recording_submit(spec: RunSpec) -> RunHandle:
            handle = submit(spec)
            self.submitted.append((runner, handle))
            return handle

        runner.submit = recording_submit  # type: ignore[method-assign]
        self.made.append(runner)
        return runner

    def spec(self, argv: tuple[str, ...] = ("true",), **kwargs: Any) -> RunSpec:
        """A spec laid out like the daemon's job directory: work/, stdout, stderr, result."""
        job_id = f"c{uuid.uuid4().hex[:12]}"
        job_dir = self.tmp_path / job_id
        (job_dir / "work").mkdir(parents=True)
        kwargs.setdefault("job_dir", str(job_dir))
        # As the daemon does (jobs.max_log_mb), every job's logs go through the cap.
        kwargs.setdefault("max_log_bytes", LOG_CAP)
        return RunSpec(
            job_id=job_id,
            argv=argv,
            workdir=str(job_dir / "work"),
            stdout_path=str(job_dir / "stdout"),
            stderr_path=str(job_dir / "stderr"),
            result_path=str(job_dir / "result"),
            **kwargs,
        )

    def job(self, behaviour: Exits | Blocks, **kwargs: Any) -> RunSpec:
        """A spec of a job that behaves as *behaviour* says."""
        if isinstance(behaviour, Blocks):
            return self.spec(("/bin/sh", "-c", _BLOCKS, "blocks", str(behaviour.code)), **kwargs)
        script = (_EXITS, "exits", behaviour.stdout, behaviour.stderr, str(behaviour.code))
        return self.spec(("/bin/sh", "-c", *script), **kwargs)

    @abc.abstractmethod
    def unusable(self) -> Runner:
        """A runner of this kind configured so that it cannot run jobs (its engine,
        controller or shell is not there)."""

    def started(self, spec: RunSpec) -> bool:
        """True once a ``Blocks`` job's program runs."""
        return os.path.exists(os.path.join(spec.workdir, "started"))

    def release(self, spec: RunSpec, handle: RunHandle) -> None:
        """Let a ``Blocks`` job end by itself."""
        Path(spec.workdir, "go").touch()

    def close(self) -> None:
        """Stop and release every job submitted here, then what the runner left behind."""
        for runner, handle in reversed(self.submitted):
            with contextlib.suppress(JobferryError, TimeoutError):
                if not runner.poll(handle).is_final:
                    runner.cancel(handle, "test over")
                wait(runner, handle)  # reaps a local job's wrapper
                runner.cleanup(handle)
        for runner in self.made:
            runner.close()


class LocalKind(Kind):
    name = "local"

    def _new(self) -> Runner:
        return LocalRunner(kill_grace_s=1.0)

    def unusable(self) -> Runner:
        return LocalRunner(python=str(self.tmp_path / "no-such-python"))


class DockerKind(Kind):
    """Containers of a node label of this test's own, all removed at teardown."""

    name = "docker"

    def __init__(self, tmp_path: Path) -> None:
        require("docker")
        super().__init__(tmp_path)
        self.node = f"contract-{uuid.uuid4().hex[:10]}"

    def _new(self) -> Runner:
        return DockerRunner(base_url=SOCKET, node=self.node, kill_grace_s=1.0, timeout_s=30)

    def unusable(self) -> Runner:
        runner = DockerRunner(base_url=f"unix://{self.tmp_path}/no-docker.sock", node=self.node)
        self.made.append(runner)
        return runner

    def spec(self, argv: tuple[str, ...] = ("true",), **kwargs: Any) -> RunSpec:
        kwargs.setdefault("image", BUSYBOX_IMAGE)
        kwargs.setdefault("destination", "docker-test")
        return super().spec(argv, **kwargs)

    def close(self) -> None:
        try:
            super().close()
        finally:
            engine = docker.DockerClient(base_url=SOCKET, timeout=30)
            try:
                label = f"{LABEL_NODE}={self.node}"
                for row in engine.api.containers(all=True, filters={"label": [label]}):
                    engine.api.remove_container(row["Id"], force=True)
            finally:
                engine.close()


class SlurmKind(Kind):
    """Batch jobs on the test cluster, every one scancelled (by id) at teardown."""

    name = "slurm"

    def __init__(self, tmp_path: Path) -> None:
        require("slurm")
        super().__init__(tmp_path)

    def _new(self) -> Runner:
        return SlurmRunner(poll_interval_s=0.5, command_timeout_s=20, node="contract")

    def unusable(self) -> Runner:
        empty = self.tmp_path / "no-slurm-bin"  # no scontrol there
        empty.mkdir(exist_ok=True)
        return SlurmRunner(bin_dir=str(empty), node="contract")

    def spec(self, argv: tuple[str, ...] = ("true",), **kwargs: Any) -> RunSpec:
        kwargs.setdefault("memory_mb", 32)  # else a job takes the node's whole memory
        kwargs.setdefault("destination", "slurm")
        spec = super().spec(argv, **kwargs)
        Path(spec.job_dir).chmod(0o777)
        Path(spec.workdir).chmod(0o777)
        return spec

    def close(self) -> None:
        try:
            super().close()
        finally:
            ids = sorted({handle.external_id for _, handle in self.submitted})
            if ids:
                subprocess.run(["scancel", *ids], capture_output=True, timeout=30)


class FakeKind(Kind):
    """In-memory jobs shared by every FakeRunner this kind makes (one ``FakeJobs``)."""

    name = "fake"
    runs_programs = False

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self.jobs = FakeJobs()
        self.outcomes: dict[str, RunStatus] = {}
        self.codes: dict[str, int] = {}  # job id -> exit code of a Blocks job

    def _new(self) -> Runner:
        runner = FakeRunner(default=None, jobs=self.jobs)
        runner.outcomes = self.outcomes  # every instance plays the same script
        return runner

    def job(self, behaviour: Exits | Blocks, **kwargs: Any) -> RunSpec:
        spec = super().job(behaviour, **kwargs)
        if isinstance(behaviour, Exits):
            self.outcomes[spec.job_id] = RunStatus(RunState.EXITED, exit_code=behaviour.code)
        else:
            self.codes[spec.job_id] = behaviour.code
        return spec

    def unusable(self) -> Runner:
        runner = FakeRunner(jobs=self.jobs)
        runner.unusable = "fake runner switched off"
        return runner

    def started(self, spec: RunSpec) -> bool:
        return True

    def release(self, spec: RunSpec, handle: RunHandle) -> None:
        status = RunStatus(RunState.EXITED, exit_code=self.codes[spec.job_id])
        self.jobs.end(handle.external_id, status)


KINDS: dict[str, type[Kind]] = {
    "local": LocalKind,
    "docker": DockerKind,
    "slurm": SlurmKind,
    "fake": FakeKind,
}
