"""Path confinement: every client-named path goes through here.

``confine`` resolves a relative path below a root with ``realpath`` and refuses
anything that lands outside it (``..``, absolute paths, escaping symlinks,
prefix-sibling directories), NUL bytes and percent-encoded forms.
``safe_filename`` turns an uploaded file's name into one plain file name.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from jobferry.errors import PathRejectedError

_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._+@=-]+")
#: Longest relative path accepted, in bytes.
MAX_PATH_BYTES = 1024


def safe_filename(name: str | None, fallback: str = "upload") -> str:
    """A single, harmless file name derived from *name* (directories dropped)."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = _UNSAFE_CHARS.sub("_", base).strip("._") or fallback
    return base[:200]


def confine(root: str | os.PathLike[str], relative: str) -> Path:
    """Resolve *relative* below *root*; raise PathRejectedError if it would leave it.

    The returned path may not exist. The check uses the resolved real path, so a
    symlink inside *root* that points outside is refused as well.
    """
    if (
        not relative
        or "\x00" in relative
        or len(relative.encode("utf-8", "replace")) > (MAX_PATH_BYTES)
    ):
        raise PathRejectedError("The path is not allowed.")
    if "%" in relative or relative.startswith(("/", "\\")) or "\\" in relative:
        raise PathRejectedError("The path is not allowed.")
    real_root = os.path.realpath(root)
    candidate = os.path.realpath(os.path.join(real_root, relative))
    if candidate == real_root or not candidate.startswith(real_root + os.sep):
        raise PathRejectedError("The path is not allowed.")
    return Path(candidate)


def file_digest(path: str | os.PathLike[str]) -> tuple[int, str]:
    """Size and sha256 hex of a file, read in 1 MiB chunks. Blocking."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def make_job_dir(job_dir: Path) -> None:
    """Create a job's directory and its ``work`` directory if they are missing.

    Submissions without uploads leave this to the claim (or to the first write
    through the job_files API): two mkdirs are a quarter of what accepting a
    submission costs, and a job that is cancelled while queued never needs them.
    """
    work = job_dir / "work"
    try:
        work.mkdir()
        return
    except FileExistsError:
        return
    except FileNotFoundError:
        pass
    try:
        job_dir.mkdir()
    except FileNotFoundError:
        job_dir.parent.mkdir(parents=True, exist_ok=True)
        job_dir.mkdir(exist_ok=True)
    except FileExistsError:
        pass
    work.mkdir(exist_ok=True)
