"""``jobferry remote download``: a 200 MB asset cut off half-way resumes with Range from
the ``.part`` file and is checked against the daemon's sha256; a corrupt ``.part`` is
caught by that check. And the progress bars: in a real pseudo-terminal, not in a pipe,
not with --quiet."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.remote_helpers import SCRIPT, Remote, remote_daemon  # noqa: F401 (a fixture)
from tests.helpers import DEADLINE_S, wait_for

pytestmark = pytest.mark.e2e

MB = 1 << 20
BIG_MB = 200
#: What rich draws a bar with.
BAR = "━"


def finished_job(remote: Remote, *args: str) -> dict[str, Any]:
    result = remote.ok("submit", SCRIPT, "--wait", "--json", *args)
    details = json.loads(result.stdout)
    assert details["status"] == "completed", details
    return dict(details)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(MB):
            digest.update(chunk)
    return digest.hexdigest()


def asset_requests(remote: Remote, since: int) -> list[str]:
    """The access-log lines of asset downloads logged after offset *since* of the log
    (status first; access lines name the route template, never the job id)."""
    lines = remote.daemon.log_text()[since:].splitlines()
    return [
        ln for ln in lines if "jobferry.access: " in ln and " GET /api/jobs/v1/{}/assets/" in ln
    ]


def test_download__resumes_a_cut_off_200mb_asset_and_checks_its_sha256(
    remote: Remote, tmp_path: Path
) -> None:
    details = finished_job(remote, "--", "--mb", str(BIG_MB))
    job_id = details["job_id"]
    [asset] = details["assets"]
    assert asset["name"] == "blob.bin" and asset["size"] == BIG_MB * MB
    to = tmp_path / "to"
    part = to / "blob.bin.part"
    # A first run, slowed to 100 MB/s, killed (SIGKILL: no clean-up) past 100 MB.
    before = len(remote.daemon.log_text())
    with remote.popen("download", job_id, "--to", str(to), "--limit-rate", "100M") as first:
        try:
            wait_for(
                "the .part to pass 100 MB", lambda: part.exists() and part.stat().st_size > 100 * MB
            )
            first.send_signal(signal.SIGKILL)
            first.wait(DEADLINE_S)
        finally:
            first.kill()
    cut = part.stat().st_size
    assert 100 * MB < cut < BIG_MB * MB and not (to / "blob.bin").exists()
    # The second run sends Range from the .part's size and receives only the rest.
    result = remote.ok("download", job_id, "--to", str(to), "--json")
    [fetched] = json.loads(result.stdout)["files"]
    assert fetched["resumed_from"] == cut
    assert fetched["received"] == BIG_MB * MB - cut
    assert fetched["sha256"] == asset["sha256"] == sha256_of(to / "blob.bin")
    assert not part.exists() and (to / "blob.bin").stat().st_size == BIG_MB * MB
    requests = asset_requests(remote, before)
    statuses = [re.search(r"jobferry\.access: (\d{3}) GET", ln).group(1) for ln in requests]  # type: ignore[union-attr]
    assert statuses == ["200", "206"], requests
    # Already there and intact: nothing is fetched again.
    again = json.loads(remote.ok("download", job_id, "--to", str(to), "--json").stdout)
    assert again["files"][0]["received"] == 0
    assert len(asset_requests(remote, before)) == len(requests)


def test_download__a_corrupt_part_file_fails_the_sha256_check(
    remote: Remote, tmp_path: Path
) -> None:
    details = finished_job(remote, "--", "--mb", "8")
    job_id = details["job_id"]
    whole = tmp_path / "whole"
    remote.ok("download", job_id, "--to", str(whole))
    to = tmp_path / "to"
    to.mkdir()
    data = bytearray((whole / "blob.bin").read_bytes()[: 5 * MB])
    data[1000] ^= 0xFF  # one flipped byte in what a "previous run" left
    part = to / "blob.bin.part"
    part.write_bytes(bytes(data))
    result = remote.run("download", job_id, "--to", str(to))
    assert result.returncode == 1 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("jobferry: error: blob.bin: sha256 mismatch")
    assert details["assets"][0]["sha256"] in line and "was corrupt and was removed" in line
    assert not part.exists() and not (to / "blob.bin").exists()  # nothing wrong is kept
    fixed = json.loads(remote.ok("download", job_id, "--to", str(to), "--json").stdout)
    assert fixed["files"][0]["resumed_from"] == 0
    assert sha256_of(to / "blob.bin") == details["assets"][0]["sha256"]


def in_pty(remote: Remote, *args: str) -> str:
    """Run the client with stdin, stdout and stderr on a new pseudo-terminal; all it drew."""
    leader, follower = pty.openpty()
    env = {**remote.env(), "TERM": "xterm-256color", "COLUMNS": "120"}
    proc = subprocess.Popen(
        remote.command(*args), stdin=follower, stdout=follower, stderr=follower, env=env
    )
    os.close(follower)
    out = b""
    try:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the last holder of the terminal has gone
                break
            if not chunk:
                break
            out += chunk
        assert proc.wait(DEADLINE_S) == 0, out.decode(errors="replace")
    finally:
        proc.kill()
        os.close(leader)
    return out.decode("utf-8", "replace")


def test_progress__bars_on_a_terminal_none_with_quiet_or_in_a_pipe(
    remote: Remote, tmp_path: Path
) -> None:
    doc = tmp_path / "doc.txt"
    doc.write_bytes(b"word " * (2 * MB // 5))
    submitted = in_pty(
        remote, "submit", SCRIPT, "--file", f"doc={doc}", "--", "-i", "doc", "--mb", "4"
    )
    assert BAR in submitted and "upload" in submitted  # the upload's bar
    job_id = re.findall(r"(?<![0-9a-f])([0-9a-f]{16})\r?\n", submitted)[-1]
    remote.ok("wait", job_id)
    drawn = in_pty(remote, "download", job_id, "--to", str(tmp_path / "a"))
    assert BAR in drawn and "blob.bin" in drawn and "copy.txt" in drawn
    assert re.search(r"4\.2/4\.2 MB", drawn), drawn  # rich's byte counts, in decimal units
    quiet = in_pty(remote, "download", job_id, "--to", str(tmp_path / "b"), "--quiet")
    assert BAR not in quiet and "\x1b[?25l" not in quiet  # no bar, no cursor hiding
    assert "blob.bin" in quiet  # the result lines are still printed
    piped = remote.ok("download", job_id, "--to", str(tmp_path / "c"))
    assert BAR not in piped.stdout + piped.stderr and "\x1b" not in piped.stdout + piped.stderr
    uploaded = remote.ok("submit", SCRIPT, "--file", f"doc={doc}", "--", "-i", "doc")
    assert BAR not in uploaded.stdout + uploaded.stderr
