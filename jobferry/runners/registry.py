"""The runner registry: the runners a node serves, built from the configuration.

``build_runners`` turns ``config.runners`` into runner instances by name, and the
number of jobs each may run at once on this node (its slots). The daemon calls it
once at start-up; the admin command line calls it to reach a job's runner (e.g. to
stop a Docker or Slurm job on cancel).

This is the one module of ``jobferry.runners`` that may import ``jobferry.config``:
everything else in the package knows only ``jobferry.errors`` and its own modules,
and receives its settings as plain constructor arguments from here.
"""

from __future__ import annotations

import os

from jobferry.config import Config
from jobferry.runners.base import Runner
from jobferry.runners.local import LocalRunner


def build_runners(config: Config, node: str) -> tuple[dict[str, Runner], dict[str, int]]:
    """Runners by name and how many jobs each may run at once on this node.

    The local runner always exists (it is the embedded default); Docker and Slurm
    only when enabled in ``runners``. Their modules are imported only then, so a
    node without the docker SDK or Slurm commands never needs them.
    """
    runners: dict[str, Runner] = {
        "local": LocalRunner(kill_grace_s=config.runners.local.kill_grace_s)
    }
    slots = {"local": config.local_slots}
    if config.runners.docker.enabled:
        from jobferry.runners.docker import DockerRunner

        docker = config.runners.docker
        runners["docker"] = DockerRunner(
            base_url=docker.base_url,
            pull=docker.pull,
            user=docker.user,
            timeout_s=docker.timeout_s,
            node=node,
            kill_grace_s=config.runners.local.kill_grace_s,
        )
        slots["docker"] = docker.slots if docker.slots is not None else os.cpu_count() or 1
    if config.runners.slurm.enabled:
        from jobferry.runners.slurm import SlurmRunner

        slurm = config.runners.slurm
        runners["slurm"] = SlurmRunner(
            bin_dir=slurm.bin_dir,
            poll_interval_s=slurm.poll_interval_s,
            command_timeout_s=slurm.command_timeout_s,
            node=node,
        )
        slots["slurm"] = slurm.slots
    return runners, slots
