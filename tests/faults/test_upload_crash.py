"""kill -9 in the middle of job_files uploads (issue #10, item 4).

Guards: "kill -9 during a job_files upload leaves partial files
(``work/.NAME.<random>.upload``, 150-220 MB) in the job's directory forever".
Partial uploads now live in the daemon's staging area (``<data_dir>/tmp/uploads``),
which start-up empties; they never touch the job's directory, so they can never
be collected as outputs.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psutil
import pytest

from tests.faults._upload_clients import MIB, Upload, field_part, file_part_head
from tests.faults._upload_clients import stream_without_end as stream
from tests.helpers import JOB_SCRIPTS, DaemonProcess, eventually

pytestmark = [pytest.mark.e2e, pytest.mark.engine_independent, pytest.mark.timeout(300)]


def sizes(directory: Path) -> list[int]:
    found = []
    for top, _, names in os.walk(directory):
        for name in names:
            try:
                found.append(os.stat(os.path.join(top, name)).st_size)
            except FileNotFoundError:
                pass
    return found


def partials(directory: Path) -> list[Path]:
    return [Path(top, n) for top, _, names in os.walk(directory) for n in names if ".upload" in n]


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    proc = DaemonProcess(tmp_path / "data", {"server": {"max_upload_mb": 512}}).start()
    try:
        yield proc
    finally:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.stop(60)
        jobs = str(tmp_path / "data" / "jobs") + os.sep
        for process in psutil.process_iter():  # the job outlives a killed daemon
            try:
                if process.pid != os.getpid() and (process.cwd() + os.sep).startswith(jobs):
                    process.kill()
            except psutil.Error:
                pass


def test_kill9_mid_upload__partials_are_gone_after_restart_and_never_outputs(
    daemon: DaemonProcess,
) -> None:
    """Fails on the old code: the partials stayed in the job's work/ directory."""
    admin = daemon.client()
    admin.add_script("sleeper", JOB_SCRIPTS / "sleeper.py")
    job_id = admin.submit("sleeper", "15")
    key = daemon.cli("job", "key", job_id).stdout.strip()
    job_dir = daemon.data_dir / "jobs" / job_id[:2] / job_id
    host, port = daemon.url.split("//")[1].rsplit(":", 1)
    address = (host, int(port))
    base = f"/api/jobs/{job_id}/files?job_key={key}"
    uploads = [
        # Pulsar's form: the target in the query, checked before the body.
        Upload(f"{base}&path={quote('work/big.bin')}", file_part_head()),
        # The target in the form: only known once the body is in.
        Upload(base, field_part("path", "work/staged.bin") + file_part_head()),
    ]
    senders = [
        threading.Thread(target=stream, args=(address, u, 400 * MIB), daemon=True) for u in uploads
    ]
    for sender in senders:
        sender.start()
    # Both are streaming (wherever the daemon keeps them: that is the point).
    streaming = eventually(lambda: len([s for s in sizes(daemon.data_dir) if s > 4 * MIB]) == 2, 60)
    assert streaming, sizes(daemon.data_dir)
    in_job_dir = partials(job_dir)  # asserted after the cleanup below
    daemon.kill()
    for sender in senders:
        sender.join(60)
    assert len(partials(daemon.data_dir)) == 2  # what the crash left ...

    daemon.start()
    assert partials(daemon.data_dir) == []  # ... start-up removed
    assert in_job_dir == [], "partial uploads were written in the job's directory"
    details = daemon.client().wait(job_id, 120)
    names = [asset["name"] for asset in details["assets"]]
    assert not [n for n in names if ".upload" in n or n.endswith(("big.bin", "staged.bin"))]
    assert partials(job_dir) == []
