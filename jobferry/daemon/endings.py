"""Recording a job's end: never given up while the daemon runs.

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
"""

from __future__ import annotations

import asyncio
import logging

from jobferry.errors import ConflictError, StoreUnavailableError
from jobferry.runners.base import RunStatus
from jobferry.services.core import Core
from jobferry.services.endings import Ending
from jobferry.services.execution import ClaimedJob, ExecutionService
from jobferry.store.records import JobEnd

logger = logging.getLogger(__name__)

#: First and longest wait between attempts at recording a job's end, seconds.
FINISH_RETRY_FIRST_S = 0.25
FINISH_RETRY_MAX_S = 2.0
#: While an end cannot be recorded, a log line at most this often, seconds.
FINISH_LOG_EVERY_S = 60.0


async def record_end(
    core: Core, execution: ExecutionService, claimed: ClaimedJob, status: RunStatus
) -> JobEnd:
    """Record *claimed*'s end (*status*); return it as recorded.

    Raises:
        ConflictError: the attempt's end was recorded already (or it is not this
            node's any more): nothing to do.
    """
    loop = asyncio.get_running_loop()
    ending: Ending | None = None
    delay = FINISH_RETRY_FIRST_S
    failures = 0
    logged_at = -FINISH_LOG_EVERY_S
    while True:
        try:
            if ending is None:
                ending = await core.call(execution.collect_end, claimed, status)
            end: JobEnd = await core.call(execution.record_end, claimed, ending)
        except (ConflictError, asyncio.CancelledError):
            raise
        except Exception as exc:
            failures += 1
            if loop.time() - logged_at >= FINISH_LOG_EVERY_S:
                logged_at = loop.time()
                _log_failure(claimed.job_id, exc, failures)
            await asyncio.sleep(delay)
            delay = min(delay * 2, FINISH_RETRY_MAX_S)
            continue
        if failures:
            logger.warning(
                "job %s: its end is recorded, after %d failed attempts", claimed.job_id, failures
            )
        return end


def _log_failure(job_id: str, exc: Exception, failures: int) -> None:
    """One line per outage (then one per ``FINISH_LOG_EVERY_S``); a traceback only for
    what is not an outage (a bug, retried all the same)."""
    if isinstance(exc, StoreUnavailableError):
        logger.warning(
            "job %s ended but the store cannot take its end (%s); keeping it, retrying "
            "(%d attempts so far)",
            job_id,
            exc.details.get("reason", exc.message),
            failures,
        )
        return
    logger.exception(
        "recording the end of job %s failed; keeping it, retrying (%d attempts so far)",
        job_id,
        failures,
    )
