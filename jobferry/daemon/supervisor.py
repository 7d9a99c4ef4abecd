"""The daemon's background work, watched: a task or thread that dies stops the daemon,
loudly.

Besides serving requests, the daemon runs a few long-lived tasks (the scheduler's
claim rounds, the heartbeat) and threads (the PostgreSQL listener,
``jobferry-listen``). Each is meant to run until the daemon stops, and each
already rides out the failures it expects (a store outage, an unavailable runner)
and logs them. So one that ends before the stop (with an exception, or at all) is
a bug or a state nobody foresaw, and a daemon that goes on without it is worse
than none: without the scheduler, jobs are accepted and never started; without
the heartbeat, the other nodes declare this one dead and take over its jobs while
it still runs them. Before, nobody noticed until shutdown.

``Supervisor`` logs such an end at CRITICAL, with its traceback, and sets the
daemon's stop event: the daemon stops the orderly way, as on SIGTERM (no new
work, running jobs keep running and are re-attached by the next start), and the
process exits with ``EXIT_CRASHED`` (70, EX_SOFTWARE), so that systemd
(``Restart=on-failure``) or the operator starts it again.

Why stop rather than restart the task in place: a task that crashed may have left
its state half-updated (the scheduler's slots and claims, a heartbeat's
incarnation), which a restart from inside cannot tell. A new process rebuilds all
of it from the store and re-attaches to the running jobs (``daemon.recovery``),
the path every start takes and the tests cover. And a task restarted in a loop
hides its bug, where an exit is seen.

Threads are watched through ``threading.excepthook``: a ``jobferry-`` thread that
dies of an exception stops the daemon the same way (other threads keep Python's
default report).

Test-only hook: ``CRASH_TASK_ENV`` names a task, read once when the supervisor is
made; SIGUSR1 then makes that task raise (``tests/faults/test_task_crash.py``), so
a test can crash it from outside once the daemon serves. Unset (always, outside
tests), nothing is wrapped and no signal handler is installed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Coroutine
from typing import Any

logger = logging.getLogger(__name__)

#: The exit status of a daemon stopped by a crashed background task (EX_SOFTWARE).
EXIT_CRASHED = 70
#: Threads whose death stops the daemon (by name prefix).
THREAD_PREFIX = "jobferry-"
#: Test-only: the name of a background task that SIGUSR1 makes crash.
CRASH_TASK_ENV = "JOBFERRY_TEST_CRASH_TASK"


class InjectedCrash(RuntimeError):
    """Raised by a task crashed through ``CRASH_TASK_ENV`` (tests only)."""


class Supervisor:
    """Runs the daemon's background tasks; the first to end before *stop* sets it."""

    def __init__(self, stop: asyncio.Event) -> None:
        self.stop = stop
        #: What ended before the stop (tasks, threads), in order.
        self.crashed: list[str] = []
        self._loop = asyncio.get_running_loop()
        self._tasks: dict[str, asyncio.Task[object]] = {}
        self._crash_hook = os.environ.get(CRASH_TASK_ENV) or None
        self._previous_hook: Any = None

    @property
    def exit_status(self) -> int:
        """The process's exit status: ``EXIT_CRASHED`` after a crash, else 0."""
        return EXIT_CRASHED if self.crashed else 0

    def start(self, name: str, work: Coroutine[Any, Any, object]) -> None:
        """Run *work* as the background task *name*, until the stop."""
        if name == self._crash_hook:
            work = _crash_on_signal(name, work)
        task = self._loop.create_task(work, name=name)
        task.add_done_callback(lambda done: self._ended(name, done))
        self._tasks[name] = task

    def _ended(self, name: str, task: asyncio.Task[object]) -> None:
        error = None if task.cancelled() else task.exception()
        if error is None and self.stop.is_set():
            return  # its normal end
        self._crash(f"task {name}", error)

    def _crash(self, what: str, error: BaseException | None) -> None:
        self.crashed.append(what)
        if error is not None:
            logger.critical(
                "background %s crashed; stopping the daemon (running jobs keep running)",
                what,
                exc_info=error,
            )
        else:
            logger.critical(
                "background %s ended before the daemon stopped; stopping the daemon "
                "(running jobs keep running)",
                what,
            )
        self.stop.set()

    def watch_threads(self) -> None:
        """Stop the daemon when a ``jobferry-`` thread dies of an exception."""
        previous = self._previous_hook = threading.excepthook
        loop = self._loop

        def hook(args: threading.ExceptHookArgs) -> None:
            thread = args.thread
            if thread is None or not thread.name.startswith(THREAD_PREFIX):
                previous(args)
                return
            try:
                loop.call_soon_threadsafe(self._crash, f"thread {thread.name}", args.exc_value)
            except RuntimeError:  # the loop is closed: the daemon is gone already
                previous(args)

        threading.excepthook = hook

    async def join(self) -> None:
        """Wait until every task has ended (after the stop); crashes are logged already."""
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    def close(self) -> None:
        """Stop watching threads (the daemon has stopped them)."""
        if self._previous_hook is not None:
            threading.excepthook = self._previous_hook
            self._previous_hook = None


async def _crash_on_signal(name: str, work: Coroutine[Any, Any, object]) -> object:
    """Test-only: run *work* until SIGUSR1, then cancel it and raise ``InjectedCrash``."""
    loop = asyncio.get_running_loop()
    fault = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, fault.set)
    logger.warning("test-only crash hook armed: SIGUSR1 crashes task %s", name)
    task = asyncio.ensure_future(work)
    faulted = asyncio.ensure_future(fault.wait())
    try:
        await asyncio.wait({task, faulted}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        faulted.cancel()
        loop.remove_signal_handler(signal.SIGUSR1)
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    raise InjectedCrash(f"crash injected into task {name} ({CRASH_TASK_ENV}, SIGUSR1)")
