"""What a job's container looks like: a ``RunSpec`` turned into Docker SDK arguments.

Owns the container's name and labels (how a restarted daemon finds it again), its
confinement (non-root numeric user, no capabilities, no new privileges, no network
unless the destination asks for it), its limits (CPUs, memory, pids, GPUs), its one
bind mount (the job's directory, at the same path, with shared staging only) and
its command (the job wrapper as entrypoint). Pure: no engine calls here; the only
side effect is ``chown_tree``, which hands the job's directory to the job's user.
"""

from __future__ import annotations

import os
import re
from typing import Any

from docker.types import DeviceRequest, Mount  # type: ignore[import-untyped]

from jobferry.errors import ConfigError, SubmitError
from jobferry.runners.base import RunSpec
from jobferry.runners.wrapper import wrapper_argv, wrapper_paths

LABEL_JOB = "jobferry.job_id"
LABEL_ATTEMPT = "jobferry.attempt"
LABEL_NODE = "jobferry.node"
LABEL_DESTINATION = "jobferry.destination"

#: The uid:gid jobs run as when neither configured nor inherited from a non-root daemon.
NOBODY = "65534:65534"


def container_name(job_id: str, attempt: int) -> str:
    """The deterministic container name of a job's attempt (only Docker-legal characters)."""
    return f"jobferry-{re.sub(r'[^A-Za-z0-9_.-]', '_', job_id)}-{attempt}"


def parse_user(user: str) -> tuple[int, int]:
    """``"uid:gid"`` or ``"uid"`` (gid -1: leave the group) as numbers.

    Raises:
        ConfigError: not numeric.
    """
    uid, _, gid = user.partition(":")
    try:
        return int(uid), int(gid) if gid else -1
    except ValueError as exc:
        raise ConfigError(f"runners.docker.user must be numeric uid[:gid], not {user!r}") from exc


def chown_tree(root: str, uid: int, gid: int) -> None:
    """Give *root* and everything under it to uid:gid, never following symlinks."""
    os.lchown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, gid)


def shared_dir(spec: RunSpec) -> str:
    """The directory to bind-mount: ``job_dir``, else the common parent of the job's paths.

    Raises:
        SubmitError: a path is relative or outside that directory, the directory
            would be ``/``, or the working directory (or an output's) is missing.
    """
    paths = [spec.workdir, spec.stdout_path, spec.stderr_path, spec.result_path]
    if not all(os.path.isabs(p) for p in paths):
        raise SubmitError(f"job {spec.job_id}: paths must be absolute for docker")
    job_dir = os.path.normpath(
        spec.job_dir or os.path.commonpath([spec.workdir] + [os.path.dirname(p) for p in paths])
    )
    if job_dir == "/" or not os.path.isabs(job_dir):
        raise SubmitError(f"job {spec.job_id}: refusing to mount {job_dir!r} into a container")
    if not os.path.isdir(spec.workdir):
        raise SubmitError(f"working directory {spec.workdir} does not exist")
    for path in paths:
        if os.path.commonpath([job_dir, os.path.normpath(path)]) != job_dir:
            raise SubmitError(f"{path} is outside the job directory {job_dir}")
        if path != spec.workdir and not os.path.isdir(os.path.dirname(path)):
            raise SubmitError(f"directory for {path} does not exist")
    return job_dir


def create_args(
    spec: RunSpec, *, job_dir: str, user: str, node: str, pids_limit: int
) -> dict[str, Any]:
    """The SDK's ``containers.create`` arguments (all but image and name) for *spec*.

    *job_dir* is the directory to bind-mount ("" with remote staging: nothing of
    this host's disk is mounted and the wrapper works in ``remote_dir``).
    """
    argv = wrapper_argv(spec)
    labels = {
        LABEL_JOB: spec.job_id,
        LABEL_ATTEMPT: str(spec.attempt),
        LABEL_NODE: node,
        LABEL_DESTINATION: spec.destination,
    }
    host: dict[str, Any] = {
        "network_mode": "host" if spec.network else "none",
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "privileged": False,
        "pids_limit": pids_limit,
        "nano_cpus": max(1, spec.cores) * 1_000_000_000,
    }
    if spec.memory_mb:
        host["mem_limit"] = host["memswap_limit"] = f"{spec.memory_mb}m"
    if spec.gpus > 0:
        host["device_requests"] = [DeviceRequest(count=spec.gpus, capabilities=[["gpu"]])]
    if job_dir:
        host["mounts"] = [Mount(target=job_dir, source=job_dir, type="bind")]
    return {
        "command": argv[1:],
        "entrypoint": argv[:1],
        "labels": labels,
        "environment": {"HOME": wrapper_paths(spec)[0], **spec.env},
        "user": user,
        "working_dir": None if spec.staging == "remote" else spec.workdir,
        "stdin_open": False,
        "tty": False,
        **host,
    }
