"""Acceptance in ``throughput.py``: submissions/s of a daemon that only queues.

A separate daemon with ``runners.local.slots: 0`` (jobs are accepted and
queued, never run) against a minimal hello-world Tornado server answering the
same POST, in alternating rounds: this machine's speed drifts by tens of
percent within seconds, so each figure is the median of its rounds, each round
next to a reference measured moments apart.
"""

from __future__ import annotations

import asyncio
import signal
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench.common.clients import FORM_TYPE, SUBMIT_BODY, HttpConn, run_pool, submit
from bench.common.daemons import Daemon
from bench.common.report import log
from bench.common.stats import LoadMeter, own_cpu_s, process_cpu_s
from bench.throughput_harness import NOOP, TARGET_ACCEPT_PER_S, Harness, Row
from bench.throughput_refs import hello_server

#: Alternating rounds of the acceptance test (daemon, hello-world, daemon, ...).
ACCEPT_ROUNDS = 3


class Acceptance(Harness):
    """Submissions/s with no slots, against the hello-world server."""

    # 3. acceptance with no slots, against the loopback reference

    async def measure_pool(
        self,
        make_conn: Callable[[], HttpConn],
        task: Callable[[HttpConn, int], Awaitable[Any]],
        server_cpu: Callable[[], float],
        n: int,
    ) -> dict[str, Any]:
        """Requests/s of *n* requests made by *task* over a pool (after a short warm-up),
        CPU use and other work."""
        conns = [make_conn() for _ in range(self.s.accept_concurrency)]
        try:
            warm = min(n, 2 * len(conns))
            await self.deadline.bounded(run_pool(conns, warm, task), "warm-up")
            client0, server0 = own_cpu_s(), server_cpu()
            meter = LoadMeter(lambda: own_cpu_s() + server_cpu())
            t0 = time.perf_counter()
            await self.deadline.bounded(run_pool(conns, n, task), "the request pool")
            seconds = time.perf_counter() - t0
            return {
                "requests": n,
                "connections": len(conns),
                "requests_per_s": n / seconds,
                "server_cpu_per_request_ms": 1000 * (server_cpu() - server0) / n,
                "client_cpu_s": own_cpu_s() - client0,
                **meter.stop(),
            }
        finally:
            for conn in conns:
                conn.close()

    async def acceptance(self) -> None:
        """Submissions/s with no slots, against the hello-world server, in alternating
        rounds (daemon, hello-world, daemon, ...): this machine's speed drifts by tens
        of percent within seconds, so each figure is the median of its rounds, each
        round next to a reference measured moments apart."""
        config = {"runners": {"local": {"slots": 0}}}
        daemon = Daemon(
            "accept-daemon", self.workdir, config, profile_path=self.profile_path("accept")
        )
        hello = hello_server()
        rounds = ACCEPT_ROUNDS
        per_round = max(2, self.s.accept_jobs // rounds)
        ours: list[dict[str, Any]] = []
        refs: list[dict[str, Any]] = []
        try:
            await daemon.start_async(min(60.0, self.deadline.remaining()))
            slug = await asyncio.to_thread(daemon.register, NOOP)
            await asyncio.to_thread(hello.start)

            async def submit_task(conn: HttpConn, _index: int) -> str:
                return await submit(conn, slug)

            async def hello_task(conn: HttpConn, _index: int) -> int:
                status, _ = await conn.request(
                    "POST", "/api/scripts/v1/noop/submit/", SUBMIT_BODY, FORM_TYPE
                )
                return status

            def hello_cpu() -> float:
                return process_cpu_s(hello.pid)

            for index in range(rounds):
                info = await self.best_of(
                    "acceptance",
                    lambda: self.measure_pool(
                        daemon.conn, submit_task, lambda: daemon.cpu()[0], per_round
                    ),
                )
                ref = await self.best_of(
                    "hello-world",
                    lambda: self.measure_pool(hello.conn, hello_task, hello_cpu, per_round),
                )
                ours.append(info)
                refs.append(ref)
                log(
                    f"acceptance round {index + 1}/{rounds}: {per_round} submissions over"
                    f" {info['connections']} connections: {info['requests_per_s']:.0f}/s"
                    f" (daemon CPU {info['server_cpu_per_request_ms']:.2f} ms/submission,"
                    f" other work {info['other_cores']:.2f} cores); hello-world"
                    f" {ref['requests_per_s']:.0f}/s (server CPU"
                    f" {ref['server_cpu_per_request_ms']:.2f} ms/request)"
                )
            daemon.stop(signal.SIGINT if daemon.profile_path else signal.SIGTERM)
            self.report_profile(daemon.profile_path)
        finally:
            hello.stop()
            daemon.stop()

        def median_of(items: list[dict[str, Any]], key: str) -> float:
            return float(statistics.median(float(item[key]) for item in items))

        rate = median_of(ours, "requests_per_s")
        hello_rate = median_of(refs, "requests_per_s")
        summary = {
            "rounds": rounds,
            "requests_per_round": per_round,
            "requests_per_s": rate,
            "server_cpu_per_request_ms": median_of(ours, "server_cpu_per_request_ms"),
            "other_cores": max(float(item["other_cores"]) for item in ours),
        }
        reference = {
            "requests_per_s": hello_rate,
            "server_cpu_per_request_ms": median_of(refs, "server_cpu_per_request_ms"),
            "other_cores": max(float(item["other_cores"]) for item in refs),
        }
        log(
            f"acceptance, median of {rounds} rounds: {rate:.0f}/s (daemon CPU"
            f" {summary['server_cpu_per_request_ms']:.2f} ms/submission); hello-world"
            f" {hello_rate:.0f}/s; ratio {rate / hello_rate:.2f}"
        )
        self.results.details["acceptance"] = {
            "daemon": summary,
            "hello_world": reference,
            "rounds": [{"daemon": a, "hello_world": b} for a, b in zip(ours, refs, strict=True)],
        }
        self.row(
            Row(
                f"submission acceptance (slots=0, c={self.s.accept_concurrency}, median)",
                rate,
                "/s",
                hello_rate,
                "hello-world",
                rate / hello_rate,
                f">= {TARGET_ACCEPT_PER_S:.0f}/s",
                rate >= TARGET_ACCEPT_PER_S,
                max(summary["other_cores"], reference["other_cores"]),
            )
        )
