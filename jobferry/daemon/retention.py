"""The retention task: a bounded round every ``retention.interval_s``.

Started (and supervised, ``daemon.supervisor``) only when ``retention.files_days``
or ``retention.rows_days`` is set. At its start it removes the ``.expired-*``
directories a crash may have left; then it runs a round at once and one every
``retention.interval_s``: at most ``retention.batch`` jobs each
(``RetentionService.run_round``: one purger at a time across nodes), off the
event loop. Like the heartbeat, a failing round (the store away) is logged once,
and again when rounds work again; it never ends the task.
"""

from __future__ import annotations

import asyncio
import logging

from jobferry.errors import JobferryError
from jobferry.services.core import Core
from jobferry.services.retention import RetentionService, Round

logger = logging.getLogger(__name__)

#: Most job ids one log line names.
LOGGED_IDS = 20


class RetentionTask:
    def __init__(self, core: Core, retention: RetentionService) -> None:
        self.core = core
        self.retention = retention
        self._failing = False
        #: Rounds run so far (for tests and logs).
        self.rounds = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Sweep leftovers, then a round now and every ``retention.interval_s`` until *stop*."""
        cfg = self.core.config.retention
        logger.info(
            "retention: job files kept %s, job rows kept %s after the end; rounds of at most "
            "%d jobs every %gs",
            _days(cfg.files_days),
            _days(cfg.rows_days),
            cfg.batch,
            cfg.interval_s,
        )
        swept = await self.core.call(self.retention.sweep_leftovers)
        if swept:
            logger.warning("retention: removed %d directories left by an interrupted purge", swept)
        while not stop.is_set():
            await self._round()
            try:
                await asyncio.wait_for(stop.wait(), timeout=cfg.interval_s)
            except TimeoutError:
                pass

    async def _round(self) -> None:
        try:
            done = await self.core.call(self.retention.run_round)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not self._failing:
                self._failing = True
                reason = exc.message if isinstance(exc, JobferryError) else repr(exc)
                logger.error("retention: round failed: %s", reason)
            return
        self.rounds += 1
        if self._failing:
            self._failing = False
            logger.warning("retention: rounds work again")
        _log(done)


def _days(days: float | None) -> str:
    return "forever" if days is None else f"{days:g} day(s)"


def _log(done: Round) -> None:
    if done.locked_out:
        logger.debug("retention: another node holds the retention lock; round skipped")
        return
    for purged in (done.files, done.rows):
        if purged is None or not (purged.job_ids or purged.skipped):
            continue
        ids = purged.job_ids
        shown = " ".join(ids[:LOGGED_IDS]) + (
            f" (+{len(ids) - LOGGED_IDS})" if len(ids) > LOGGED_IDS else ""
        )
        logger.info(
            "retention: purged the %s of %d job(s) that ended before %s, %d bytes freed: %s%s",
            purged.kind.value,
            len(ids),
            purged.cutoff.isoformat(timespec="seconds"),
            purged.bytes_freed,
            shown or "-",
            f"; {len(purged.skipped)} changed meanwhile, left alone" if purged.skipped else "",
        )
