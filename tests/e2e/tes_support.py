"""What the TES end-to-end tests share."""

from __future__ import annotations

import json
import subprocess

from tests.helpers import DaemonProcess


def task_job_ids(daemon: DaemonProcess) -> list[str]:
    """The ids of the daemon's jobs (TES tasks among them), read before it stops."""
    listed = daemon.cli("job", "list", "--json", "--limit", "10000", check=False).stdout
    try:
        return [str(job["id"]) for job in json.loads(listed or "[]")]
    except ValueError:
        return []


def remove_task_containers(job_ids: list[str]) -> None:
    """Remove, by name, any container left by these tasks' executors (named
    ``jobferry-<job id>-<attempt>-<index>``). Never a wider filter: the other engine's
    suite runs Docker jobs (``jobferry-<job id>-<attempt>``) at the same time."""
    names = subprocess.run(
        ["docker", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True
    ).stdout.split()
    ours = [n for n in names if any(n.startswith(f"jobferry-{j}-") for j in job_ids)]
    if ours:
        subprocess.run(["docker", "rm", "-f", *ours], capture_output=True, check=False)
