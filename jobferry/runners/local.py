"""The local runner: jobs as process trees on this machine that outlive the daemon.

Owns spawning jobs under ``wrapper.sh`` (each in its own session), learning of
their end through a pidfd, reaping its own children, enforcing walltime,
killing whole process trees, and reading the wrapper's result file so that a
restarted daemon can re-attach to jobs an earlier daemon started. A job's peak
memory is the larger of what ``wait4`` reports above the daemon's own peak and
the samples ``wait`` takes of the job's processes (``runners.memory``).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import psutil

from jobferry.errors import RunnerError, SubmitError
from jobferry.runners.base import (
    HandlePayload,
    RunHandle,
    RunMetrics,
    Runner,
    RunSpec,
    RunState,
    RunStatus,
)
from jobferry.runners.joblog import job_of
from jobferry.runners.proctree import (
    create_time_of,
    signal_tree,
    start_ticks,
    tree_peak_rss_kb,
    wait_gone,
    wait_job_exec,
)
from jobferry.runners.wrapper import WRAPPER, clear_stale, read_kill, read_result, record_kill

logger = logging.getLogger(__name__)

_CREATE_TIME_TOLERANCE_S = 0.01
_LOST_REASON = "process ended without recording a result"
#: First and longest interval between samples of a running job's peak memory, seconds.
SAMPLE_FIRST_S = 0.25
SAMPLE_MAX_S = 2.0


@dataclass(frozen=True)
class LocalPayload(HandlePayload):
    """What a local handle carries: the wrapper process and its files.

    ``pid`` with ``start_ticks`` (or, where those are unknown, ``create_time``)
    identifies the wrapper even after its pid is reused.
    """

    runner: ClassVar[str] = "local"

    pid: int
    create_time: float
    result_path: str
    start_ticks: int | None = None
    stdout_path: str = ""
    stderr_path: str = ""
    walltime_s: float | None = None


class LocalRunner(Runner):
    """Runs jobs as local processes, each under ``wrapper.sh`` in its own session.

    Args:
        kill_grace_s: How long ``cancel`` waits after SIGTERM before SIGKILL.
        shell: The POSIX shell that runs the wrapper.
    """

    name = "local"
    quick_submit = True

    def __init__(self, kill_grace_s: float = 5.0, shell: str = "/bin/sh") -> None:
        self.kill_grace_s = kill_grace_s
        self.shell = shell
        self._children: set[int] = set()  # pids this instance spawned and has not reaped
        self._killed: dict[str, str] = {}  # external_id -> cancel reason
        self._final: dict[str, RunStatus] = {}  # external_id -> final status once known
        # pid -> our own peak RSS when we spawned it: exec from our address space sets the
        # wrapper's ru_maxrss to that, so only a larger figure can be the job's.
        self._spawn_rss_kb: dict[int, int] = {}
        self._peak_kb: dict[str, int] = {}  # external_id -> highest sample of the job's tree
        self._lock = threading.Lock()

    # --- submit / adopt -----------------------------------------------------------

    def submit(self, spec: RunSpec) -> RunHandle:
        """Start the job under the wrapper and return its handle. Blocking; not idempotent.

        Raises:
            SubmitError: argv is empty or starts with ``-``, the workdir or an
                output directory does not exist, or the wrapper cannot be spawned.
        """
        if not spec.argv or spec.argv[0].startswith("-"):
            raise SubmitError(f"invalid argv for job {spec.job_id}: {list(spec.argv)!r}")
        if not os.path.isdir(spec.workdir):
            raise SubmitError(f"working directory {spec.workdir} does not exist")
        for path in (spec.stdout_path, spec.stderr_path, spec.result_path):
            if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
                raise SubmitError(f"directory for {path} does not exist")
        clear_stale(spec.result_path, ("", ".tmp", ".killed", ".pid"))
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "HOME": spec.workdir,
        }
        env.update((k, os.environ[k]) for k in ("TMPDIR", "USER", "LOGNAME") if k in os.environ)
        env.update(spec.env)
        argv = [self.shell, str(WRAPPER), spec.workdir, spec.stdout_path, spec.stderr_path]
        argv += [spec.result_path, str(spec.max_log_bytes), "--", *spec.argv]
        devnull = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
        started_at = time.time()
        try:
            pid = os.posix_spawn(
                self.shell,
                argv,
                env,
                file_actions=devnull,
                setsid=True,
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
                setsigmask=(),
            )
        except (OSError, ValueError) as exc:
            raise SubmitError(f"cannot start job {spec.job_id}: {exc}") from exc
        with self._lock:
            self._children.add(pid)
            self._spawn_rss_kb[pid] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # Our unreaped child cannot vanish, so this lookup cannot race with pid reuse:
        # one read of /proc/<pid>/stat (psutil.Process would read it twice more).
        ticks = start_ticks(pid)
        create_time = time.time() if ticks is None else create_time_of(ticks)
        payload = LocalPayload(
            pid=pid,
            create_time=create_time,
            start_ticks=ticks,
            result_path=spec.result_path,
            stdout_path=spec.stdout_path,
            stderr_path=spec.stderr_path,
            walltime_s=spec.walltime_s,
        )
        logger.info("started job %s as pid %d", spec.job_id, pid)
        return RunHandle.of(self.name, f"{pid}@{create_time}", started_at, payload)

    def find(self, spec: RunSpec) -> RunHandle | None:
        """Find a wrapper started for *spec* whose handle was never stored. Blocking.

        The wrapper writes its pid to ``<result_path>.pid`` before anything else;
        the process is accepted only if its command line names this job's result
        file. A wrapper that already ended yields a handle whose ``poll`` reads
        its result file (or reports it lost).
        """
        try:
            pid = int(Path(spec.result_path + ".pid").read_text().strip())
        except (OSError, ValueError):
            return None
        create_time, ticks = 0.0, -1
        try:
            proc = psutil.Process(pid)
            if spec.result_path in proc.cmdline():
                create_time, ticks = proc.create_time(), start_ticks(pid) or -1
        except psutil.Error:
            pass
        payload = LocalPayload(
            pid=pid,
            create_time=create_time,
            start_ticks=ticks,
            result_path=spec.result_path,
            stdout_path=spec.stdout_path,
            stderr_path=spec.stderr_path,
            walltime_s=spec.walltime_s,
        )
        started_at = create_time or os.path.getmtime(spec.result_path + ".pid")
        return RunHandle.of(self.name, f"{pid}@{create_time}", started_at, payload)

    def adopt(self, handle: RunHandle, spec: RunSpec) -> None:
        """Check that *handle* is a well-formed local handle. Blocking; idempotent.

        Raises:
            RunnerError: the handle is not from a local runner or is malformed.
        """
        if handle.runner != self.name:
            raise RunnerError(f"cannot adopt a {handle.runner!r} handle in the local runner")
        LocalPayload.of(handle)

    # --- status -----------------------------------------------------------------

    def _process(self, job: LocalPayload) -> psutil.Process | None:
        """Return the job's wrapper process if it still exists and is the same process."""
        try:
            proc = psutil.Process(job.pid)
            if job.start_ticks is not None:
                same = start_ticks(job.pid) == job.start_ticks
            else:
                same = abs(proc.create_time() - job.create_time) <= _CREATE_TIME_TOLERANCE_S
            return proc if same else None
        except psutil.Error:
            return None

    def _alive(self, job: LocalPayload) -> bool:
        """True while the wrapper runs (a zombie that is not ours counts as ended)."""
        proc = self._process(job)
        try:
            return proc is not None and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def poll(self, handle: RunHandle) -> RunStatus:
        """Return the job's status, reaping it if it is our ended child. Blocking; idempotent."""
        job = LocalPayload.of(handle)
        with self._lock:
            final = self._final.get(handle.external_id)
            if final is not None:
                return final
            if job.pid in self._children:
                try:
                    pid, wait_status, rusage = os.wait4(job.pid, os.WNOHANG)
                except ChildProcessError:  # reaped by someone else: fall back to the files
                    self._children.discard(job.pid)
                    self._spawn_rss_kb.pop(job.pid, None)
                else:
                    if pid == 0:
                        return RunStatus(RunState.RUNNING)
                    self._children.discard(job.pid)
                    return self._conclude(handle, job, wait_status, rusage)
            elif self._alive(job):
                return RunStatus(RunState.RUNNING)
            return self._conclude(handle, job, None, None)

    def _conclude(
        self,
        handle: RunHandle,
        job: LocalPayload,
        wait_status: int | None,
        rusage: Any,
    ) -> RunStatus:
        """Build and cache the final status from the wait status and/or the files."""
        now = time.time()
        result = read_result(job.result_path)
        killed = self._killed.get(handle.external_id)
        if killed is None:
            killed = read_kill(job.result_path)
        exit_code = None if result is None else result.exit_code
        if exit_code is None and wait_status is not None:
            code = os.waitstatus_to_exitcode(wait_status)
            exit_code = code if code >= 0 else 128 - code
        # Our own child is reaped the moment it ends; else the result file's mtime says when.
        finished_at = now if rusage is not None or result is None else result.mtime
        reason: str | None
        if killed is not None:
            state, reason = RunState.KILLED, killed
        elif result is not None and result.exit_code is not None:
            state, reason = RunState.EXITED, result.reason
        elif wait_status is not None and os.WIFEXITED(wait_status):
            state, reason = RunState.EXITED, "result file missing; exit code from the wrapper"
        else:
            state, exit_code = RunState.LOST, None
            lost = (result.reason if result is not None else None) or _LOST_REASON
            if wait_status is not None and os.WIFSIGNALED(wait_status):
                lost += f" (wrapper killed by signal {os.WTERMSIG(wait_status)})"
            reason = lost
        sampled = self._peak_kb.get(handle.external_id)
        if rusage is not None:
            floor = self._spawn_rss_kb.pop(job.pid, 0)
            measured = rusage.ru_maxrss if rusage.ru_maxrss > floor else None
            metrics = RunMetrics(
                wall_s=max(0.0, finished_at - handle.started_at),
                cpu_user_s=rusage.ru_utime,
                cpu_sys_s=rusage.ru_stime,
                peak_rss_kb=max(measured or 0, sampled or 0) or None,
            )
        else:
            metrics = RunMetrics(
                wall_s=None if result is None else max(0.0, finished_at - handle.started_at),
                cpu_user_s=None if result is None else result.cpu_user_s,
                cpu_sys_s=None if result is None else result.cpu_sys_s,
                peak_rss_kb=sampled,
            )
        disk_full = result is not None and result.disk_full  # no second read of the file
        status = RunStatus(state, exit_code, reason, finished_at, metrics, disk_full)
        self._final[handle.external_id] = status
        logger.info(
            "job %s ended: %s exit=%s%s (process %s)",
            job_of(job.result_path),
            state,
            exit_code,
            f" {reason}" if reason else "",
            handle.external_id,
        )
        return status

    # --- waiting ----------------------------------------------------------------

    def _pidfd(self, job: LocalPayload) -> int | None:
        """Open a pidfd on the wrapper; -1 if it is already gone, None if unsupported."""
        try:
            fd = os.pidfd_open(job.pid)
        except ProcessLookupError:
            return -1
        except AttributeError:
            return None
        except OSError as exc:
            if exc.errno not in (errno.ENOSYS, errno.EPERM):
                # E.g. EMFILE with many jobs: polling still follows the job.
                logger.warning(
                    "job %s: pidfd_open(%d) failed (%s); polling instead",
                    job_of(job.result_path),
                    job.pid,
                    exc,
                )
            return None
        # Check identity after opening, so the fd cannot refer to a reused pid.
        if job.pid not in self._children and self._process(job) is None:
            os.close(fd)
            return -1
        return fd

    async def wait(self, handle: RunHandle) -> RunStatus:
        """Wait for the job's end without polling (pidfd) and enforce its walltime.

        On walltime expiry it runs ``cancel`` in the default executor with reason
        ``walltime exceeded (<N>s)``. Falls back to polling with back-off where
        pidfds are unavailable. Cancelling the coroutine leaves the job running.

        Raises:
            RunnerError: the handle is malformed.
        """
        status = await self.wait_ended(handle)
        delay = 0.05
        while status is None or not status.is_final:  # not expected once the pidfd fired
            if status is not None:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            status = await asyncio.get_running_loop().run_in_executor(None, self.poll, handle)
        return status

    async def wait_ended(self, handle: RunHandle) -> RunStatus | None:
        """``wait`` up to the wrapper's exit (its pidfd: the exit is final), without the
        final ``poll`` (reaping it, reading its result file: blocking), which the
        caller makes in its own worker call; the status where polling found it."""
        job = LocalPayload.of(handle)
        loop = asyncio.get_running_loop()
        deadline = None if job.walltime_s is None else handle.started_at + job.walltime_s
        fd = self._pidfd(job)
        ended: asyncio.Future[None] = loop.create_future()

        def on_exit() -> None:
            if not ended.done():
                ended.set_result(None)

        if fd is not None and fd >= 0:
            loop.add_reader(fd, on_exit)
        delay = 0.05
        sample_every = SAMPLE_FIRST_S
        next_sample = time.monotonic() + sample_every
        try:
            while fd is None or fd >= 0:
                timeout: float | None = None
                if fd is None:  # no pidfd: poll with back-off
                    status = await loop.run_in_executor(None, self.poll, handle)
                    if status.is_final:
                        return status
                    timeout, delay = delay, min(delay * 2, 2.0)
                if time.monotonic() >= next_sample:
                    await loop.run_in_executor(None, self._sample, handle, job)
                    sample_every = min(sample_every * 2, SAMPLE_MAX_S)
                    next_sample = time.monotonic() + sample_every
                until_sample = max(0.0, next_sample - time.monotonic())
                timeout = until_sample if timeout is None else min(timeout, until_sample)
                if deadline is not None:
                    remaining = deadline - time.time()
                    if remaining <= 0:
                        deadline = None
                        reason = f"walltime exceeded ({job.walltime_s:g}s)"
                        await loop.run_in_executor(None, self.cancel, handle, reason)
                        continue
                    timeout = remaining if timeout is None else min(timeout, remaining)
                if fd is None:
                    await asyncio.sleep(timeout or 0)
                else:
                    await asyncio.wait([ended], timeout=timeout)
                    if ended.done():
                        break
        finally:
            if fd is not None and fd >= 0:
                loop.remove_reader(fd)
                os.close(fd)
        return None

    def _sample(self, handle: RunHandle, job: LocalPayload) -> None:
        """Note the peak memory of the job's processes so far (blocking; cheap)."""
        if self._process(job) is None:
            return  # ended (or the pid is someone else's now)
        peak = tree_peak_rss_kb(job.pid)
        if peak is not None:
            with self._lock:
                if peak > self._peak_kb.get(handle.external_id, 0):
                    self._peak_kb[handle.external_id] = peak

    # --- cancel -----------------------------------------------------------------

    def cancel(self, handle: RunHandle, reason: str = "cancelled") -> None:
        """Kill the job's whole process tree: SIGTERM, then SIGKILL after the grace time.

        Blocking (up to ``kill_grace_s`` plus a little); idempotent. Does nothing if
        the job has already ended. Records *reason* in memory and in
        ``<result_path>.killed`` so later ``poll``/``wait`` (also in a restarted
        daemon) report ``KILLED``.
        """
        job = LocalPayload.of(handle)
        wrapper = self._process(job)
        try:
            if wrapper is None or wrapper.status() == psutil.STATUS_ZOMBIE:
                return
            wait_job_exec(wrapper, job.pid, job.result_path)
            procs = wrapper.children(recursive=True)
        except psutil.Error:
            return
        if os.path.exists(job.result_path):  # it ended by itself just now
            return
        with self._lock:
            self._killed.setdefault(handle.external_id, reason)
        record_kill(job.result_path, reason)
        self._kill(handle, job, wrapper, procs, reason)

    def stop_stale(self, handle: RunHandle) -> None:
        """Kill an attempt another node took over, writing no ``.killed`` marker: the
        job directory (and so the result path) is the newer attempt's now."""
        job = LocalPayload.of(handle)
        wrapper = self._process(job)
        try:
            if wrapper is None or wrapper.status() == psutil.STATUS_ZOMBIE:
                return
            wait_job_exec(wrapper, job.pid, job.result_path)
            procs = wrapper.children(recursive=True)
        except psutil.Error:
            return
        with self._lock:
            self._killed.setdefault(handle.external_id, "taken over by another node")
        self._kill(handle, job, wrapper, procs, "taken over by another node")

    def _kill(
        self,
        handle: RunHandle,
        job: LocalPayload,
        wrapper: psutil.Process,
        procs: list[psutil.Process],
        reason: str,
    ) -> None:
        logger.info(
            "job %s: killing process %s (%d processes): %s",
            job_of(job.result_path),
            handle.external_id,
            len(procs) + 1,
            reason,
        )
        procs.append(wrapper)
        signal_tree(job.pid, procs, signal.SIGTERM)
        survivors = wait_gone(procs, self.kill_grace_s)
        if survivors:
            logger.warning(
                "job %s: %d processes ignored SIGTERM", job_of(job.result_path), len(survivors)
            )
            signal_tree(job.pid, survivors, signal.SIGKILL)
            wait_gone(survivors, 2.0)

    # --- cleanup ----------------------------------------------------------------

    def check_usable(self) -> str | None:
        """Usable while the shell and the wrapper are there (slots are the scheduler's)."""
        for path, mode in ((self.shell, os.X_OK), (str(WRAPPER), os.R_OK)):
            if not os.access(path, mode):
                return f"cannot run jobs: {path} is missing or not accessible"
        return None

    def cleanup(self, handle: RunHandle) -> None:
        """Forget what this runner remembers about a finished job. Idempotent; cheap."""
        LocalPayload.of(handle)  # a malformed handle is refused, as by every other call
        with self._lock:
            self._final.pop(handle.external_id, None)
            self._killed.pop(handle.external_id, None)
            self._peak_kb.pop(handle.external_id, None)
