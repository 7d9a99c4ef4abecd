"""Readiness: whether this node should be sent work (``GET /readyz``).

The checks, each ``"ok"`` or one line saying what is wrong:

- ``store``: the store answers and its schema is at this jobferry's head revision
  (an out-of-date schema names both revisions and the command that fixes it);
- ``drain``: the node's drained flag (``jobferry node drain``) is off; a drained
  node says ``draining``;
- one per enabled runner (``local``, ``docker``, ``slurm``): ``Runner.check_usable``
  (Docker engine ping, Slurm controller ping);
- whatever the composition root adds through *extra* (the disk guard: ``disk``).

A load balancer may ask many times a second: an evaluation is kept for
``CACHE_S``, and requests that arrive while one runs share it. Each check runs in
a thread of its own (never on the event loop, never in the store's worker pool,
which a hung check would starve); an evaluation waits at most ``TIMEOUT_S`` and
reports a check that has not answered by then as such. A check still hanging from
an earlier evaluation is not started again, so a hung engine or controller costs
one thread per check, not one per request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from jobferry.errors import JobferryError, StoreError
from jobferry.runners.base import Runner
from jobferry.services.core import Core
from jobferry.store import engine as schema
from jobferry.store.models import Node

logger = logging.getLogger(__name__)

#: How long an evaluation is reused, seconds.
CACHE_S = 1.0
#: How long an evaluation waits for its checks, seconds (above the runners' own
#: ``USABLE_TIMEOUT_S``, so that they say why first).
TIMEOUT_S = 2.5
#: The answer of a check that is fine.
OK = "ok"
#: The store check's answer when the database does not answer.
STORE_DOWN = "not answering: the database cannot be reached (the daemon's log says why)"
#: Longest reason kept of a check's failure, characters.
MAX_REASON = 300

Check = Callable[[], str]


@dataclass(frozen=True)
class Readiness:
    """One evaluation: ready when every check said ``ok``."""

    checks: dict[str, str]

    @property
    def ready(self) -> bool:
        return all(value == OK for value in self.checks.values())

    def as_json(self) -> dict[str, Any]:
        return {"status": "ready" if self.ready else "not ready", "checks": dict(self.checks)}


def describe(exc: BaseException) -> str:
    """One line saying why a check failed (a JobferryError's message, else the error's
    first line)."""
    if isinstance(exc, JobferryError):
        text = exc.message
    else:
        orig = getattr(exc, "orig", None)  # SQLAlchemy wraps the driver's error
        lines = str(orig or exc).strip().splitlines()
        text = f"not answering: {lines[0] if lines else type(exc).__name__}"
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


def runner_check(runner: Runner) -> Check:
    """*runner*'s ``check_usable`` as a check."""

    def check() -> str:
        return runner.check_usable() or OK

    return check


class HealthService:
    """Evaluates readiness on request, cached for ``CACHE_S`` (see the module)."""

    def __init__(
        self,
        core: Core,
        *,
        extra: Mapping[str, Check] | None = None,
        cache_s: float = CACHE_S,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self.core = core
        self.cache_s = cache_s
        self.timeout_s = timeout_s
        self.checks: dict[str, Check] = {"store": self.check_store, "drain": self.check_drain}
        for name, runner in core.runners.items():
            self.checks[name] = runner_check(runner)
        self.checks.update(extra or {})
        #: How many evaluations ran (they are shared and cached: see the tests).
        self.evaluations = 0
        self._cached: tuple[float, Readiness] | None = None
        self._pending: asyncio.Future[Readiness] | None = None
        self._running: dict[str, concurrent.futures.Future[str]] = {}
        self._lock = threading.Lock()
        self._failing: dict[str, str] = {}
        self._head: str | None = None
        self._store_down: str | None = None

    # --- the store's checks (blocking) ----------------------------------------------

    def check_store(self) -> str:
        """The store answers and its schema is current. The driver's words (hosts,
        ports) go to the log, not to this unauthenticated answer."""
        try:
            if self._head is None:
                self._head = schema.head_revision()  # reads the migrations: once
            if schema.current_revision(self.core.engine) != self._head:
                schema.check_schema(self.core.engine, initialize_empty=False)  # says why
        except SQLAlchemyError as exc:
            reason = describe(exc)
            if reason != self._store_down:  # once per outage (and cause), not per probe
                logger.warning("readiness: the store does not answer: %s", reason)
            self._store_down = reason
            return STORE_DOWN
        self._store_down = None
        return OK

    def check_drain(self) -> str:
        """The node's drained flag is off (a node without a row is not drained)."""
        try:
            with self.core.sessions.begin() as session:
                drained = session.execute(
                    select(Node.drained).where(Node.name == self.core.node_name)
                ).scalar()
        except StoreError:
            return "unknown: the store does not answer"
        return "draining" if drained else OK

    # --- evaluation ---------------------------------------------------------------

    async def readiness(self) -> Readiness:
        """The latest evaluation if younger than ``cache_s``, else a new one (shared
        with every request that arrives meanwhile). Call on the event loop."""
        cached = self._cached
        if cached is not None and time.monotonic() - cached[0] < self.cache_s:
            return cached[1]
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._evaluate())
        # Shielded: a client that goes away does not cancel the others' evaluation.
        return await asyncio.shield(self._pending)

    async def _evaluate(self) -> Readiness:
        try:
            self.evaluations += 1
            waiting = {name: asyncio.wrap_future(self._start(name)) for name in self.checks}
            await asyncio.wait(waiting.values(), timeout=self.timeout_s)
            checks = {
                name: future.result() if future.done() else f"no answer within {self.timeout_s:g} s"
                for name, future in waiting.items()
            }
            result = Readiness(checks)
            failing = {k: v for k, v in checks.items() if v != OK}
            if failing != self._failing:  # logged when it changes, not at every probe
                self._failing = failing
                if failing:
                    logger.warning("not ready: %s", failing)
                else:
                    logger.info("ready: every check passes (%s)", ", ".join(checks))
            self._cached = (time.monotonic(), result)
            return result
        finally:
            self._pending = None

    def _start(self, name: str) -> concurrent.futures.Future[str]:
        """Run check *name* in a thread of its own, unless it still runs from before."""
        with self._lock:
            running = self._running.get(name)
            if running is not None and not running.done():
                return running
            future: concurrent.futures.Future[str] = concurrent.futures.Future()
            self._running[name] = future
        check = self.checks[name]

        def work() -> None:
            try:
                result = check()
            except Exception as exc:  # a check's failure is its answer
                result = describe(exc)
            future.set_result(result)

        # A daemon thread: a check hanging at shutdown must not hold the process.
        threading.Thread(target=work, name=f"readyz-{name}", daemon=True).start()
        return future
