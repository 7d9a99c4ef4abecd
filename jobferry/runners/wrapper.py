"""The job wrapper every runner executes a job through, and its result file.

``wrapper.sh`` (POSIX sh) runs the job's argv in its working directory with
stdout/stderr to files, and writes the result file (exit code, CPU times) when
the job ends. Runners start it with ``wrapper_argv(spec)``: the script's text is
passed with ``sh -c`` so it needs no file on the execution host (a container, a
Slurm node). With ``staging: remote`` the same wrapper first fetches the job's
inputs and afterwards posts its outputs, logs and result back over HTTP and
reports the job's state to the daemon (``stage.py``, run with python3).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from jobferry.errors import SubmitError
from jobferry.runners.base import RunSpec

logger = logging.getLogger(__name__)

WRAPPER = Path(__file__).with_name("wrapper.sh")


STAGER = Path(__file__).with_name("stage.py")


@cache
def wrapper_text() -> str:
    """The wrapper with the remote stager pasted into its here-document."""
    stager = STAGER.read_text(encoding="utf-8")
    assert "JOBFERRY_STAGE_PY" not in stager
    return WRAPPER.read_text(encoding="utf-8").replace("@STAGE_PY@", stager.rstrip("\n"))


def wrapper_paths(spec: RunSpec) -> tuple[str, str, str, str]:
    """Working dir, stdout, stderr and result file as the execution host sees them."""
    if spec.staging == "remote" and spec.remote_dir:
        r = spec.remote_dir.rstrip("/")
        return f"{r}/work", f"{r}/stdout", f"{r}/stderr", f"{r}/result"
    return spec.workdir, spec.stdout_path, spec.stderr_path, spec.result_path


def wrapper_argv(spec: RunSpec, shell: str = "/bin/sh") -> list[str]:
    """The argv that runs *spec*'s command under the wrapper (no file needed)."""
    w, o, e, r = wrapper_paths(spec)
    cap = str(spec.max_log_bytes)
    return [shell, "-c", wrapper_text(), "jobferry-job", w, o, e, r, cap, "--", *spec.argv]


@dataclass(frozen=True)
class WrapperResult:
    """What the wrapper recorded in the result file."""

    exit_code: int | None
    reason: str | None
    cpu_user_s: float | None
    cpu_sys_s: float | None
    mtime: float
    #: The wrapper's first attempt at writing this file failed (a full disk): what the
    #: job wrote may be cut short.
    disk_full: bool = False
    #: The job's peak memory (the job host's ``wait4``, when above the host's own).
    peak_rss_kb: int | None = None


def parse_times(text: str) -> tuple[float, float]:
    """Parse one ``times`` line (``0m1.250000s 0m0.010000s``) into user and sys seconds."""
    out = []
    for part in text.split():
        minutes, _, seconds = part.rstrip("s").partition("m")
        out.append(int(minutes) * 60 + float(seconds))
    return out[0], out[1]


def read_result(path: str) -> WrapperResult | None:
    """Read the wrapper's result file; None if it does not exist (yet)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            mtime = os.fstat(f.fileno()).st_mtime
            lines = f.read().splitlines()
    except FileNotFoundError:
        return None
    except OSError as exc:
        logger.warning("cannot read result file %s: %s", path, exc)
        return None
    exit_code: int | None = None
    reason: str | None = None
    user = sys_ = 0.0
    have_cpu = disk_full = False
    peak: int | None = None
    for line in lines:
        key, _, value = line.partition("=")
        try:
            if key == "disk_full":
                disk_full = value == "1"
            elif key == "exit_code":
                exit_code = int(value)
            elif key == "reason":
                reason = value
            elif key == "peak_rss_kb":
                peak = int(value)
            elif key == "cpu":
                u, s = parse_times(value)
                user, sys_, have_cpu = user + u, sys_ + s, True
        except (ValueError, IndexError):
            logger.warning("ignoring malformed line %r in %s", line, path)
    if exit_code is None:
        reason = reason or "result file has no exit code"
    cpu_user, cpu_sys = (user, sys_) if have_cpu else (None, None)
    return WrapperResult(exit_code, reason, cpu_user, cpu_sys, mtime, disk_full, peak)


# --- the kill marker ------------------------------------------------------------------
# A runner that stops a job itself (cancel, walltime) records why in
# ``<result_path>.killed`` before it kills, so that whoever reads the job's end later
# (the same runner, a restarted daemon, a wrapper's callback) knows it was killed.

KILLED_SUFFIX = ".killed"


def killed_path(result_path: str) -> str:
    return result_path + KILLED_SUFFIX


def record_kill(result_path: str, reason: str) -> None:
    """Write the kill marker once (atomically); a failure is logged, not raised."""
    path = killed_path(result_path)
    if os.path.exists(path):
        return
    try:
        tmp = path + ".tmp"
        Path(tmp).write_text(reason, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        logger.warning("cannot record the kill in %s: %s", path, exc)


def clear_stale(result_path: str, suffixes: tuple[str, ...]) -> None:
    """Remove what an earlier attempt left at *result_path* + each suffix (its result,
    kill marker, pid file ...), before a new attempt starts.

    Raises:
        SubmitError: one of them exists and cannot be removed.
    """
    for suffix in suffixes:
        stale = result_path + suffix
        try:
            os.unlink(stale)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise SubmitError(f"cannot remove stale {stale}: {exc}") from exc


def read_kill(result_path: str) -> str | None:
    """Why the job was killed by its runner, or None if it was not (read at every job's
    end: a plain ``open``, no ``pathlib``)."""
    try:
        with open(killed_path(result_path), encoding="utf-8") as f:
            return f.read() or "killed"
    except OSError:
        return None
