"""How a job's attempt runs: its ``RunSpec`` (argv, paths, environment, resources).

``ExecutionService.spec`` builds it for every claim, direct start and recovery
from the job's row (``JobFacts``: an ORM ``Job`` or a claim's ``ClaimedRow``) and
its destination as configured now. Kept apart from the claim and end bookkeeping
because it reads nothing from the store: the row and the configuration say it all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

from jobferry.config import DestinationConfig
from jobferry.runners.base import RunSpec
from jobferry.services import tes_plan
from jobferry.services.core import Core
from jobferry.services.remote_paths import SCRIPT_COPY, files_under, relocate


class JobFacts(Protocol):
    """What ``ExecutionService.spec`` reads of a job: a ``Job`` row, or the record a
    claim returns (``transitions.ClaimedRow``)."""

    @property
    def id(self) -> str: ...
    @property
    def attempt(self) -> int: ...
    @property
    def runner(self) -> str: ...
    @property
    def destination(self) -> str: ...
    @property
    def job_dir(self) -> str: ...
    @property
    def argv(self) -> list[Any]: ...
    @property
    def cores(self) -> int: ...
    @property
    def gpus(self) -> int: ...
    @property
    def memory_mb(self) -> int | None: ...
    @property
    def walltime_s(self) -> float | None: ...
    @property
    def home_node(self) -> str | None: ...
    @property
    def runner_options(self) -> dict[str, Any] | None: ...


def slurm_options(
    dest: DestinationConfig, options: dict[str, Any] | None
) -> tuple[str | None, tuple[str, ...]]:
    """The partition and sbatch arguments of a job on *dest*: its ``runner_options``
    (a TES task's backend parameters, checked as plain words at create) over the
    destination's: ``partition`` replaces the destination's, ``qos`` adds
    ``--qos=<q>`` after the destination's ``sbatch_args`` (sbatch's last word wins)."""
    options = options or {}
    partition = options.get("partition") or dest.partition
    args = tuple(dest.sbatch_args)
    if options.get("qos"):
        args += (f"--qos={options['qos']}",)
    return (str(partition) if partition else None), args


def run_spec(core: Core, job: JobFacts, dest: DestinationConfig, home_url: str) -> RunSpec:
    """How to run *job*'s current attempt on *dest*; *home_url*: where its wrapper
    reports (the node holding its directory)."""
    job_dir = Path(job.job_dir)
    argv = [str(a) for a in job.argv]
    if dest.runner != "local" and len(argv) >= 2 and argv[0] == core.config.interpreter:
        # The daemon's interpreter does not exist in a container or on a cluster
        # node: run the job's private copy of the script with the node's python3.
        argv[0:2] = [dest.interpreter, str(job_dir / SCRIPT_COPY / Path(argv[1]).name)]
    task = tes_plan.runs_task(job.argv)
    if task:
        argv = tes_plan.run_argv(argv)
    env = {
        "JOBFERRY_URL": home_url,
        "JOBFERRY_JOB_ID": job.id,
        "JOBFERRY_JOB_KEY": core.job_key(job.id),
        "JOBFERRY_ATTEMPT": str(job.attempt),
        "JOBFERRY_NODE": core.node_name,  # e.g. a TES task log's node
        **dest.env,
    }
    if job.memory_mb and dest.runner != "docker" and not task:
        # No cgroup here (a local process; Slurm without cgroup plugins): the
        # wrapper caps the job's address space instead (a TES task's: see runs_task).
        env["JOBFERRY_MEMORY_KB"] = str(job.memory_mb * 1024)
    remote_dir: str | None = None
    stage_in: tuple[str, ...] = ()
    if dest.staging == "remote":
        remote_dir = f"{dest.scratch_dir.rstrip('/')}/{job.id}.{job.attempt}"
        argv = [relocate(a, str(job_dir), remote_dir) for a in argv]
        stage_in = files_under(job_dir, ("inputs", SCRIPT_COPY))
        env["JOBFERRY_STAGING"] = "remote"
        env["JOBFERRY_STAGE_IN"] = json.dumps(stage_in)
    partition, sbatch_args = slurm_options(dest, job.runner_options)
    return RunSpec(
        job_id=job.id,
        argv=tuple(argv),
        workdir=str(job_dir / "work"),
        stdout_path=str(job_dir / "stdout"),
        stderr_path=str(job_dir / "stderr"),
        result_path=str(job_dir / "result"),
        env=env,
        walltime_s=job.walltime_s,
        cores=job.cores,
        memory_mb=job.memory_mb,
        attempt=job.attempt,
        destination=job.destination,
        gpus=job.gpus,
        image=dest.image,
        network=dest.network,
        partition=partition,
        sbatch_args=sbatch_args,
        staging=dest.staging,
        job_dir=str(job_dir),
        remote_dir=remote_dir,
        stage_in=stage_in,
        # A task program prints a traceback at most: no log-cap filters (tes_plan).
        max_log_bytes=0 if task else core.config.jobs.max_log_mb << 20,
    )
