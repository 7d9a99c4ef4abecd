"""The job host: one small process per local runner that starts jobs and records their end.

Run as ``python -I -S jobhost.py`` by ``jobferry.runners.hostclient`` (standard library
only: it imports nothing of jobferry). Its standard input is a Unix stream socket to
the daemon; requests are JSON lines, each answered by one JSON line.

Why a host and not a shell wrapper per job: ``wrapper.sh`` forks and execs a shell and
two ``dd`` log filters per job (about 8 ms of CPU for a job that does nothing; see
``bench/per_job.py``). The host is started once; per job it makes one ``posix_spawn``
of the job itself, reads the job's two pipes, and writes the same files the wrapper
writes, with the same guarantees:

- **The pid file first.** ``<result>.pid`` ("pid start_ticks") is written before the
  reply, so a daemon that dies before recording the handle finds the job instead of
  starting it twice.
- **The result before the pid is free.** The job stays a zombie (``waitid`` with
  ``WNOWAIT``) until its streams have ended and ``<result>`` says ``exit_code=N``; only
  then is it reaped. Whoever sees the process gone finds the result, exactly as when
  the wrapper itself was the process. The reap's rusage (exact CPU, peak memory) then
  replaces the file atomically, and the job's *done* pipe is closed: the daemon that
  started the job waits on that pipe (passed to it with the reply), not on the pid.
- **Outlives the daemon.** The host leads its own session. When the daemon's socket
  closes (a restart, a crash) it takes no new jobs, finishes those it has, and exits.
  A job whose host is killed ends up as its wrapper's did when killed: its pipes
  break and no result is written (``LOST``).
- **Log caps** (``jobs.max_log_mb``) as in ``wrapper.sh``: a log beyond the cap keeps
  its first half and its last half with one marker line that says exactly how many
  bytes were dropped; a running job's log is the file itself (its head, written as it
  comes); the overflow goes through a ring of nine chunk files of an eighth of the
  half each, so the disk holds at most about 1.125 x cap per log at every write. On
  a full disk a log's stream is drained (the job is never killed by SIGPIPE) and the
  result says ``disk_full=1``; a result that cannot be written is retried each second
  while its directory exists and is writable.
- **The job's own status and signals.** Exit code N, or 128+signal; the job leads
  its own session with default signal dispositions and an empty mask; a cancel's
  SIGTERM to that session does not reach the host. A job with ``JOBFERRY_MEMORY_KB``
  in its environment is started through ``sh`` (``ulimit -v``), and a program that
  cannot be executed (not found, not executable, no ``#!``) is handed to ``sh``'s
  ``exec``, which says why on stderr and exits 126/127, as under the wrapper.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import selectors
import signal
import socket
import sys
import time
from typing import Any

Actions = list[tuple[Any, ...]]  # posix_spawn's file actions
SHELL = "/bin/sh"
_LIMIT_MEMORY = 'ulimit -v "$JOBFERRY_MEMORY_KB"; exec "$@"'  # the job's address space
CHUNK_FILES = 9  # the overflow ring: 8 chunks hold the tail, 1 is being written
_TICK = os.sysconf("SC_CLK_TCK")
_MARKER = (
    "\n[jobferry: {d} bytes dropped here; this log keeps its first {h} and last {t} "
    "bytes (jobs.max_log_mb)]\n"
)


def _read_proc(path: str) -> bytes:
    """A /proc file's text (no file object: its fstat, ioctl and lseeks, for each job)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 8192):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def start_ticks(pid: int) -> int | None:
    """Return the process start time in clock ticks since boot (immune to clock steps).
    Defined here, where only the standard library may be used; ``proctree`` uses it."""
    try:
        stat = _read_proc(f"/proc/{pid}/stat")
        return int(stat[stat.rindex(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _ticks_between(pid: int, before_ns: int, after_ns: int) -> int | None:
    """The start ticks of child *pid*, started between two readings of CLOCK_BOOTTIME:
    the kernel stamps a new process with that clock, which ``/proc/<pid>/stat`` gives
    in ticks rounded down. Both readings in one tick: that tick, without the ~20 us of
    reading /proc, which is left for the spawn or two in a hundred across a tick."""
    ns_per_tick, rest = divmod(10**9, _TICK)
    first, last = before_ns // ns_per_tick, after_ns // ns_per_tick
    return first if first == last and not rest else start_ticks(pid)


def _own_hwm_kb() -> int:
    """The peak RSS of this process's address space: a child starts from it (it runs
    in that space until its exec), so only a larger ``ru_maxrss`` is the job's. Not
    ``getrusage``: that also counts the daemon's space, which this host started in."""
    try:
        for line in _read_proc("/proc/self/status").splitlines():
            if line.startswith(b"VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _zombie_cpu(pid: int) -> tuple[float, float]:
    """User and system CPU of an unreaped child and its reaped descendants (clock ticks:
    the first result; the reap's exact rusage replaces it)."""
    try:
        stat = _read_proc(f"/proc/{pid}/stat")
        fields = stat[stat.rindex(b")") + 2 :].split()
        ut, st, cut, cst = (int(x) for x in fields[11:15])
        return (ut + cut) / _TICK, (st + cst) / _TICK
    except (OSError, ValueError, IndexError):
        return 0.0, 0.0


def _times(user: float, sys_: float) -> str:
    """The ``times`` builtin's format, which ``wrapper.read_result`` parses."""
    return f"{int(user // 60)}m{user % 60:.6f}s {int(sys_ // 60)}m{sys_ % 60:.6f}s"


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_file(path: str, text: str) -> None:
    """Create or truncate *path* holding *text* (no file object: its fstat, ioctl and
    lseeks, for three files a job). No fsync (a journal commit per file): jobs do not
    survive a crash of the machine, nor need their first result or pid file to; the
    final result replaces the first by rename, which ext4 (``auto_da_alloc``) and btrfs
    order after its data (elsewhere a crash may leave it empty: ``lost``)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    try:
        _write_all(fd, text.encode())
    finally:
        os.close(fd)


class CappedLog:
    """One stream of a job into its log file, kept within the cap (0: no cap)."""

    def __init__(self, path: str, cap: int) -> None:
        self.path = path
        self.cap = cap
        self.head = cap // 2
        self.tail = cap - self.head
        self.chunk = max(1, -(-self.tail // (CHUNK_FILES - 1)))
        self.seen = 0  # bytes the job wrote
        self.disk_full = False
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        self.chunk_fd = -1
        self.chunk_no = -1

    def _chunk_path(self, no: int) -> str:
        return f"{self.path}.{no % CHUNK_FILES}"

    def write(self, data: bytes) -> None:
        start, self.seen = self.seen, self.seen + len(data)
        if self.disk_full:
            return  # drained: the job goes on, its log stays as it was
        try:
            if not self.cap or start < self.head:
                n = len(data) if not self.cap else min(len(data), self.head - start)
                _write_all(self.fd, data[:n])
                data, start = data[n:], start + n
            while data:  # the overflow, into the ring of chunks
                over = start - self.head
                no, offset = divmod(over, self.chunk)
                if no != self.chunk_no:
                    if self.chunk_fd >= 0:
                        os.close(self.chunk_fd)
                        self.chunk_fd = -1
                    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
                    self.chunk_fd = os.open(self._chunk_path(no), flags, 0o600)
                    self.chunk_no = no
                n = min(len(data), self.chunk - offset)
                _write_all(self.chunk_fd, data[:n])
                data, start = data[n:], start + n
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                print(f"jobhost: cannot write {self.path}: {exc}", file=sys.stderr)
            self.disk_full = True

    def close(self) -> None:
        """Append the kept overflow (with the marker if bytes were dropped), remove the
        chunks and close the log."""
        if self.chunk_fd >= 0:
            os.close(self.chunk_fd)
        over = max(0, self.seen - self.head) if self.cap else 0
        try:
            if over and not self.disk_full:
                first = max(0, over - self.tail)  # the first overflow byte kept
                if first:
                    marker = _MARKER.format(d=first, h=self.head, t=self.tail)
                    _write_all(self.fd, marker.encode())
                no, offset = divmod(first, self.chunk)
                while no <= self.chunk_no:
                    self._append_chunk(no, offset)
                    no, offset = no + 1, 0
        except OSError as exc:
            print(f"jobhost: cannot finish {self.path}: {exc}", file=sys.stderr)
            self.disk_full = True
        finally:
            for no in range(max(0, self.chunk_no - CHUNK_FILES + 1), self.chunk_no + 1):
                try:
                    os.unlink(self._chunk_path(no))
                except OSError:
                    pass
            os.close(self.fd)

    def _append_chunk(self, no: int, offset: int) -> None:
        src = os.open(self._chunk_path(no), os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(src).st_size
            while offset < size:
                sent = os.sendfile(self.fd, src, offset, size - offset)
                if not sent:
                    break
                offset += sent
        finally:
            os.close(src)
        os.unlink(self._chunk_path(no))  # at most a chunk more than the log at any time


class Job:
    """A job the host started and has not finished recording."""

    def __init__(self, pid: int, req: dict[str, Any], done_w: int) -> None:
        self.pid = pid
        self.result = str(req["result"])
        self.done_w = done_w
        self.logs: dict[int, CappedLog] = {}  # pipe fd -> its log
        self.status: int | None = None  # the exit code, once the process has exited
        self.disk_full = False
        self.retry_at = 0.0


class Host:
    """The host's loop: requests on the daemon's socket, job output, SIGCHLD."""

    def __init__(self, ctrl: socket.socket) -> None:
        self.ctrl = ctrl
        self.sel = selectors.DefaultSelector()
        self.jobs: dict[int, Job] = {}  # pid -> job
        self.pipes: dict[int, Job] = {}  # pipe fd -> job
        self.buf = b""
        self.attached = True
        # The host's own peak RSS, the floor of every job's ``ru_maxrss``: it only grows
        # and seldom does, so it is read again when a job's peak is above it, not per job.
        self.floor_kb = _own_hwm_kb()
        self.wake_r, wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        for sig in (signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        self.sel.register(self.wake_r, selectors.EVENT_READ, "wake")
        self.sel.register(ctrl, selectors.EVENT_READ, "ctrl")

    def run(self) -> None:
        while self.attached or self.jobs:
            retrying = [j.retry_at for j in self.jobs.values() if j.retry_at]
            timeout = max(0.0, min(retrying) - time.monotonic()) if retrying else None
            for key, _ in self.sel.select(timeout):
                self._guarded(self._dispatch, key.data, key.fd)
            for job in [j for j in self.jobs.values() if j.retry_at]:
                if job.retry_at <= time.monotonic():
                    self._guarded(self._finish, job)

    def _guarded(self, handler: Any, *args: Any) -> None:
        """Run one handler; an unexpected error is this event's, never the host's end
        (which would leave every other job unrecorded)."""
        try:
            handler(*args)
        except Exception as exc:  # noqa: BLE001
            print(f"jobhost: {handler.__name__} failed: {exc!r}", file=sys.stderr)

    def _dispatch(self, what: str, fd: int) -> None:
        if what == "ctrl":
            self._requests()
        elif what == "wake":
            try:
                os.read(self.wake_r, 4096)
            except BlockingIOError:
                pass
            self._reap()
        elif fd in self.pipes:
            self._output(fd)

    # --- requests -------------------------------------------------------------------

    def _requests(self) -> None:
        try:
            data = self.ctrl.recv(1 << 16)
        except OSError:
            data = b""
        if not data:  # the daemon has gone: finish what runs, then exit
            self.sel.unregister(self.ctrl)
            self.attached = False
            return
        self.buf += data
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            fds: list[int] = []
            try:
                reply, fds = self._spawn(json.loads(line))
            except Exception as exc:  # noqa: BLE001 - any failure is this job's, not the host's
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            try:
                socket.send_fds(self.ctrl, [json.dumps(reply).encode() + b"\n"], fds)
            except OSError:
                pass  # the daemon has gone; the job runs on and is recorded
            finally:
                for fd in fds:
                    os.close(fd)

    def _spawn(self, req: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        argv = [str(a) for a in req["argv"]]
        env = {str(k): str(v) for k, v in req["env"].items()}
        cap = int(req["cap"])
        if "JOBFERRY_MEMORY_KB" in env:
            argv = [SHELL, "-c", _LIMIT_MEMORY, "jobferry-job", *argv]
        actions: Actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)]
        logs: dict[int, CappedLog] = {}
        reads: list[int] = []
        ends: list[int] = []
        try:
            for fd, path in ((1, req["out"]), (2, req["err"])):
                r, w = os.pipe()
                reads.append(r)
                ends.append(w)
                logs[r] = CappedLog(str(path), cap)
                actions.append((os.POSIX_SPAWN_DUP2, w, fd))
            before = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
            pid = self._posix_spawn(argv, env, str(req["cwd"]), actions)
            after = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        except BaseException:
            for r in reads:
                os.close(r)
            for log in logs.values():
                log.close()
            raise
        finally:
            for w in ends:
                os.close(w)
        ticks = _ticks_between(pid, before, after)
        try:
            _write_file(str(req["result"]) + ".pid", f"{pid} {ticks}\n")
        except OSError:
            pass  # as the wrapper's `echo $$ >"$r.pid"`: the handle is the record
        done_r, done_w = os.pipe()
        job = Job(pid, req, done_w)
        for r, log in logs.items():
            os.set_blocking(r, False)
            job.logs[r] = log
            self.pipes[r] = job
            self.sel.register(r, selectors.EVENT_READ, "out")
        self.jobs[pid] = job
        return {"pid": pid, "ticks": ticks}, [done_r]

    def _posix_spawn(self, argv: list[str], env: dict[str, str], cwd: str, actions: Actions) -> int:
        """Start argv in cwd as execvp would with *env*'s PATH; a program that cannot be
        executed goes to ``sh -c 'exec "$@"'`` for the shell's message and exit code
        (126, 127; a script without ``#!`` runs as a shell script)."""
        # posix_spawnp searches PATH in its child (in C, on the job's CPU time as under
        # the wrapper's shell; not a stat and an access per directory here, nor a cache
        # to go stale), but the caller's PATH: make the host's the job's (or none).
        if os.environ.get("PATH") != env.get("PATH"):
            os.environ.pop("PATH", None)
            if "PATH" in env:
                os.environ["PATH"] = env["PATH"]
        os.chdir(cwd)
        try:
            return _spawn_one(argv[0], argv, env, actions, search=True)
        except OSError:
            return _spawn_one(
                SHELL, [SHELL, "-c", 'exec "$@"', "jobferry-job", *argv], env, actions
            )
        finally:
            os.chdir("/")

    # --- output and ends ------------------------------------------------------------

    def _output(self, fd: int) -> None:
        job = self.pipes[fd]
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            job.logs[fd].write(data)
            return
        self.sel.unregister(fd)
        os.close(fd)
        del self.pipes[fd]
        log = job.logs.pop(fd)
        log.close()
        job.disk_full = job.disk_full or log.disk_full
        if job.status is not None and not job.logs:
            self._finish(job)

    def _reap(self) -> None:
        """Note which jobs have exited (they stay zombies until their result is written)."""
        for job in list(self.jobs.values()):
            if job.status is not None:
                continue
            try:
                info = os.waitid(os.P_PID, job.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                info = None
                job.status = 255
            if info is not None:
                code = info.si_status
                job.status = code if info.si_code == os.CLD_EXITED else 128 + code
            if job.status is not None and not job.logs:
                self._finish(job)

    def _finish(self, job: Job) -> None:
        """Write the result (retried each second on a full disk), then reap, then the
        exact figures, then tell the daemon through the done pipe."""
        user, sys_ = _zombie_cpu(job.pid)
        head = f"exit_code={job.status}\n"
        flags = "disk_full=1\n" if job.disk_full else ""
        try:
            _write_file(job.result, f"{head}cpu={_times(0, 0)}\ncpu={_times(user, sys_)}\n{flags}")
        except OSError:
            directory = os.path.dirname(job.result) or "."
            if os.path.isdir(directory) and os.access(directory, os.W_OK):
                job.disk_full = True
                job.retry_at = time.monotonic() + 1.0
                return
            print(f"jobhost: cannot write {job.result}; giving up", file=sys.stderr)
        job.retry_at = 0.0
        try:
            _, _, usage = os.wait4(job.pid, 0)
        except ChildProcessError:
            usage = None
        if usage is not None:
            if usage.ru_maxrss > self.floor_kb:
                # The host's may have grown: never report it as the job's (a job's peak
                # under a grown host's goes unreported; the runner's samples may see it).
                self.floor_kb = _own_hwm_kb()
            peak = f"peak_rss_kb={usage.ru_maxrss}\n" if usage.ru_maxrss > self.floor_kb else ""
            cpu = f"cpu={_times(0, 0)}\ncpu={_times(usage.ru_utime, usage.ru_stime)}\n"
            tmp = job.result + ".tmp"
            try:
                _write_file(tmp, f"{head}{cpu}{peak}{flags}")
                os.replace(tmp, job.result)
            except OSError:
                pass  # the first result stands
        del self.jobs[job.pid]
        os.close(job.done_w)


def _spawn_one(
    path: str, argv: list[str], env: dict[str, str], actions: Actions, search: bool = False
) -> int:
    """The job leads its own session, with default SIGPIPE and SIGXFSZ (ignored here)
    and no blocked signals. *search*: *path* is looked up in PATH as by execvp."""
    spawn = os.posix_spawnp if search else os.posix_spawn
    return spawn(
        path,
        argv,
        env,
        file_actions=actions,
        setsid=True,
        setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
        setsigmask=(),
    )


def main() -> None:
    ctrl_fd = os.dup(0)  # not inheritable, unlike fd 0
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd in [int(name) for name in os.listdir("/proc/self/fd")]:
        if fd > 2 and fd != ctrl_fd:  # what the daemon inherited: not the jobs' business
            try:
                os.close(fd)
            except OSError:
                pass  # the listing's own descriptor, already closed
    ctrl = socket.socket(fileno=ctrl_fd)
    Host(ctrl).run()


if __name__ == "__main__":
    main()
