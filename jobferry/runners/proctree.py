"""Process trees on this machine (Linux): start times, signals, waiting them out, and
their peak memory, read from ``/proc``.

Peak memory, and why it is sampled: a local job's wrapper is spawned from the
daemon's address space, so the kernel starts the wrapper's ``ru_maxrss`` at the
daemon's own peak, and what ``wait4`` reports is the larger of the two: a job
smaller than the daemon has no figure of its own there. A process's ``VmHWM`` (its
resident high-water mark since its last exec) is its own, though, and only grows:
sampling it while the job runs misses only what a process gains in its last
moments, or a process that starts and ends between two samples. Each sample reads
a few small files per process of the job (children through
``/proc/<pid>/task/<tid>/children``, no scan of all of /proc).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterator

import psutil


def _descendants(root: int) -> Iterator[int]:
    """*root*'s descendants (not *root*), each once, read from /proc as the walk goes
    (at most 10,000: a fork bomb does not make this walk forever)."""
    pending = _children(root)
    seen: set[int] = set()
    while pending and len(seen) < 10_000:
        pid = pending.pop()
        if pid in seen:
            continue
        seen.add(pid)
        yield pid
        pending.extend(_children(pid))


def tree_peak_rss_kb(root: int) -> int | None:
    """The largest ``VmHWM`` (KiB) among *root*'s descendants (not *root* itself: the
    job wrapper, a shell); None when none could be read (e.g. they all ended)."""
    best: int | None = None
    for pid in _descendants(root):
        value = _vm_hwm_kb(pid)
        if value is not None and (best is None or value > best):
            best = value
    return best


def descendant_cmdlines(root: int) -> list[list[str]]:
    """The command lines of *root*'s descendants (those still readable)."""
    out: list[list[str]] = []
    for pid in _descendants(root):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        out.append([w.decode(errors="replace") for w in raw.split(b"\0")[:-1]])
    return out


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                found.extend(int(word) for word in f.read().split())
        except (OSError, ValueError):
            pass
    return found


def _vm_hwm_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@functools.cache
def _boot_time() -> float:
    return float(psutil.boot_time())  # fixed while the machine runs (/proc/stat btime)


def create_time_of(ticks: int) -> float:
    """A process's start time (epoch seconds) from its ``start_ticks``, computed as
    ``psutil.Process.create_time`` does (boot time + ticks / clock ticks per second)."""
    return _boot_time() + ticks / _CLOCK_TICKS


def signal_tree(pgid: int, procs: list[psutil.Process], sig: int) -> None:
    """Signal the job's process group (while a member lives) and each listed process."""
    for proc in procs:
        try:
            if proc.is_running() and os.getpgid(proc.pid) == pgid:
                os.killpg(pgid, sig)  # the group id cannot be reused while it has members
                break
        except (OSError, psutil.Error):
            pass
    for proc in procs:
        try:
            proc.send_signal(sig)  # psutil checks the process is still the same one
        except psutil.Error:
            pass


def wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until the processes are gone or zombies (never reaping them); return survivors."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for proc in procs:
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
            except psutil.Error:
                pass
        if not alive or time.monotonic() >= deadline:
            return alive
        procs = alive
        time.sleep(0.02)


def _is_log_filter(cmdline: list[str]) -> bool:
    """A ``dd`` the wrapper runs to cap a log (see wrapper.sh, "Log caps")."""
    return cmdline[0] == "dd" and "iflag=fullblock" in cmdline


def wait_job_exec(
    wrapper: psutil.Process, pid: int, result_path: str, timeout: float = 1.0
) -> None:
    """Wait (briefly) until the wrapper (process *pid*) has exec'd the job, or it ended.

    A SIGTERM sent earlier is lost: the wrapper's ``trap`` takes it before the
    fork, and the forked subshell still has that handler (or, with a log cap,
    ignores it) until it execs. The job would then run on until the SIGKILL after
    the grace time. The job is the descendant that is neither a shell of the
    wrapper's nor one of its log filters (``dd ... iflag=fullblock``).
    """
    shell = wrapper.cmdline()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if wrapper.status() == psutil.STATUS_ZOMBIE or os.path.exists(result_path):
            return
        for cmdline in descendant_cmdlines(pid):
            if cmdline and cmdline != shell and not _is_log_filter(cmdline):
                return
        time.sleep(0.005)
