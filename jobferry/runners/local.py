"""The local runner: jobs as process trees on this machine that outlive the daemon.

Owns having its job host (``jobhost.py``, through ``hostclient``) start jobs, each in
its own session; learning of their end through the done pipe the host closes once it
has recorded it; enforcing walltime; killing whole process trees; and reading the
result file the host writes, so that a restarted daemon can re-attach to jobs an
earlier daemon started. A job's peak memory is the larger of what the host's
``wait4`` reported above the host's own peak and the samples ``wait`` takes of the
job's processes. Handles of jobs an earlier version started under ``wrapper.sh``
(their pid is the wrapper's) are followed by polling, as before.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import signal
import sys
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
from jobferry.runners.hostclient import HostClient
from jobferry.runners.jobhost import start_ticks
from jobferry.runners.joblog import job_of
from jobferry.runners.proctree import (
    create_time_of,
    signal_tree,
    tree_peak_rss_kb,
    wait_gone,
    wait_job_exec,
)
from jobferry.runners.wrapper import (
    WrapperResult,
    clear_stale,
    read_kill,
    read_result,
    record_kill,
)

logger = logging.getLogger(__name__)

_CREATE_TIME_TOLERANCE_S = 0.01
_LOST_REASON = "process ended without recording a result"
#: First and longest interval between samples of a running job's peak memory, seconds.
SAMPLE_FIRST_S = 0.25
SAMPLE_MAX_S = 2.0


@dataclass(frozen=True)
class LocalPayload(HandlePayload):
    """What a local handle carries: the job's process and its files.

    ``pid`` with ``start_ticks`` (or, where those are unknown, ``create_time``)
    identifies the process even after its pid is reused. ``host_pid`` is set (0 when
    unknown) for a job a job host started: its pid is the job's own, which stays a
    zombie until its result is written. Without it the pid is a ``wrapper.sh``'s.
    """

    runner: ClassVar[str] = "local"

    pid: int
    create_time: float
    result_path: str
    start_ticks: int | None = None
    stdout_path: str = ""
    stderr_path: str = ""
    walltime_s: float | None = None
    host_pid: int | None = None

    def encode(self) -> dict[str, Any]:
        """The stored form; a wrapper's handle stays as earlier versions wrote it."""
        data = dict(vars(self))
        if self.host_pid is None:
            del data["host_pid"]
        return data


class LocalRunner(Runner):
    """Runs jobs as local processes, each in its own session, through a job host.

    Args:
        kill_grace_s: How long ``cancel`` waits after SIGTERM before SIGKILL.
        python: The interpreter that runs the job host (this one by default).
    """

    name = "local"
    quick_submit = True

    def __init__(self, kill_grace_s: float = 5.0, python: str = sys.executable) -> None:
        self.kill_grace_s = kill_grace_s
        self._host = HostClient(python)
        self._done: dict[str, int] = {}  # external_id -> the done pipe of a job we started
        self._killed: dict[str, str] = {}  # external_id -> cancel reason
        self._final: dict[str, RunStatus] = {}  # external_id -> final status once known
        self._peak_kb: dict[str, int] = {}  # external_id -> highest sample of the job's tree
        self._lock = threading.Lock()

    # --- submit / adopt -----------------------------------------------------------

    def submit(self, spec: RunSpec) -> RunHandle:
        """Have the job host start the job and return its handle. Blocking; not idempotent.

        Raises:
            SubmitError: argv is empty or starts with ``-``, the workdir or an
                output directory does not exist, or the job cannot be started.
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
        request = {
            "argv": list(spec.argv),
            "env": env,
            "cwd": spec.workdir,
            "out": spec.stdout_path,
            "err": spec.stderr_path,
            "result": spec.result_path,
            "cap": spec.max_log_bytes,
        }
        started_at = time.time()
        try:
            spawned = self._host.spawn(request)
        except SubmitError as exc:
            raise SubmitError(f"cannot start job {spec.job_id}: {exc}") from exc
        ticks = spawned.ticks  # read by the host while the job was its unreaped child
        create_time = time.time() if ticks is None else create_time_of(ticks)
        payload = LocalPayload(
            pid=spawned.pid,
            create_time=create_time,
            start_ticks=ticks,
            result_path=spec.result_path,
            stdout_path=spec.stdout_path,
            stderr_path=spec.stderr_path,
            walltime_s=spec.walltime_s,
            host_pid=spawned.host_pid,
        )
        handle = RunHandle.of(self.name, f"{spawned.pid}@{create_time}", started_at, payload)
        with self._lock:
            self._done[handle.external_id] = spawned.done_fd
        logger.info("started job %s as pid %d", spec.job_id, spawned.pid)
        return handle

    def find(self, spec: RunSpec) -> RunHandle | None:
        """Find a job started for *spec* whose handle was never stored. Blocking.

        The job host writes ``<result_path>.pid`` ("pid start_ticks") before it
        answers; the process is taken for the job only if its start ticks match. (A
        ``wrapper.sh`` of an earlier version wrote its pid alone there, and is taken if
        its command line names this job's result file.) A job that already ended
        yields a handle whose ``poll`` reads its result file (or reports it lost).
        """
        try:
            fields = Path(spec.result_path + ".pid").read_text().split()
            pid = int(fields[0])
            recorded = int(fields[1]) if len(fields) > 1 and fields[1] != "None" else None
        except (OSError, ValueError, IndexError):
            return None
        hosted = len(fields) > 1
        create_time, ticks = 0.0, -1
        try:
            if hosted:
                if recorded is not None and start_ticks(pid) == recorded:
                    create_time, ticks = create_time_of(recorded), recorded
            else:
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
            host_pid=0 if hosted else None,
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
        """True while the job has not ended for good: a job host's job stays a zombie
        until the host has written its result; a zombie wrapper has ended."""
        proc = self._process(job)
        if proc is None or job.host_pid is not None:
            return proc is not None
        try:
            return proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def poll(self, handle: RunHandle) -> RunStatus:
        """Return the job's status. Blocking; idempotent.

        A job this runner started is running until the host closes its done pipe
        (having written the result); then, or for a job it did not start, the
        process and the result file tell (a host that died closes the pipe too: its
        job, if it still runs, is followed as an adopted one)."""
        job = LocalPayload.of(handle)
        with self._lock:
            final = self._final.get(handle.external_id)
            if final is not None:
                return final
            done = self._done.get(handle.external_id)
        if done is not None:
            if not select.select([done], [], [], 0)[0]:
                return RunStatus(RunState.RUNNING)
            # Closed: the host recorded the end (or died). A result with its exit code
            # says the job has ended whichever it was (the host writes it only once
            # the job is a zombie), so its process need not be looked at (psutil, /proc).
            result = read_result(job.result_path)
            if result is not None and result.exit_code is not None:
                return self._conclude(handle, job, result)
        if self._alive(job):
            return RunStatus(RunState.RUNNING)
        return self._conclude(handle, job, read_result(job.result_path))

    def _conclude(
        self, handle: RunHandle, job: LocalPayload, result: WrapperResult | None
    ) -> RunStatus:
        """Build and cache the final status from the result file (*result*, read once
        the job was seen ended) and the kill marker."""
        now = time.time()
        killed = self._killed.get(handle.external_id)
        if killed is None:
            killed = read_kill(job.result_path)
        exit_code = None if result is None else result.exit_code
        finished_at = now if result is None else result.mtime
        reason: str | None
        if killed is not None:
            state, reason = RunState.KILLED, killed
        elif result is not None and result.exit_code is not None:
            state, reason = RunState.EXITED, result.reason
        else:
            state, exit_code = RunState.LOST, None
            reason = (result.reason if result is not None else None) or _LOST_REASON
        peak = self._peak_kb.get(handle.external_id, 0)
        if result is not None and result.peak_rss_kb is not None:
            peak = max(peak, result.peak_rss_kb)
        metrics = RunMetrics(
            wall_s=None if result is None else max(0.0, finished_at - handle.started_at),
            cpu_user_s=None if result is None else result.cpu_user_s,
            cpu_sys_s=None if result is None else result.cpu_sys_s,
            peak_rss_kb=peak or None,
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

    async def wait(self, handle: RunHandle) -> RunStatus:
        """Wait for the job's end and enforce its walltime: without polling (the done
        pipe) for a job this runner started, else by polling with back-off.

        On walltime expiry it runs ``cancel`` in the default executor with reason
        ``walltime exceeded (<N>s)``. Cancelling the coroutine leaves the job running.

        Raises:
            RunnerError: the handle is malformed.
        """
        status = await self.wait_ended(handle)
        delay = 0.05
        while status is None or not status.is_final:  # a job whose host died: polled
            if status is not None:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            status = await asyncio.get_running_loop().run_in_executor(None, self.poll, handle)
        return status

    async def wait_ended(self, handle: RunHandle) -> RunStatus | None:
        """``wait`` up to the job's recorded end (its done pipe), without the final
        ``poll`` (reading its result file: blocking), which the caller makes in its
        own worker call; the status where polling found it."""
        job = LocalPayload.of(handle)
        loop = asyncio.get_running_loop()
        deadline = None if job.walltime_s is None else handle.started_at + job.walltime_s
        with self._lock:
            fd = self._done.get(handle.external_id)
        ended: asyncio.Future[None] = loop.create_future()

        def on_exit() -> None:
            if not ended.done():
                ended.set_result(None)

        if fd is not None:
            loop.add_reader(fd, on_exit)
        delay = 0.05
        sample_every = SAMPLE_FIRST_S
        next_sample = time.monotonic() + sample_every
        try:
            while True:
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
            if fd is not None:
                loop.remove_reader(fd)  # the pipe is closed by ``cleanup``
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
            if job.host_pid is None:  # a wrapper: its job may not have been exec'd yet
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
            if job.host_pid is None:  # a wrapper: its job may not have been exec'd yet
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
        """Usable while the job host can be run (slots are the scheduler's)."""
        return self._host.usable()

    def cleanup(self, handle: RunHandle) -> None:
        """Forget what this runner remembers about a finished job. Idempotent; cheap."""
        LocalPayload.of(handle)  # a malformed handle is refused, as by every other call
        with self._lock:
            self._final.pop(handle.external_id, None)
            self._killed.pop(handle.external_id, None)
            self._peak_kb.pop(handle.external_id, None)
            done = self._done.pop(handle.external_id, None)
        if done is not None:
            os.close(done)

    def close(self) -> None:
        """Let the job host go (it finishes the jobs it runs); they are followed, if
        need be, as adopted ones."""
        with self._lock:
            done, self._done = list(self._done.values()), {}
        for fd in done:
            os.close(fd)
        self._host.close()
