"""Anonymous request bodies on every upload route, with the disk they use measured
(issue #10, item 3).

Guards: "without job_key the job_files body is still streamed to <data_dir>/tmp
up to max_upload_mb; 19 MiB from an anonymous client filled a 20 MiB filesystem
and a legitimate submit then got a 500". Keys (job_key in the query, API keys in
headers) are checked before a byte of the body is read; a job_key that only comes
in the form is accepted for bodies up to ``server.form_key_max_kb``, held in memory
until it is checked. So an unauthenticated client never gets a byte stored.

The daemon's data directory is a 20 MiB tmpfs (mounted and unmounted by the test).
"""

from __future__ import annotations

import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.faults._upload_clients import (
    BOUNDARY,
    MIB,
    Sampler,
    Upload,
    endless_chunks,
    field_part,
    file_part_head,
    multipart_body,
    request_head,
    send_all,
    written_chars,
)
from tests.helpers import JOB_SCRIPTS, DaemonProcess, eventually

pytestmark = [pytest.mark.e2e, pytest.mark.engine_independent, pytest.mark.timeout(300)]

UNKNOWN_JOB = "0123456789abcdef"
#: What the measured anonymous requests may add to the disk, and write(2) in all
#: (log lines); the old code wrote every form-keyed or keyless job_files body.
DISK_BOUND = 2 * MIB
WRITE_BOUND = 2 * MIB


@pytest.fixture
def daemon(small_fs: Callable[[int], Path]) -> Iterator[DaemonProcess]:
    """A daemon whose whole data directory is a 20 MiB filesystem."""
    data = small_fs(20)
    proc = DaemonProcess(data, {"server": {"max_upload_mb": 64}}).start()
    try:
        proc.client().add_script("sleeper", JOB_SCRIPTS / "sleeper.py")
        yield proc
    finally:
        proc.stop(60)


def answered(sock: socket.socket) -> bool:
    """Whether the daemon has answered (or closed) *sock*, without waiting."""
    sock.setblocking(False)
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)
    return True


def address_of(daemon: DaemonProcess) -> tuple[str, int]:
    host, port = daemon.url.split("//")[1].rsplit(":", 1)
    return host, int(port)


def used(path: Path) -> int:
    return shutil.disk_usage(path).used


def test_anonymous_19_mib_on_a_20_mib_disk__nothing_stored_and_a_submit_still_fits(
    daemon: DaemonProcess,
) -> None:
    """Fails on the old code: the keyless body was streamed to <data_dir>/tmp (disk
    peak ~19 MiB) and a submit during it found the disk full."""
    address = address_of(daemon)
    head = request_head(f"{address[0]}:{address[1]}", Upload(f"/api/jobs/{UNKNOWN_JOB}/files", b""))
    taken = 0
    streamed = threading.Event()
    sock = socket.create_connection(address, timeout=60)

    def stream() -> None:
        nonlocal taken
        try:
            first = file_part_head()
            sock.sendall(head + f"{len(first):x}\r\n".encode() + first + b"\r\n")
            for piece in endless_chunks(total=19 * MIB):
                sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                taken += len(piece)
        except OSError:
            pass  # answered (413) and closed by the daemon
        finally:
            streamed.set()

    try:
        with Sampler(lambda: used(daemon.data_dir)) as disk:
            sender = threading.Thread(target=stream, daemon=True)
            sender.start()
            assert streamed.wait(120), "the anonymous client is still sending"
            # The anonymous connection may still be open: a real client submits now.
            response = daemon.client().post(
                "/api/scripts/v1/sleeper/submit/",
                data={"job_name": "legit", "command": "0"},
                files={"extra": ("in.bin", b"i" * (4 * MIB))},
            )
        print(
            f"anonymous body: {taken / MIB:.1f} MiB sent; "
            f"disk +{(disk.peak - disk.first) / MIB:.2f} MiB"
        )
        assert response.status_code == 200 and response.json()["valid"], response.text
        assert taken < 19 * MIB, "the anonymous body should have been refused before its end"
        anonymous_peak = disk.peak - disk.first - 4 * MIB  # the legit submit's file counts too
        assert anonymous_peak <= DISK_BOUND, f"disk peak +{anonymous_peak / MIB:.1f} MiB"
    finally:
        sock.close()


def anonymous_mix(admin_job: str, count: int) -> list[Upload]:
    """*count* unauthenticated uploads spread over every upload route of every face."""
    body = multipart_body(b"a" * (64 * 1024))
    with_form_key = field_part("job_key", "0" * 64) + field_part("path", "work/x") + body
    kinds = [
        # job_files, no key anywhere (held in memory, then 400).
        Upload(f"/api/jobs/{UNKNOWN_JOB}/files", body, len(body), read_answer=True),
        # job_files, a wrong key in the form (held in memory, then 403).
        Upload(f"/api/jobs/{admin_job}/files", with_form_key, len(with_form_key), read_answer=True),
        # job_files, a wrong key in the query (403 before the body).
        Upload(
            f"/api/jobs/{admin_job}/files?job_key={'0' * 64}&path=work/x",
            body,
            len(body),
            read_answer=True,
        ),
        # job_files, no key and a body over server.form_key_max_kb (413 before the body).
        Upload(f"/api/jobs/{UNKNOWN_JOB}/files", body, 5 * MIB, read_answer=True),
        # job_files, no key, chunked (no length to refuse up front).
        Upload(f"/api/jobs/{UNKNOWN_JOB}/files", body, None, read_answer=True),
        # Wooey submit and script add-or-update, no API key (403 before the body).
        Upload("/api/scripts/v1/sleeper/submit/", body, len(body), read_answer=True),
        Upload("/api/scripts/v1/add-or-update/", body, len(body), read_answer=True),
        # Galaxy tool run, no key (its body is capped at server.max_form_kb, in memory).
        Upload("/api/tools", body, len(body), read_answer=True),
    ]
    return [kinds[i % len(kinds)] for i in range(count)]


def test_a_thousand_anonymous_uploads_on_every_route__no_byte_written(
    daemon: DaemonProcess,
) -> None:
    """Fails on the old code: keyless and form-keyed job_files bodies were written to
    disk (~16 MiB of write(2) for these 1,000) before the key was looked at."""
    assert daemon.proc is not None
    pid = daemon.proc.pid
    address = address_of(daemon)
    job_id = daemon.client().submit("sleeper", "300")
    try:
        send_all(address, anonymous_mix(job_id, 80))  # warm up
        before = written_chars(pid)
        with Sampler(lambda: used(daemon.data_dir)) as disk:
            statuses = send_all(address, anonymous_mix(job_id, 1000))
        wrote = written_chars(pid) - before
        print(
            f"1,000 anonymous uploads: {wrote} bytes written by the daemon, disk peak "
            f"+{disk.peak - disk.first} bytes; statuses {dict(statuses)}"
        )
        assert not [s for s in statuses if s is not None and (s < 400 or s >= 500)], statuses
        assert wrote <= WRITE_BOUND, f"{wrote} bytes written"
        assert disk.peak - disk.first <= DISK_BOUND, f"disk peak +{disk.peak - disk.first}"
        assert not [p for p in (daemon.data_dir / "tmp").rglob("*") if p.is_file()]
    finally:
        daemon.cli("job", "cancel", job_id, check=False)


def test_form_key_within_the_limit_is_still_accepted(daemon: DaemonProcess) -> None:
    """Galaxy's form-field job_key keeps working for bodies within server.form_key_max_kb."""
    admin = daemon.client()
    job_id = admin.submit("sleeper", "300")
    try:
        key = daemon.cli("job", "key", job_id).stdout.strip()
        content = b"f" * (512 * 1024)
        body = field_part("job_key", key) + field_part("path", "work/in-form.bin")
        body += multipart_body(content)
        url = f"{daemon.url}/api/jobs/{job_id}/files"
        headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
        ok = requests.post(url, data=body, headers=headers, timeout=60)
        assert ok.status_code == 200, ok.text
        job_dir = daemon.data_dir / "jobs" / job_id[:2] / job_id
        assert (job_dir / "work" / "in-form.bin").read_bytes() == content
        big = field_part("job_key", key) + field_part("path", "work/too-big.bin")
        big += multipart_body(b"g" * (2 * MIB))
        refused = requests.post(url, data=big, headers=headers, timeout=60)
        assert refused.status_code == 413, refused.text
        assert "query" in refused.json()["err_msg"]
        assert not (job_dir / "work" / "too-big.bin").exists()
    finally:
        daemon.cli("job", "cancel", job_id, check=False)


def test_form_keyed_bodies_waiting_at_once_are_bounded__429_then_released(
    daemon: DaemonProcess,
) -> None:
    """Fails on the old code (no bound): 32 bodies of server.form_key_max_kb that wait
    for their form's key take the whole in-memory budget; the next one gets 429 with
    Retry-After before its body is read, and the budget comes back when they leave."""
    address = address_of(daemon)
    host = f"{address[0]}:{address[1]}"
    target = f"/api/jobs/{UNKNOWN_JOB}/files"
    holders = []
    probe = multipart_body(b"p", {"job_key": "0" * 64, "path": "work/p"})

    def probe_status() -> int | None:
        return send_all(
            address, [Upload(target, probe, len(probe), read_answer=True)], 1
        ).most_common(1)[0][0]

    def hold() -> socket.socket:
        sock = socket.create_connection(address, timeout=60)
        upload = Upload(target, b"", 1024 * 1024)
        sock.sendall(request_head(host, upload) + file_part_head() + b"x" * 1024)
        return sock

    def exhausted() -> bool:
        # The daemon may take a probe's head before the last holders' (any order):
        # the probe then holds a little of the budget for a moment, and a holder
        # that comes after it is refused. Such a holder (it got an answer) holds again.
        for i, sock in enumerate(holders):
            if answered(sock):
                sock.close()
                holders[i] = hold()
        return probe_status() == 429

    try:
        for _ in range(32):
            holders.append(hold())
        assert eventually(exhausted, 60), "the budget should be exhausted"
        with socket.create_connection(address, timeout=60) as sock:
            sock.sendall(request_head(host, Upload(target, b"", len(probe))) + probe)
            answer = b""
            while b"\r\n\r\n" not in answer and (piece := sock.recv(65536)):
                answer += piece
        assert b" 429 " in answer.split(b"\r\n", 1)[0] and b"\r\nRetry-After: " in answer
    finally:
        for sock in holders:
            sock.close()
    assert eventually(lambda: probe_status() == 403, 60), "the budget should come back"
