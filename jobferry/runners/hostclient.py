"""The local runner's side of its job host (``jobhost.py``): start it, ask it to spawn.

One host per ``LocalRunner``, started at its first job and again after the host has
died (a job whose host is gone is followed through its files, as any job a
restarted daemon adopts). A spawn is one JSON line each way over a Unix socket pair,
under a lock (spawns come from worker threads); the reply carries the job's *done*
pipe (``SCM_RIGHTS``), which turns readable once the host has recorded the job's
end: the runner waits on it as it waited on the wrapper's pidfd.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobferry.errors import SubmitError
from jobferry.runners.jobhost import start_ticks

logger = logging.getLogger(__name__)

HOST_PY = Path(__file__).with_name("jobhost.py")
_REPLY_MAX = 1 << 16


@dataclass(frozen=True)
class Spawned:
    """A job the host started: its pid, its start time in clock ticks, the host's pid
    and start ticks, and the done pipe's read end (the caller owns it)."""

    pid: int
    ticks: int | None
    host_pid: int
    host_ticks: int | None
    done_fd: int


class HostClient:
    """Talks to one job host; thread-safe."""

    def __init__(self, python: str = sys.executable) -> None:
        self.python = python
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._pid = 0
        self._ticks: int | None = None

    def usable(self) -> str | None:
        for path, mode in ((self.python, os.X_OK), (str(HOST_PY), os.R_OK)):
            if not os.access(path, mode):
                return f"cannot run jobs: {path} is missing or not accessible"
        return None

    def _start(self) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            actions = [
                (os.POSIX_SPAWN_DUP2, theirs.fileno(), 0),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                # Not the daemon's stderr: a host outliving the daemon must not hold
                # its pipes open (a supervisor would wait for it). The host says what
                # goes wrong through the jobs' results.
                (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
            ]
            pid = os.posix_spawn(
                self.python,
                [self.python, "-I", "-S", str(HOST_PY)],
                dict(os.environ),
                file_actions=actions,
                setsid=True,  # not in the daemon's session: a stop or a ^C leaves it be
                setsigdef=(signal.SIGPIPE, signal.SIGINT),
                setsigmask=(),
            )
        except OSError as exc:
            ours.close()
            raise SubmitError(f"cannot start the job host: {exc}") from exc
        finally:
            theirs.close()
        self._sock, self._pid, self._ticks = ours, pid, start_ticks(pid)
        logger.info("started the job host as pid %d", pid)
        return ours

    def _drop(self, why: str = "") -> None:
        """Forget a host that stopped answering (it finishes its jobs on its own)."""
        if why:
            # Its jobs are followed by polling; those still running when it died end
            # without a recorded result (``lost``), as after a reboot.
            logger.warning("the job host (pid %d) has gone: %s", self._pid, why)
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._reap()

    def _reap(self) -> None:
        if self._pid:
            try:
                os.waitpid(self._pid, os.WNOHANG)
            except ChildProcessError:
                pass

    def spawn(self, request: dict[str, object]) -> Spawned:
        """Have the host start a job. Blocking (a few hundred microseconds).

        Raises:
            SubmitError: the host cannot be started, or it refused or failed the spawn.
        """
        line = json.dumps(request).encode() + b"\n"
        with self._lock:
            sock = self._sock
            if sock is None:
                sock = self._start()
            else:
                self._reap()  # a host that died since is a zombie of ours until now
            try:
                sock.sendall(line)
            except OSError as exc:  # gone before it read it: a new host takes it
                self._drop(f"cannot send it a job: {exc}")
                sock = self._start()
                sock.sendall(line)
            reply, fds = self._reply(sock)
        if "error" in reply or not fds:
            for fd in fds:
                os.close(fd)
            raise SubmitError(f"cannot start job: {reply.get('error', 'no reply')}")
        return Spawned(
            int(reply["pid"]),
            None if reply.get("ticks") is None else int(reply["ticks"]),
            self._pid,
            self._ticks,
            fds[0],
        )

    def _reply(self, sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
        data, fds = b"", []
        try:
            while not data.endswith(b"\n"):
                chunk, got, _, _ = socket.recv_fds(sock, _REPLY_MAX, 1)
                fds += got
                if not chunk:
                    break
                data += chunk
            parsed = json.loads(data) if data else {"error": "the job host has gone"}
        except (OSError, ValueError) as exc:
            parsed = {"error": f"the job host failed: {exc}"}
        if not data.endswith(b"\n"):
            self._drop(str(parsed.get("error", "no reply")))
        return parsed, fds

    def close(self) -> None:
        """Let the host go: it finishes the jobs it runs, then exits."""
        with self._lock:
            self._drop()

    def __del__(self) -> None:
        # A runner dropped without ``close`` lets its host go too (tests make many).
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
