"""Checking commands with bounded work: small ones inline, large ones in worker processes.

argparse is quadratic in the number of options (8,000 repeated flags took
3.4 s, 100,000 took minutes) and holds the GIL all along, so one request could
keep a worker thread busy for minutes and slow every other client's status
polls. Three bounds apply:

* a cap on the number of tokens (``scripts.max_command_tokens``), enforced
  while tokenizing, so more is refused before argparse sees any of it;
* the usual command (at most ``INLINE_CHARS`` characters and ``INLINE_TOKENS``
  tokens: well under a millisecond to a few) is checked inline, so the hot
  path costs nothing more;
* anything larger is checked in a separate worker process, at most ``slots``
  of them (more checks at once: 429 with Retry-After). A worker is started on
  first need and reused; it runs at a low CPU priority (nice +10: about a
  tenth of the CPU share of the daemon's threads when they compete) with a
  memory limit, and never holds the daemon's GIL. A check that uses more than
  ``scripts.command_check_timeout_s`` of CPU time, or takes more than
  ``WALL_FACTOR`` times that in all (a machine busy with jobs leaves a niced
  process little CPU), kills its worker: the request gets a 400 and the next
  check starts a fresh worker. The limit is on CPU time so that a busy machine
  slows long checks down instead of refusing them. The waiting worker thread
  holds no GIL, and at most ``slots`` worker threads wait. (``SCHED_IDLE``
  measured no better for other clients, and would starve checks entirely
  while jobs keep every core busy.)

Measured (bench/validation_load.py): a worker started per check cost the
daemon's machine ~50 ms of normal-priority CPU each (Python's start-up, before
it could lower its priority), which showed in other clients' p99; reused
workers do not.

A worker runs ``python -S -m jobferry.argspec.bounded`` with the daemon's
interpreter and answers one JSON line per JSON line it reads, until EOF.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from jobferry.argspec.command import BuiltCommand, build_command
from jobferry.argspec.introspect import ScriptSpec
from jobferry.argspec.tokens import most_tokens
from jobferry.errors import IntrospectionError, TooManyRequestsError, ValidationError

logger = logging.getLogger(__name__)

#: Longest command (characters) checked inline.
INLINE_CHARS = 4096
#: Most tokens of a command checked inline (argparse takes ~2 ms for this many).
INLINE_TOKENS = 128
#: Results of short commands remembered by ``CommandChecker`` (all scripts together).
BUILT_CACHE = 512
#: Address-space limit of a worker, MiB.
WORKER_MEMORY_MB = 512
#: Niceness added to a worker: the daemon's threads (and jobs) go first.
WORKER_NICE = 10
#: Checks a worker does before it is replaced (bounds what it may accumulate).
WORKER_CHECKS = 200
#: A check may take this many times its CPU-time limit in wall-clock time.
WALL_FACTOR = 12
#: How often a waiting check looks at its worker's CPU time, seconds.
_CPU_POLL_S = 0.1

_INVALID = "The command is invalid."
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


@dataclass(frozen=True)
class CommandLimits:
    """How much work one command may cost."""

    #: Most tokens a command may have (more: 400).
    max_tokens: int = 2000
    #: CPU time a large command's check may take (more: 400), seconds.
    timeout_s: float = 5.0
    #: Large commands checked at once (more: 429).
    slots: int = 2


class _Worker:
    """One worker process and its pipes."""

    def __init__(self, interpreter: str) -> None:
        env = {
            "PYTHONPATH": _PACKAGE_ROOT,
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
        }
        self.proc = subprocess.Popen(
            [interpreter, "-S", "-m", "jobferry.argspec.bounded"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self.checks = 0
        self._buffer = b""

    def ask(self, request: Mapping[str, Any], cpu_s: float) -> dict[str, Any] | None:
        """Send one request, read one answer; None if it took more than *cpu_s* of CPU
        time (or WALL_FACTOR times that in all), or the worker died."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.checks += 1
        try:
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError:
            return None
        line = self._read_line(self.proc.stdout, cpu_s)
        if line is None:
            return None
        answer = json.loads(line)
        return answer if isinstance(answer, dict) else None

    def _read_line(self, stream: IO[bytes], cpu_s: float) -> bytes | None:
        fd = stream.fileno()
        started = time.monotonic()
        deadline = started + cpu_s * WALL_FACTOR
        cpu_at_start = self.cpu_seconds()
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                if not selector.select(min(left, _CPU_POLL_S)):
                    used = self.cpu_seconds()
                    if used is not None and cpu_at_start is not None:
                        if used - cpu_at_start > cpu_s:
                            return None
                    elif time.monotonic() - started > cpu_s:
                        return None  # CPU time unknown: the limit applies to wall time
                    continue
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    return None  # the worker died (memory limit, killed)
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def cpu_seconds(self) -> float | None:
        """CPU time the worker has used (user + system), or None where unknown."""
        try:
            with open(f"/proc/{self.proc.pid}/stat", "rb") as handle:
                fields = handle.read().rpartition(b")")[2].split()
            return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        """Kill the worker (by its pid) and reap it."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


class CommandChecker:
    """``build_command`` with its cost bounded (see the module docstring). Thread-safe."""

    def __init__(self, limits: CommandLimits, interpreter: str | None = None) -> None:
        self.limits = limits
        self.interpreter = interpreter or sys.executable
        self._slots = threading.BoundedSemaphore(limits.slots)
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        #: (id(spec), command, arg budget) -> (the spec, its check's result).
        self._built: dict[tuple[int, str, int | None], tuple[ScriptSpec, BuiltCommand]] = {}
        # Idle workers are stopped when the checker goes away, or at exit.
        weakref.finalize(self, _stop_workers, self._lock, self._idle)

    def is_inline(self, command: str) -> bool:
        """Whether *command* is small enough to check on the calling thread."""
        return len(command) <= INLINE_CHARS and most_tokens(command) <= INLINE_TOKENS

    def check(
        self,
        spec: ScriptSpec,
        command: str,
        uploads: Mapping[str, str],
        *,
        arg_budget: int | None = None,
    ) -> BuiltCommand:
        """Validate *command* against *spec* and build the script's arguments.

        Raises:
            ValidationError: as ``build_command``; also too many tokens, or the
                check took longer than the time limit.
            TooManyRequestsError: every slot for large commands is taken.
            IntrospectionError: the stored spec cannot be turned into a parser.
        """
        if self.is_inline(command):
            if uploads:
                return build_command(
                    spec, command, uploads, max_tokens=self.limits.max_tokens, arg_budget=arg_budget
                )
            return self._inline_cached(spec, command, arg_budget)
        if not self._slots.acquire(blocking=False):
            raise TooManyRequestsError(
                "Too many long commands are being checked; try again shortly.", retry_after=1
            )
        try:
            return self._in_worker(spec, command, uploads, arg_budget)
        finally:
            self._slots.release()

    def _inline_cached(
        self, spec: ScriptSpec, command: str, arg_budget: int | None
    ) -> BuiltCommand:
        """``build_command`` of a short command without uploads, remembered per spec.

        Clients submit the same command to the same script over and over (every
        submission of the acceptance benchmark is the empty command), and the check
        (two argparse parses, the rendering) was the costliest step of a submission
        on the event loop. ``build_command`` is a pure function of the spec, the
        command, the limits and *arg_budget* (no uploads: nothing on disk is looked
        at), so its result can be reused as long as the spec is the same object:
        the key holds the spec itself (a spec is never changed in place; a script
        version's new spec is a new object, see ``services.submission``). Only
        successes are kept (a refused command is checked again each time), at most
        ``BUILT_CACHE`` of them (short commands only: a few MiB at worst); each
        caller gets its own copy of the values.
        """
        key = (id(spec), command, arg_budget)
        entry = self._built.get(key)
        if entry is not None and entry[0] is spec:
            built = entry[1]
        else:
            built = build_command(
                spec, command, {}, max_tokens=self.limits.max_tokens, arg_budget=arg_budget
            )
            if len(self._built) >= BUILT_CACHE:
                self._built.clear()
            self._built[key] = (spec, built)
        return replace(built, values=_copied(built.values), input_files={})

    def close(self) -> None:
        """Stop the idle workers (busy ones are stopped when their check ends)."""
        _stop_workers(self._lock, self._idle)

    def _in_worker(
        self,
        spec: ScriptSpec,
        command: str,
        uploads: Mapping[str, str],
        arg_budget: int | None,
    ) -> BuiltCommand:
        request = {
            "spec": spec.to_dict(),
            "command": command,
            "uploads": dict(uploads),
            "max_tokens": self.limits.max_tokens,
            "arg_budget": arg_budget,
        }
        with self._lock:
            worker = self._idle.pop() if self._idle else None
        if worker is None or worker.proc.poll() is not None:
            worker = _Worker(self.interpreter)
        answer = worker.ask(request, self.limits.timeout_s)
        if answer is None or worker.checks >= WORKER_CHECKS:
            worker.stop()
        else:
            with self._lock:
                self._idle.append(worker)
        if answer is None:
            raise ValidationError(
                _INVALID,
                errors={
                    "command": "The command could not be checked within "
                    f"{self.limits.timeout_s:g} s of CPU time "
                    "(scripts.command_check_timeout_s)."
                },
            )
        return _from_answer(answer)


def _copied(value: Any) -> Any:
    """A copy of JSON data (dicts and lists copied, the rest is immutable)."""
    if isinstance(value, dict):
        return {k: _copied(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copied(v) for v in value]
    return value


def _stop_workers(lock: threading.Lock, workers: list[_Worker]) -> None:
    with lock:
        stopping = workers[:]
        workers.clear()
    for worker in stopping:
        worker.stop()


def _from_answer(answer: Mapping[str, Any]) -> BuiltCommand:
    if "built" in answer:
        built = answer["built"]
        return BuiltCommand(
            args=tuple(built["args"]),
            values=dict(built["values"]),
            input_files={k: list(v) for k, v in built["input_files"].items()},
            output_files=tuple(built["output_files"]),
        )
    error = answer["error"]
    if error["kind"] == "introspection":
        raise IntrospectionError(error["message"])
    raise ValidationError(error["message"], errors=error["errors"])


def _answer(request: Mapping[str, Any]) -> dict[str, Any]:
    try:
        built = build_command(
            ScriptSpec.from_dict(request["spec"]),
            request["command"],
            request["uploads"],
            max_tokens=request["max_tokens"],
            arg_budget=request["arg_budget"],
        )
    except ValidationError as exc:
        return {"error": {"kind": "validation", "message": exc.message, "errors": exc.errors}}
    except IntrospectionError as exc:
        return {"error": {"kind": "introspection", "message": exc.message}}
    return {
        "built": {
            "args": list(built.args),
            "values": built.values,
            "input_files": built.input_files,
            "output_files": list(built.output_files),
        }
    }


def _worker_main() -> int:
    """A worker: a low CPU priority and a memory limit, then one answer per request line."""
    import resource

    os.nice(WORKER_NICE)
    memory = WORKER_MEMORY_MB * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    for line in sys.stdin.buffer:
        sys.stdout.write(json.dumps(_answer(json.loads(line))) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main())
