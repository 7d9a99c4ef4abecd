"""Uploads cut off mid-body, by the thousand (issue #10, item 2).

Guards: "2,000 multipart POSTs that declare 5 MB and close after 1 kB grow the
daemon by 22 MB that is never released; each handler stays pending until
shutdown" (job_files without a key, and the authenticated Wooey submit). The
streaming handlers replaced Tornado's ``on_connection_close`` without calling
it, so the request's body future never failed and every cut-off request kept
its handler, parser and buffers until the daemon stopped.

A bounded count (2,000, 20 at a time, well under a minute); the full 10,000
is ``bench/faults_uploads.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psutil
import pytest
import requests

from tests.faults._upload_clients import (
    MIB,
    Upload,
    field_part,
    file_part_head,
    multipart_body,
    open_descriptors,
    rss,
    send_all,
)
from tests.helpers import JOB_SCRIPTS, Client, DaemonProcess, eventually

pytestmark = [pytest.mark.e2e, pytest.mark.engine_independent, pytest.mark.timeout(300)]

UNKNOWN_JOB = "0123456789abcdef"
DECLARED = 5 * 1000 * 1000
SENT = 1000
#: RSS growth allowed over the measured requests (the issue's bound, for 10,000).
RSS_BOUND = 5 * MIB


def truncated_mix(admin_key: str, job_id: str, job_key: str, count: int) -> list[Upload]:
    """*count* cut-off uploads, a quarter on each upload path a body can take."""
    head = file_part_head()
    kinds = [
        # The case: job_files, no key at all (now refused before the body).
        Upload(f"/api/jobs/{UNKNOWN_JOB}/files", head + b"x" * SENT, DECLARED),
        # A body small enough to wait in memory for its form's key (budget taken).
        Upload(
            f"/api/jobs/{UNKNOWN_JOB}/files",
            field_part("job_key", "0" * 64) + head + b"x" * SENT,
            512 * 1024,
        ),
        # Authorised by the query: streamed to the staging area, then cut off.
        Upload(
            f"/api/jobs/{job_id}/files?job_key={job_key}&path={quote('work/cut.bin')}",
            head + b"x" * SENT,
            DECLARED,
        ),
        # The authenticated Wooey submit: streamed to a form directory, then cut off.
        Upload(
            "/api/scripts/v1/sleeper/submit/",
            field_part("job_name", "cut") + file_part_head("extra") + b"x" * SENT,
            DECLARED,
            {"Authorization": f"Bearer {admin_key}"},
        ),
    ]
    return [kinds[i % len(kinds)] for i in range(count)]


def files_below(path: Path) -> list[Path]:
    """The files below *path* (os.walk: directories removed meanwhile are skipped)."""
    return [Path(top, name) for top, _, names in os.walk(path) for name in names]


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    proc = DaemonProcess(tmp_path / "data", {"server": {"max_upload_mb": 64}}).start()
    try:
        yield proc
    finally:
        proc.stop(60)


def test_two_thousand_cut_off_uploads__handlers_end_and_memory_is_released(
    daemon: DaemonProcess,
) -> None:
    """Fails on the old code: RSS grew by ~23 MB over 2,000 cut-off requests (and the
    handlers only ended, with a 500 each, at shutdown)."""
    assert daemon.proc is not None
    pid = daemon.proc.pid
    admin = daemon.client()
    admin.add_script("sleeper", JOB_SCRIPTS / "sleeper.py")
    job_id = admin.submit("sleeper", "300")
    job_key = daemon.cli("job", "key", job_id).stdout.strip()
    address = (daemon.url.split("//")[1].split(":")[0], int(daemon.url.rsplit(":", 1)[1]))
    tmp = daemon.data_dir / "tmp"
    job_dir = daemon.data_dir / "jobs" / job_id[:2] / job_id
    try:
        # Warm up: imports, pools, allocator arenas, the key cache.
        fds = open_descriptors(pid)
        idle_fds = fds()
        queued = lambda: fds() - idle_fds  # noqa: E731 - connections the daemon holds
        send_all(address, truncated_mix(daemon.admin_key, job_id, job_key, 2000), 20, queued)
        assert eventually(lambda: not files_below(tmp), 60), files_below(tmp)
        before_rss = rss(pid)
        before_fds = psutil.Process(pid).num_fds()

        send_all(address, truncated_mix(daemon.admin_key, job_id, job_key, 2000), 20, queued)

        # What a cut-off request wrote is gone, and nothing landed in the job's directory.
        assert eventually(lambda: not files_below(tmp), 60), files_below(tmp)
        assert not [p for p in job_dir.rglob("*.upload")]
        # Every handler ended: its socket and files are closed ...
        assert eventually(lambda: psutil.Process(pid).num_fds() <= before_fds + 5, 60)
        # ... the memory-budget of the form-keyed bodies was given back (else 429) ...
        in_form = requests.post(
            f"{daemon.url}/api/jobs/{job_id}/files",
            data={"job_key": job_key, "path": "work/after.txt"},
            files={"file": ("f", b"after the storm")},
            timeout=60,
        )
        assert in_form.status_code == 200, in_form.text
        # ... and so was the memory.
        grown = rss(pid) - before_rss
        print(
            f"RSS {before_rss / MIB:.1f} MiB -> +{grown / MIB:.2f} MiB over 2,000 cut-off uploads"
        )
        assert grown <= RSS_BOUND, f"RSS grew by {grown / MIB:.1f} MiB"
        # The daemon still takes a real upload on both faces.
        ok = Client(daemon.url, daemon.admin_key).post(
            "/api/scripts/v1/sleeper/submit/",
            data={"job_name": "whole", "command": "0"},
            files={"extra": ("in.txt", b"whole body")},
        )
        assert ok.status_code == 200 and ok.json()["valid"], ok.text
        whole = requests.post(
            f"{daemon.url}/api/jobs/{job_id}/files",
            params={"job_key": job_key, "path": "work/whole.bin"},
            data=multipart_body(b"w" * MIB),
            headers={"Content-Type": "multipart/form-data; boundary=fAuLtBoUnDaRy"},
            timeout=60,
        )
        assert whole.status_code == 200, whole.text
        assert (job_dir / "work" / "whole.bin").stat().st_size == MIB
    finally:
        daemon.cli("job", "cancel", job_id, check=False)
    # No handler was left waiting for shutdown to answer it with a 500.
    assert daemon.stop(60) == 0
    log = daemon.log_path.read_text(errors="replace")
    assert log.count(" 500 ") < 5, log[-2000:]
