"""Naming the job in runners' log lines.

A runner's handle knows its own id (``<pid>@<start time>``, a container, a Slurm
job id), not jobferry's; every log line about a job must name the job's id, so
that one grep follows a job from submission to end. The job's files lie in its
directory ``<data>/jobs/<xx>/<job id>/``, so its result path says which job it is.
"""

from __future__ import annotations

import os


def job_of(result_path: str) -> str:
    """The job id of the job whose wrapper writes *result_path* (``<job dir>/result``)."""
    return os.path.basename(os.path.dirname(result_path)) or "?"
