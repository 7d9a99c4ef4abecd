"""Where uploads live while their body arrives, and the start-up sweep that removes them.

Every request body that is written to disk before it is complete (job_files
POSTs, Wooey submissions and script uploads, Galaxy's staged datasets) is
written below the daemon's own temp directory, ``<data_dir>/tmp``: job_files
uploads in ``tmp/uploads/`` (one ``.NAME.<random>.upload`` file each, renamed
into the job's directory when complete), multipart forms in ``tmp/upload-*/``.
Never in a job's directory: a daemon killed mid-upload (kill -9, OOM killer,
power loss) runs no cleanup, and a partial file there would stay forever and
sit where output collection looks.

Nothing in ``tmp/`` outlives the daemon that wrote it (the data dir's lock
guarantees one daemon per data dir), so start-up empties it.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

#: The job_files staging area, below the daemon's temp directory.
UPLOADS_DIR = "uploads"


def upload_area(tmp_path: Path) -> Path:
    """The directory job_files uploads are written to until complete (made if missing)."""
    area = tmp_path / UPLOADS_DIR
    area.mkdir(parents=True, exist_ok=True)
    return area


def sweep_partial_uploads(tmp_path: Path) -> int:
    """Empty the daemon's temp directory (at start-up, before serving); return how many
    partial uploads it held (files in the staging area, form directories)."""
    found = 0
    if tmp_path.is_dir():
        for entry in tmp_path.iterdir():
            if entry.name == UPLOADS_DIR and entry.is_dir():
                found += sum(1 for _ in entry.iterdir())
            elif entry.name.startswith("upload-"):
                found += 1
        shutil.rmtree(tmp_path, ignore_errors=True)
    tmp_path.mkdir(parents=True, exist_ok=True)  # the staging area is made when first used
    if found:
        logger.info("removed %d partial upload(s) left by an earlier run", found)
    return found
