"""The Slurm batch script of a job: what ``sbatch`` is given to run it.

Owns the job's deterministic Slurm name (how a restarted daemon finds a job whose
handle was never stored), its resources as ``#SBATCH`` directives (or as sbatch
arguments where a value would mangle a directive), its environment as quoted
``export`` lines, and the ``exec`` of the job wrapper. Pure: builds text, runs
nothing (``runners.slurm_cli`` submits it).
"""

from __future__ import annotations

import math
import os
import re
import shlex

from jobferry.errors import SubmitError
from jobferry.runners.base import RunSpec
from jobferry.runners.wrapper import wrapper_argv, wrapper_paths

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_UNSAFE_DIRECTIVE = re.compile(r"[\s'\"\\#]")
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def job_name(spec: RunSpec) -> str:
    """The deterministic Slurm job name of *spec*'s attempt (``find`` looks it up)."""
    return _NAME_UNSAFE.sub("_", f"jobferry-{spec.job_id}-{spec.attempt}")


def batch_script(spec: RunSpec, node: str = "") -> tuple[str, list[str]]:
    """Return *spec*'s batch script and the sbatch options that cannot be directives.

    Options whose values are plain words become ``#SBATCH`` lines; any value with
    whitespace, quotes or ``#`` (which sbatch's directive parser would mangle) is
    returned as a separate argv word for the sbatch command line instead, as are
    ``sbatch_args``. *node* (this daemon's) goes into the job's Slurm comment.

    Raises:
        SubmitError: the argv or an environment variable name is invalid.
    """
    if not spec.argv or spec.argv[0].startswith("-"):
        raise SubmitError(f"invalid argv for job {spec.job_id}: {list(spec.argv)!r}")
    remote = spec.staging == "remote"
    if remote:
        chdir = "/tmp"
    else:
        chdir = spec.job_dir or os.path.dirname(os.path.abspath(spec.result_path))
    options = [
        f"--job-name={job_name(spec)}",
        "--nodes=1",
        "--ntasks=1",
        f"--cpus-per-task={max(1, spec.cores)}",
        "--output=/dev/null",
        "--error=/dev/null",
        f"--chdir={chdir}",
        "--export=NONE",
        # The daemon decides about retries (with a new attempt), never Slurm.
        "--no-requeue",
    ]
    if spec.memory_mb is not None:
        options.append(f"--mem={spec.memory_mb}M")
    if spec.walltime_s:
        # A hard upper bound only: wait() scancels at the exact walltime.
        options.append(f"--time={max(1, math.ceil(spec.walltime_s / 60))}")
    if spec.partition:
        options.append(f"--partition={spec.partition}")
    if spec.gpus:
        options.append(f"--gres=gpu:{spec.gpus}")
    if node:
        options.append(f"--comment=jobferry node {node}")
    lines = ["#!/bin/sh", f"# jobferry job {spec.job_id} attempt {spec.attempt}"]
    extra: list[str] = []
    for option in options:
        if _UNSAFE_DIRECTIVE.search(option):
            extra.append(option)
        else:
            lines.append(f"#SBATCH {option}")
    extra += list(spec.sbatch_args)
    for key, value in spec.env.items():
        if not _ENV_NAME.fullmatch(key):
            raise SubmitError(f"invalid environment variable name {key!r}")
        lines.append(f"export {key}={shlex.quote(value)}")
    if remote and spec.remote_dir:
        # The wrapper's own files live there; it needs them before anything else.
        lines.append(f"mkdir -p -- {shlex.quote(wrapper_paths(spec)[0])}")
    lines.append("exec " + " ".join(shlex.quote(word) for word in wrapper_argv(spec)))
    return "\n".join(lines) + "\n", extra
