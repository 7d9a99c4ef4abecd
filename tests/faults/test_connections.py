"""Slow and greedy clients against a real daemon: idle connections are closed, one
address cannot hold more than its share of connections, a trickling upload is cut off.
Each test names the failure it guards; every socket is closed at the end."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests

from tests.helpers import DaemonProcess, eventually, running_daemon

pytestmark = pytest.mark.engine_independent


def address(daemon: DaemonProcess) -> tuple[str, int]:
    host, port = daemon.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


@contextlib.contextmanager
def start(tmp_path: Path, server: dict[str, object]) -> Iterator[DaemonProcess]:
    with running_daemon(tmp_path / "data", {"server": server}) as daemon:
        yield daemon


@contextlib.contextmanager
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    try:
        yield opened
    finally:
        for sock in opened:
            sock.close()


def connect(daemon: DaemonProcess, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(address(daemon), timeout=60, source_address=(source, 0))


def closed_by_server(sock: socket.socket) -> bool:
    """True once the daemon has closed *sock* (non-blocking check)."""
    sock.setblocking(False)
    try:
        while sock.recv(65536):  # an answer first (a 503), then the close
            pass
        return True
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


def answer(sock: socket.socket, request: bytes) -> bytes:
    sock.settimeout(60)
    sock.sendall(request)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def open_fds(daemon: DaemonProcess) -> int:
    assert daemon.proc is not None
    return psutil.Process(daemon.proc.pid).num_fds()


def test_idle_connections__are_closed_after_the_idle_timeout(tmp_path: Path) -> None:
    """Guards: idle connections stayed open for 300 s (3,000 of them held 3,000
    descriptors); the configured idle timeout closes them."""
    config = {"idle_timeout_s": 2.0, "max_connections_per_address": 1000}
    with start(tmp_path, config) as daemon, sockets() as opened:
        before = open_fds(daemon)
        for _ in range(300):
            opened.append(connect(daemon))
        assert eventually(lambda: open_fds(daemon) >= before + 250, 60)
        assert eventually(lambda: all(closed_by_server(s) for s in opened), 60)
        assert eventually(lambda: open_fds(daemon) <= before + 5, 60)
        assert requests.get(daemon.url + "/api/version", timeout=60).status_code == 200
        # A request head sent too slowly counts against the same timer.
        slow = connect(daemon)
        opened.append(slow)
        slow.sendall(b"GET /api/version HTTP/1.1\r\n")
        assert eventually(lambda: closed_by_server(slow), 60)


def test_connections_per_address__over_the_cap_get_503_and_others_are_served(
    tmp_path: Path,
) -> None:
    """Guards: one client address could open connections without limit until the
    daemon ran out of descriptors (EMFILE: a traceback per accept, every client
    refused); over the cap it now answers a JSON 503 and closes, and serves others."""
    cap = 20
    config = {"max_connections_per_address": cap, "idle_timeout_s": 60.0}
    with start(tmp_path, config) as daemon, sockets() as opened:
        for _ in range(cap):
            opened.append(connect(daemon))
        # Each connection is counted once the daemon accepted it.
        request = b"GET /api/version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"

        def refused() -> bytes:
            extra = connect(daemon)
            opened.append(extra)
            return answer(extra, request)

        assert eventually(lambda: refused().startswith(b"HTTP/1.1 503"), 60)
        body = refused()
        head, _, payload = body.partition(b"\r\n\r\n")
        assert b"Retry-After: 5" in head and b"application/json" in head
        assert json.loads(payload)["error"] == "busy"
        # Another address is served meanwhile.
        other = connect(daemon, source="127.0.0.2")
        opened.append(other)
        assert answer(other, request).startswith(b"HTTP/1.1 200")
        # Once the first address lets go, it is served again.
        for sock in opened[:cap]:
            sock.close()
        assert eventually(
            lambda: requests.get(daemon.url + "/api/version", timeout=60).status_code == 200, 60
        )
        log = daemon.log_path.read_text()
        assert "refusing connections (503)" in log
        assert "Traceback" not in log and "Too many open files" not in log


def test_descriptor_limit__connections_past_it_get_503_not_emfile_tracebacks(
    tmp_path: Path,
) -> None:
    """Guards: with every descriptor taken, ``accept`` failed with EMFILE and Tornado
    logged a traceback for each attempt while every client was refused; the daemon now
    caps connections in all below its descriptor limit and answers 503 past it."""
    daemon = DaemonProcess(tmp_path / "data", {"server": {"max_connections_per_address": 5000}})
    daemon.command_prefix = ["prlimit", "--nofile=400:400"]
    daemon.start()
    try:
        with sockets() as opened:
            for n in range(500):  # from several addresses, so the per-address cap is not it
                opened.append(connect(daemon, source=f"127.0.0.{2 + n % 50}"))
            request = b"GET /api/version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"

            def late() -> bytes:
                sock = connect(daemon, source="127.0.1.1")
                opened.append(sock)
                return answer(sock, request)

            # (Once the refusals being answered are done: past 64, they just close.)
            assert eventually(lambda: late().startswith(b"HTTP/1.1 503"), 60)
            for sock in opened:
                sock.close()
            assert eventually(
                lambda: requests.get(daemon.url + "/api/version", timeout=60).status_code == 200,
                60,
            )
        log = daemon.log_path.read_text()
        assert "refusing connections (503)" in log
        assert "Traceback" not in log and "Too many open files" not in log, log[-3000:]
    finally:
        daemon.stop()


def test_slow_upload__is_cut_off_below_the_minimum_rate(tmp_path: Path) -> None:
    """Guards: a body trickling in a byte at a time held its connection (and a request
    slot) for the whole hour-long body timeout; below the minimum rate it is closed."""
    config = {"min_body_rate_kbps": 1.0, "body_grace_s": 2.0}
    with start(tmp_path, config) as daemon, sockets() as opened:
        slow = connect(daemon)
        opened.append(slow)
        slow.sendall(
            b"POST /api/tools HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000\r\n\r\n{"
        )
        started = time.monotonic()
        assert eventually(lambda: closed_by_server(slow), 60)
        assert time.monotonic() - started >= 1.5  # not before the grace period
        assert "closing a slow upload" in daemon.log_path.read_text()
        # A body sent at once is unaffected.
        response = requests.post(
            daemon.url + "/api/tools",
            data=json.dumps({"tool_id": "nope", "inputs": {}}),
            headers={"x-api-key": daemon.admin_key},
            timeout=60,
        )
        assert response.status_code == 404, response.text
