"""Bodies sent to routes that take no upload (issue #10: "nothing an unauthenticated
client sends may cost more than a small, fixed amount of memory").

Guards: the HTTP server's body limit was ``server.max_upload_mb`` (1 GiB) for every
route, so an anonymous POST to a route that does not stream its body (a job's state
callback, a node's drain, a status GET that carries a body) was held whole in the
daemon's memory before its handler ran. Now such routes buffer at most
``server.max_form_kb``; only the streaming upload handlers raise the limit, once
their client is authorised.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.helpers import DaemonProcess

pytestmark = [pytest.mark.e2e, pytest.mark.engine_independent, pytest.mark.timeout(300)]

MIB = 1024 * 1024
UNKNOWN_JOB = "0123456789abcdef"
#: What a client may get to send before the daemon stops reading: the form limit
#: (64 KiB here), its slack, and what the kernel's socket buffers hold.
SENT_BOUND = 16 * MIB
DECLARED = 512 * MIB


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    data: Path = tmp_path_factory.mktemp("body-caps") / "data"
    proc = DaemonProcess(data, {"server": {"max_form_kb": 64}}).start()
    try:
        yield proc
    finally:
        proc.stop(60)


def push(daemon: DaemonProcess, method: str, target: str) -> tuple[int, bytes]:
    """Declare a 512 MiB body and send it until the daemon stops taking it; return the
    bytes it took and the start of its answer."""
    host, port = daemon.url.split("//")[1].rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=60)
    sent = 0
    try:
        head = (
            f"{method} {target} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {DECLARED}\r\n\r\n"
        )
        sock.sendall(head.encode())
        chunk = b" " * (256 * 1024)
        sock.settimeout(10)
        try:
            while sent < DECLARED:
                sock.sendall(chunk)
                sent += len(chunk)
                if sent > 4 * SENT_BOUND:
                    break
        except OSError:
            pass  # the daemon closed the connection: what we want
        sock.settimeout(60)
        try:
            answer = sock.recv(4096)
        except OSError:
            answer = b""
        return sent, answer
    finally:
        sock.close()


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("POST", f"/api/jobs/{UNKNOWN_JOB}/state"),
        ("PUT", "/api/nodes/somewhere/drain"),
        ("GET", f"/api/jobs/v1/{UNKNOWN_JOB}/status/"),
        ("GET", "/api/version"),
    ],
)
def test_anonymous_body_on_a_route_without_uploads__refused_after_the_form_limit(
    daemon: DaemonProcess, method: str, target: str
) -> None:
    """Fails on the old code: the daemon read the whole 512 MiB into memory."""
    sent, answer = push(daemon, method, target)
    assert sent <= SENT_BOUND, f"the daemon took {sent / MIB:.0f} MiB of an anonymous body"
    if answer:  # refused with a status (Tornado: 400 for a body over the limit), or 4xx JSON
        status = int(answer.split(b" ", 2)[1])
        assert 400 <= status < 500, answer[:200]
    # And it serves the next client as before.
    assert requests.get(daemon.url + "/api/version", timeout=60).status_code == 200
