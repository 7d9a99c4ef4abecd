"""What the job_files modules share: the job reference they request files through, how a
job is started for it, the upload temp files they look for, and the strings they compare."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from tests.helpers import Client, DaemonProcess

SECRET = b"JOBFERRY-SECRET-MARKER-7f3a"
INPUT_TEXT = b"an input file for the job\n" * 10
INVALID_KEY = "Invalid job_key supplied."
COMPLETED = "Attempting to read or modify the files of a job that has already completed."
MB = 1024 * 1024


@dataclass(frozen=True)
class JobRef:
    id: str
    key: str
    dir: Path
    url: str

    def get(self, path: str, **kw: Any) -> requests.Response:
        params = {"job_key": self.key, "path": path, **kw.pop("params", {})}
        return requests.get(self.url, params=params, timeout=30, **kw)

    def post(self, path: str | None, data: Any = b"", **kw: Any) -> requests.Response:
        params: dict[str, str] = {"job_key": self.key, **kw.pop("params", {})}
        if path is not None:
            params["path"] = path
        files = kw.pop("files", {"file": ("filename", data)})
        return requests.post(self.url, params=params, files=files, timeout=60, **kw)


def start_job(daemon: DaemonProcess, client: Client, seconds: str = "90", **kw: Any) -> JobRef:
    job_id = client.submit("sleeper", seconds, **kw)
    key = daemon.cli("job", "key", job_id).stdout.strip()
    job_dir = daemon.data_dir / "jobs" / job_id[:2] / job_id
    return JobRef(job_id, key, job_dir, f"{daemon.url}/api/jobs/{job_id}/files")


def temp_files(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.name.endswith(".upload")]


def temp_sizes(directory: Path) -> list[int]:
    sizes = []
    for path in temp_files(directory):
        try:
            sizes.append(path.stat().st_size)
        except FileNotFoundError:
            pass  # removed meanwhile
    return sizes
