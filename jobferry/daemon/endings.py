"""A running job's end: learned, recorded (never given up while the daemon runs),
and cleaned up after.

``follow_to_end`` waits for the first of the job's runner (``Runner.wait_ended``)
and its wrapper's callback (which records the end itself and says so), then records
what the runner says (its final ``poll`` too, when ``wait_ended`` left it to us) and
lets the runner release what it holds for the job (one executor call:
``record_end``), and tells the core (``Core.job_changed``). The
scheduler runs it as one task per job it follows, and frees the job's slot when it
returns.

The end is collected once (outputs scanned, whether the disk was full) and kept
in memory; recording it is retried with back-off, capped at a few seconds
(``FINISH_RETRY_MAX_S``), for as long as it fails. A store that is down, busy or
out of disk space (StoreUnavailableError, StoreFullError) is an outage, not a job
failure, and any other error must not lose the job's true outcome either (it is
logged with a traceback, and retried all the same). The same rule holds for a
PostgreSQL outage and a full SQLite disk. Only a conflict (the end was recorded
elsewhere, e.g. by the job's callback) ends the retries, and a daemon stop, after
which the next daemon re-reads the end from the runner (the job wrapper's result
file, which the wrapper itself keeps trying to write on a full disk).

Whoever follows the job may chain work to its end (``Then``: the scheduler's claim
of the next queued job, into the slot this one frees): it runs in the end's own
executor call once the end is recorded, so a busy node goes from one job's end to
the next job's start without a round trip through the event loop. Its outcome is
handed back on the loop even if the follower is cancelled meanwhile (a daemon stop,
the job taken over elsewhere): the call is shielded, so a job it started is never
left unfollowed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jobferry.daemon.logcontext import job_context
from jobferry.errors import ConflictError, JobferryError, StoreUnavailableError
from jobferry.runners.base import Runner, RunStatus
from jobferry.services.core import Core
from jobferry.services.endings import Ending
from jobferry.services.execution import ClaimedJob, ExecutionService
from jobferry.store.models import JobState
from jobferry.store.records import JobEnd

logger = logging.getLogger(__name__)

#: First and longest wait between attempts at recording a job's end, seconds.
FINISH_RETRY_FIRST_S = 0.25
FINISH_RETRY_MAX_S = 2.0
#: While an end cannot be recorded, a log line at most this often, seconds.
FINISH_LOG_EVERY_S = 60.0


@dataclass(frozen=True)
class Then:
    """Blocking work chained to a job's end (see the module's docstring).

    ``run`` runs in the end's executor call after the end is recorded and the runner
    cleaned up (not if recording failed). ``done`` is called exactly once, on the
    loop, however the call went: ``(run's result, None)``, ``(None, its error)``, or
    ``(None, None)`` when ``run`` did not run."""

    run: Callable[[], Any]
    done: Callable[[Any, BaseException | None], None]


#: Asked on the loop right before each attempt at recording an end: what to chain to
#: it (None: nothing, now).
Chain = Callable[[], Then | None]


async def follow_to_end(
    core: Core,
    execution: ExecutionService,
    runner: Runner,
    claimed: ClaimedJob,
    told: asyncio.Future[None],
    chain: Chain | None = None,
) -> None:
    """Follow *claimed* (started, with a handle) until its end is recorded: by this
    node from *runner*, or by its callback (*told* is done then). Errors are logged;
    cancelling (a daemon stop) leaves the job running. *chain*: work to run in the
    end's own call (``Then``)."""
    assert claimed.handle is not None
    context = job_context(claimed, core.node_name)
    try:
        if claimed.state == JobState.DELETING.value:
            # Re-attached while being cancelled: the kill may never have happened.
            await _cancel(core, runner, claimed, context)
        waiting = asyncio.ensure_future(runner.wait_ended(claimed.handle))
        first: set[asyncio.Future[Any]] = {waiting, told}
        try:  # *told* is a plain future: no task of its own to make and cancel per job
            await asyncio.wait(first, return_when="FIRST_COMPLETED")
        finally:
            if not waiting.done():
                waiting.cancel()
        ended: JobEnd | None = None
        cleaned = False
        if waiting.done() and not waiting.cancelled():
            status = waiting.result()  # None: the end's own call polls for it
            try:
                try:
                    ended = await record_end(core, execution, claimed, status, runner, chain)
                except _NotEnded:  # not expected once the runner said it ended
                    status = await runner.wait(claimed.handle)
                    ended = await record_end(core, execution, claimed, status, runner, chain)
                cleaned = True  # in the same call (record_end)
                logger.debug("job %s ended %s", claimed.job_id, ended.state, extra=context)
            except ConflictError as exc:  # e.g. a callback recorded the end first
                logger.debug("job %s: %s", claimed.job_id, exc.message, extra=context)
        else:
            logger.debug("job %s ended by its callback", claimed.job_id, extra=context)
        core.job_changed(claimed.job_id, ended)
        if not cleaned:
            await core.call(runner.cleanup, claimed.handle)
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("following job %s failed", claimed.job_id, extra=context)


async def _cancel(core: Core, runner: Runner, claimed: ClaimedJob, context: dict[str, Any]) -> None:
    """Kill the job again (a failure is logged: the job is still followed)."""
    assert claimed.handle is not None
    try:
        await core.call(runner.cancel, claimed.handle, "cancelled")
    except asyncio.CancelledError:
        raise
    except JobferryError as exc:
        logger.error("%s", exc, extra=context)
    except Exception:
        logger.exception("unexpected error", extra=context)


class _NotEnded(Exception):
    """The runner's final ``poll`` did not find the job ended (or failed)."""


async def record_end(
    core: Core,
    execution: ExecutionService,
    claimed: ClaimedJob,
    status: RunStatus | None,
    runner: Runner | None = None,
    chain: Chain | None = None,
) -> JobEnd:
    """Record *claimed*'s end (*status*; None: *runner*'s ``poll`` says it, in the same
    call); return it as recorded. With *runner*, its ``cleanup`` of the job follows
    once the end is recorded; with *chain*, what it gives (``Then``) runs after that.

    Each attempt is one executor call: the end is collected (the first time only),
    recorded, cleaned up after and the chained work done in the same call (hops
    between the loop and the worker threads cost CPU on every job).

    Raises:
        ConflictError: the attempt's end was recorded already (or it is not this
            node's any more): nothing to do.
    """
    loop = asyncio.get_running_loop()
    collected: list[Ending] = []  # kept across attempts: collected once
    delay = FINISH_RETRY_FIRST_S
    failures = 0
    logged_at = -FINISH_LOG_EVERY_S
    while True:
        then = None if chain is None else chain()
        try:
            if then is None:
                end = await core.call(_record, execution, claimed, status, collected, runner)
            else:
                end = await _record_then(core, execution, claimed, status, collected, runner, then)
        except (ConflictError, _NotEnded, asyncio.CancelledError):
            raise
        except Exception as exc:
            failures += 1
            core.telemetry.store_retry()
            if isinstance(exc, StoreUnavailableError):
                core.telemetry.store_error("job_end")
            if loop.time() - logged_at >= FINISH_LOG_EVERY_S:
                logged_at = loop.time()
                _log_failure(claimed, core.node_name, exc, failures)
            await asyncio.sleep(delay)
            delay = min(delay * 2, FINISH_RETRY_MAX_S)
            continue
        if failures:
            logger.warning(
                "job %s: its end is recorded, after %d failed attempts",
                claimed.job_id,
                failures,
                extra=job_context(claimed, core.node_name),
            )
        return end


async def _record_then(
    core: Core,
    execution: ExecutionService,
    claimed: ClaimedJob,
    status: RunStatus | None,
    collected: list[Ending],
    runner: Runner | None,
    then: Then,
) -> JobEnd:
    """One attempt (``_record``) with *then* chained to it, shielded: *then*'s ``done``
    hears of its outcome even if the caller is cancelled meanwhile."""
    call = core.future(_record_and_run, execution, claimed, status, collected, runner, then.run)

    def settle(call: asyncio.Future[tuple[JobEnd, Any, BaseException | None]]) -> None:
        if call.cancelled() or call.exception() is not None:
            then.done(None, None)  # the end was not recorded: nothing chained ran
        else:
            _, result, error = call.result()
            then.done(result, error)

    call.add_done_callback(settle)
    end, _, _ = await asyncio.shield(call)
    return end


def _record_and_run(
    execution: ExecutionService,
    claimed: ClaimedJob,
    status: RunStatus | None,
    collected: list[Ending],
    runner: Runner | None,
    run: Callable[[], Any],
) -> tuple[JobEnd, Any, BaseException | None]:
    """Blocking: ``_record``, then *run* (its result, or its error, is handed back with
    the end: the end is recorded whatever *run* does)."""
    end = _record(execution, claimed, status, collected, runner)
    try:
        return end, run(), None
    except Exception as exc:
        return end, None, exc


def _record(
    execution: ExecutionService,
    claimed: ClaimedJob,
    status: RunStatus | None,
    collected: list[Ending],
    runner: Runner | None,
) -> JobEnd:
    """Blocking: one attempt at recording the end (collected into *collected* first,
    if it is empty, after the runner's final poll if *status* is None), then the
    runner's cleanup.

    Raises:
        _NotEnded: the final poll did not find the job ended (or it failed).
    """
    if not collected:
        if status is None:
            assert runner is not None and claimed.handle is not None
            try:
                status = runner.poll(claimed.handle)
            except Exception as exc:  # the caller's ``wait`` tries again (and says why)
                raise _NotEnded() from exc
            if not status.is_final:
                raise _NotEnded()
        collected.append(execution.collect_end(claimed, status))
    end = execution.record_end(claimed, collected[0])
    if runner is not None and claimed.handle is not None:
        try:
            runner.cleanup(claimed.handle)
        except Exception:  # the end is recorded: never retry it for this
            logger.exception("job %s: the runner's cleanup failed", claimed.job_id)
    return end


def _log_failure(claimed: ClaimedJob, node: str, exc: Exception, failures: int) -> None:
    """One line per outage (then one per ``FINISH_LOG_EVERY_S``); a traceback only for
    what is not an outage (a bug, retried all the same)."""
    job_id, context = claimed.job_id, job_context(claimed, node)
    if isinstance(exc, StoreUnavailableError):
        logger.warning(
            "job %s ended but the store cannot take its end (%s); keeping it, retrying "
            "(%d attempts so far)",
            job_id,
            exc.details.get("reason", exc.message),
            failures,
            extra=context,
        )
        return
    logger.exception(
        "recording the end of job %s failed; keeping it, retrying (%d attempts so far)",
        job_id,
        failures,
        extra=context,
    )
