"""Galaxy's job shapes (galaxy-contract.md §3): summaries, the element view, metrics.

Built from the services' face-neutral records (``JobSummary``, ``JobDetail``,
``JobMetrics``, ``FileRecord``). Internal job states are Galaxy's own
vocabulary, so they pass through as they are. A job's files are Galaxy's
datasets (``src: "hda"``), identified by the job file's id, and named after
their parameter (inputs) or their path (outputs). Key order is part of the
shape: clients and tests compare these documents whole.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable
from typing import Any

from jobferry.api.galaxy.formats import GALAXY_VERSION_MAJOR, human_bytes, iso
from jobferry.services.records import (
    FileRecord,
    JobDetail,
    JobMetrics,
    JobPlacement,
    JobSummary,
)


def _natural(name: str) -> tuple[int, str]:
    head, _, rest = name.partition("/")
    return (int(head), rest) if head.isdigit() else (1 << 62, name)


def dataset_names(files: Iterable[FileRecord], kind: str) -> list[tuple[str, FileRecord]]:
    """The files of one kind with their Galaxy association names, in a stable order.

    An input is named after its parameter (``infile``, then ``infile1``, ... when a
    parameter took several files); an output after its path in the working directory.
    """
    chosen = sorted((f for f in files if f.kind == kind), key=lambda f: _natural(f.name))
    named: list[tuple[str, FileRecord]] = []
    seen: dict[str, int] = {}
    for job_file in chosen:
        base = (job_file.param or job_file.name) if kind == "input" else job_file.name
        count = seen.get(base, 0)
        seen[base] = count + 1
        named.append((base if count == 0 else f"{base}{count}", job_file))
    return named


def _head(job: JobSummary) -> dict[str, Any]:
    """The fields every job view starts with (and an admin's three)."""
    data: dict[str, Any] = {
        "model_class": "Job",
        "id": job.id,
        "state": job.state,
        "exit_code": job.exit_code,
        "create_time": iso(job.created_at),
        "update_time": iso(job.updated_at),
        "galaxy_version": GALAXY_VERSION_MAJOR,
        "tool_id": job.tool_id,
        "tool_version": job.tool_version,
        "history_id": job.history_id,
    }
    if job.admin:
        data["external_id"] = job.external_id
        data["command_line"] = shlex.join(str(a) for a in job.argv)
        data["traceback"] = None
    return data


def job_summary(job: JobSummary, *, admin_view: bool = False) -> dict[str, Any]:
    """A job in ``GET /api/jobs`` (``view=admin_job_list``: with its handler and runner)."""
    data = _head(job)
    if job.email_read:
        data["user_email"] = job.email
    if admin_view:
        data["handler"] = job.node
        data["job_runner_name"] = job.runner
        data["info"] = job.state_reason
        data["session_id"] = None
        data["decoded_job_id"] = None
    return data


def job_element(detail: JobDetail) -> dict[str, Any]:
    """``GET /api/jobs/{id}``: the element view; ``full``: the logs (admins: and metrics)."""
    job = detail.summary
    data = _head(job)
    input_params = {f.param for f in detail.files if f.kind == "input" and f.param}
    data.update(
        {
            "command_version": None,
            "copied_from_job_id": None,
            "user_id": job.user_id,
            "params": {
                name: json.dumps(value)
                for name, value in detail.params.items()
                if name not in input_params
            },
            "inputs": {
                name: {"id": f.id, "src": "hda", "uuid": None}
                for name, f in dataset_names(detail.files, "input")
            },
            "outputs": {
                name: {"id": f.id, "src": "hda", "uuid": None}
                for name, f in dataset_names(detail.files, "output")
            },
            "output_collections": {},
        }
    )
    if detail.files_expired:  # jobferry's extension: its datasets are purged (410)
        data["files_expired"] = True
    if detail.full:
        data.update(
            {
                "tool_stdout": detail.stdout,
                "tool_stderr": detail.stderr,
                "job_stdout": "",
                "job_stderr": "",
                "stdout": detail.stdout,
                "stderr": detail.stderr,
                "job_messages": [],
                "dependencies": [],
            }
        )
        if job.admin:
            data["user_email"] = job.email
            data["job_metrics"] = job_metrics(detail.metrics)
    return data


def associations(files: Iterable[FileRecord], kind: str) -> list[dict[str, Any]]:
    """``/inputs`` or ``/outputs``: ``[{"name", "dataset": {"src": "hda", "id"}}]``."""
    return [
        {"name": name, "dataset": {"src": "hda", "id": f.id}}
        for name, f in dataset_names(files, kind)
    ]


def common_problems(files: Iterable[FileRecord]) -> dict[str, bool]:
    """``/common_problems``: empty or duplicated (same content) inputs."""
    inputs = [f for f in files if f.kind == "input"]
    digests = [f.sha256 for f in inputs]
    return {
        "has_empty_inputs": any(f.size == 0 for f in inputs),
        "has_duplicate_inputs": len(set(digests)) != len(digests),
    }


def destination_params(placement: JobPlacement) -> dict[str, Any]:
    """``/destination_params``: where and with what the job runs."""
    return {
        "Runner": placement.runner,
        "Runner Job ID": placement.external_id,
        "Handler": placement.node,
        "Destination": placement.destination,
        "Cores": placement.cores,
        "Memory (MB)": placement.memory_mb,
        "GPUs": placement.gpus,
        "Walltime (s)": placement.walltime_s,
    }


def _metric(plugin: str, name: str, title: str, value: str, raw: Any) -> dict[str, str]:
    return {"title": title, "value": value, "plugin": plugin, "name": name, "raw_value": str(raw)}


def _seconds(plugin: str, name: str, title: str, value: float | None) -> list[dict[str, str]]:
    if value is None:
        return []
    return [_metric(plugin, name, title, f"{value:.3f} seconds", f"{value:.7f}")]


def job_metrics(metrics: JobMetrics | None) -> list[dict[str, str]]:
    """A job's metrics as Galaxy's JobMetric list (wall and CPU time, peak RSS, times);
    none (``[]``) when they were not read (a reader who is not an admin)."""
    if metrics is None:
        return []
    found: list[dict[str, str]] = []
    for name, title, at in (
        ("start_epoch", "Job Start Time", metrics.started_at),
        ("end_epoch", "Job End Time", metrics.finished_at),
    ):
        if at is not None:
            when = at.strftime("%Y-%m-%d %H:%M:%S")
            found.append(_metric("core", name, title, when, f"{at.timestamp():.7f}"))
    cores = metrics.cores
    found.append(_metric("core", "galaxy_slots", "Cores Allocated", str(cores), cores))
    found += _seconds("core", "runtime_seconds", "Job Runtime (Wall Clock)", metrics.wall_s)
    found += _seconds("jobferry", "cpu_user_seconds", "CPU Time (User)", metrics.cpu_user_s)
    found += _seconds("jobferry", "cpu_system_seconds", "CPU Time (System)", metrics.cpu_sys_s)
    if metrics.peak_rss_kb is not None:
        peak = metrics.peak_rss_kb * 1024
        # Galaxy's own memory metric (its cgroup plugin), so Galaxy clients find it.
        found.append(
            _metric(
                "cgroup",
                "memory.max_usage_in_bytes",
                "Max memory usage recorded",
                human_bytes(peak),
                peak,
            )
        )
    return found
