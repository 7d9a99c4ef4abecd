"""GuardedHTTPServer keeps Tornado's header and body timeouts with its one sweep timer.

A real server on 127.0.0.1 in a thread (its own event loop), raw sockets as clients:
a connection that sends no request head is closed after the header timeout (and not
long before), a body still unfinished after the body timeout is closed even with no
minimum rate, a busy keep-alive connection is never closed, and nothing is left
under watch once the connections are gone.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import tornado.netutil
import tornado.web

from jobferry.daemon.connections import GuardedHTTPServer
from tests.helpers import DEADLINE_S, eventually

pytestmark = [pytest.mark.engine_independent, pytest.mark.timeout(180)]

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 2.0


class Hello(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write("hi")

    def post(self) -> None:
        self.write("got it")


@pytest.fixture
def served() -> Iterator[tuple[GuardedHTTPServer, tuple[str, int], asyncio.AbstractEventLoop]]:
    loop = asyncio.new_event_loop()
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    started = threading.Event()
    holder: dict[str, Any] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def start() -> None:
            server = GuardedHTTPServer(
                tornado.web.Application([(r"/", Hello)]),
                idle_connection_timeout=HEADER_TIMEOUT_S,
                body_timeout=BODY_TIMEOUT_S,
                max_per_address=100,
                min_body_rate=0.0,
            )
            server.add_sockets(sockets)
            holder["server"] = server
            started.set()

        loop.run_until_complete(start())
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(DEADLINE_S)
    server: GuardedHTTPServer = holder["server"]
    try:
        yield server, ("127.0.0.1", sockets[0].getsockname()[1]), loop
    finally:

        async def stop() -> None:
            server.stop()
            await server.close_all_connections()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(DEADLINE_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(DEADLINE_S)
        loop.close()


def closed(sock: socket.socket) -> bool:
    """True once the server has closed *sock* (what it sent before is read and dropped)."""
    sock.setblocking(False)
    try:
        while sock.recv(65536):
            pass
        return True
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


def on_loop(loop: asyncio.AbstractEventLoop, fn: Any) -> Any:
    async def call() -> Any:
        return fn()

    return asyncio.run_coroutine_threadsafe(call(), loop).result(DEADLINE_S)


def test_header_timeout__a_connection_without_a_request_head_is_closed_by_the_sweep(
    served: tuple[GuardedHTTPServer, tuple[str, int], asyncio.AbstractEventLoop],
) -> None:
    server, address, loop = served
    with (
        socket.create_connection(address, timeout=60) as idle,
        socket.create_connection(address, timeout=60) as slow,
    ):
        opened = time.monotonic()
        slow.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # a head never finished
        assert eventually(lambda: closed(idle) and closed(slow), 60)
        assert time.monotonic() - opened >= HEADER_TIMEOUT_S * 0.9
    assert eventually(lambda: on_loop(loop, lambda: not server._heads), 60)


def test_body_timeout__an_unfinished_body_is_closed_even_without_a_minimum_rate(
    served: tuple[GuardedHTTPServer, tuple[str, int], asyncio.AbstractEventLoop],
) -> None:
    server, address, loop = served
    with socket.create_connection(address, timeout=60) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
        started = time.monotonic()
        assert eventually(lambda: closed(sock), 60)
        assert time.monotonic() - started >= BODY_TIMEOUT_S * 0.9
    assert eventually(lambda: on_loop(loop, lambda: not server._uploads), 60)


def test_a_busy_keep_alive_connection_is_served_past_both_timeouts(
    served: tuple[GuardedHTTPServer, tuple[str, int], asyncio.AbstractEventLoop],
) -> None:
    server, address, loop = served
    with socket.create_connection(address, timeout=60) as sock:
        reader = sock.makefile("rb")
        deadline = time.monotonic() + 2 * BODY_TIMEOUT_S
        answered = 0
        while time.monotonic() < deadline:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab")
            assert reader.readline().startswith(b"HTTP/1.1 200"), "connection closed"
            while reader.readline() not in (b"\r\n", b""):
                pass
            assert reader.read(6) == b"got it"
            answered += 1
            time.sleep(HEADER_TIMEOUT_S / 5)
        assert answered >= 5
        reader.close()
    # Gone: nothing left under watch.
    assert eventually(lambda: on_loop(loop, lambda: not server._heads and not server._uploads), 60)
