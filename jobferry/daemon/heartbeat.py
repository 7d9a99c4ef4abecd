"""The node's heartbeat loop: publish liveness and free resources, read the drain flag,
drop jobs another node took over, reap dead nodes, and purge ended browser sessions.

Every ``node.heartbeat_s``: write the heartbeat (``NodeService.heartbeat``, the
database's clock); apply the ``drained`` flag to the scheduler; if the row said
this node had been declared dead (it was stopped, cut off, or too slow), log it
and let the scheduler drop the jobs that are no longer its own; then run the
reaper round (``NodeService.reap``) and follow any Slurm job it adopted; last,
delete a bounded batch of ended browser sessions' rows
(``WebSessionService.purge_ended``). That purge lives here, not in the retention
rounds, because retention runs only when configured (off by default) while the
heartbeat always runs; a beat with nothing to purge costs one small read.

A store outage never stops the loop: the failure is logged once, and again
when the store answers.
"""

from __future__ import annotations

import asyncio
import logging
import time

from jobferry.daemon.logcontext import node_context
from jobferry.daemon.scheduler import Scheduler
from jobferry.errors import JobferryError, StoreUnavailableError
from jobferry.services.core import Core
from jobferry.services.nodes import NodeService
from jobferry.services.telemetry import NodeFigures
from jobferry.services.web_sessions import WebSessionService

logger = logging.getLogger(__name__)


class Heartbeat:
    def __init__(
        self,
        core: Core,
        nodes: NodeService,
        scheduler: Scheduler,
        web_sessions: WebSessionService | None = None,
    ) -> None:
        self.core = core
        self.nodes = nodes
        self.scheduler = scheduler
        self.web_sessions = web_sessions
        self.incarnation = 0
        self._failing = False
        #: ``extra=`` of every line: the node's name as a field (``daemon.logcontext``).
        self._context = node_context(nodes.name)
        #: When the last heartbeat was written (monotonic), for jobferry_node_heartbeat_age.
        self._beat_at: float | None = None

    async def register(self, url: str) -> None:
        """Register this node (a new incarnation) before recovery and claims."""
        self.incarnation = await self.core.call(
            self.nodes.register, url=url, free=self.scheduler.usage()
        )
        logger.info(
            "registered node %s (incarnation %d)",
            self.nodes.name,
            self.incarnation,
            extra=self._context,
        )
        self._beat_at = time.monotonic()

    async def run(self, stop: asyncio.Event) -> None:
        """Beat until *stop* is set; set *stop* if a newer daemon took this node's name."""
        interval = self.core.config.node.heartbeat_s
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
                return
            except TimeoutError:
                pass
            try:
                await self.beat(stop)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if isinstance(exc, StoreUnavailableError):
                    self.core.telemetry.store_error("heartbeat")
                if not self._failing:
                    self._failing = True
                    reason = (
                        exc.details.get("reason", exc.message)
                        if isinstance(exc, JobferryError)
                        else repr(exc)
                    )
                    logger.error(
                        "node %s: heartbeat failed: %s",
                        self.nodes.name,
                        reason,
                        extra=self._context,
                    )
                continue
            if self._failing:
                self._failing = False
                logger.warning(
                    "node %s: heartbeat works again", self.nodes.name, extra=self._context
                )

    async def beat(self, stop: asyncio.Event) -> None:
        """One round: heartbeat, drain flag, lost jobs, reaper, ended sessions."""
        scheduler = self.scheduler
        report = await self.core.call(self.nodes.heartbeat, self.incarnation, scheduler.usage())
        self._beat_at = time.monotonic()
        if report.reregistered is not None:
            logger.warning(
                "node %s: its row had gone; registered again", self.nodes.name, extra=self._context
            )
            self.incarnation = report.reregistered
        if report.superseded:
            logger.error(
                "node %s: another daemon (pid %s) started with this node name; stopping",
                self.nodes.name,
                report.superseded_by_pid,
                extra=self._context,
            )
            stop.set()
            return
        if report.drained != scheduler.drained:
            logger.info(
                "node %s %s",
                self.nodes.name,
                "drained" if report.drained else "undrained",
                extra=self._context,
            )
            scheduler.drained = report.drained
            if not report.drained:
                scheduler.wake()
        if report.was_dead:
            logger.warning(
                "node %s had been declared dead by another node; up again, dropping the "
                "jobs taken over meanwhile",
                self.nodes.name,
                extra=self._context,
            )
        await scheduler.recovery.drop_lost()
        reaped = await self.core.call(self.nodes.reap, adopt_runners=set(scheduler.runners))
        if reaped.ran:
            self.core.telemetry.reaper_round(
                dead=len(reaped.dead),
                actions={
                    "requeued": len(reaped.requeued),
                    "failed": len(reaped.failed),
                    "deleted": len(reaped.deleted),
                    "adopted": len(reaped.adopted),
                },
            )
        if reaped:
            logger.warning(
                "reaper: dead nodes %s; jobs requeued %s, failed %s, deleted %s, adopted %s",
                reaped.dead or "-",
                reaped.requeued or "-",
                reaped.failed or "-",
                reaped.deleted or "-",
                reaped.adopted or "-",
                extra=self._context,
            )
        if reaped.adopted:
            await scheduler.recovery.follow_adopted()
        if reaped.requeued:
            scheduler.wake()
        if self.web_sessions is not None:
            purged = await self.core.call(self.web_sessions.purge_ended)
            if purged:
                logger.debug("purged %d ended browser sessions", purged, extra=self._context)

    def figures(self) -> NodeFigures:
        """What /metrics shows of this node (from memory, on the event loop)."""
        capacity = self.core.node_capacity
        usage = self.scheduler.usage()
        beat = self._beat_at
        return NodeFigures(
            cores_total=capacity.cores or 1,
            cores_free=usage.cores,
            memory_mb_total=capacity.memory_mb or 0,
            memory_mb_free=usage.memory_mb,
            gpus_total=capacity.gpus or 0,
            gpus_free=usage.gpus,
            heartbeat_age_s=None if beat is None else time.monotonic() - beat,
            drained=self.scheduler.drained,
        )

    async def stopped(self) -> None:
        """A clean stop: the node's row says ``stopped``."""
        try:
            await self.core.call(self.nodes.stopped, self.incarnation)
        except Exception as exc:
            logger.warning(
                "node %s: could not record the stop: %s", self.nodes.name, exc, extra=self._context
            )
