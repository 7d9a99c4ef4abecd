"""File names and job directories, without opening anything a client named.

``safe_filename`` turns an uploaded file's name into one plain file name;
``file_digest`` sizes and hashes a file; ``make_job_dir`` makes a job's
directories. Confinement of client-named paths is ``jobferry.staging.confined``'s.
"""

from __future__ import annotations

import hashlib
import os
import re

_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._+@=-]+")


def safe_filename(name: str | None, fallback: str = "upload") -> str:
    """A single, harmless file name derived from *name* (directories dropped)."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = _UNSAFE_CHARS.sub("_", base).strip("._") or fallback
    return base[:200]


def file_digest(path: str | os.PathLike[str]) -> tuple[int, str]:
    """Size and sha256 hex of a file, read in 1 MiB chunks. Blocking."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def make_job_dir(job_dir: str | os.PathLike[str]) -> None:
    """Create a job's directory and its ``work`` directory if they are missing.

    Submissions without uploads leave this to the claim (or to the first write
    through the job_files API): two mkdirs are a quarter of what accepting a
    submission costs, and a job that is cancelled while queued never needs them.
    Plain ``os.mkdir`` on strings, in the order that succeeds at once in the usual
    case (the parent exists, the job's directory does not): it runs for every
    claimed job, and pathlib's objects and a first failing mkdir cost more than the
    two system calls.
    """
    top = os.fspath(job_dir)
    work = os.path.join(top, "work")
    try:
        os.mkdir(top)
    except FileExistsError:  # made at submission (uploads), or by an earlier attempt
        pass
    except FileNotFoundError:  # its parent is missing (a fresh data directory)
        os.makedirs(top, exist_ok=True)
    try:
        os.mkdir(work)
    except FileExistsError:
        pass
