"""Acceptance in ``per_job.py``: submissions/s with jobs held queued, SQLite and PostgreSQL.

Layouts of daemons with ``runners.local.slots: 0`` (jobs accepted and queued,
never run), for one tree: one node on SQLite, one node on PostgreSQL, three
nodes on one machine sharing one PostgreSQL database (submissions spread
round-robin over the nodes' connections). The client is the same 16-connection
pool as everywhere; the reference is a hello-world Tornado server answering the
same POST, measured in the same round.

PostgreSQL: ``JOBFERRY_BENCH_PG_URL`` or the server of ``scripts/services``
(127.0.0.1:55432); when neither answers, a private cluster (``initdb`` in the
temporary directory, run as the ``postgres`` user, the same settings as
``scripts/services``: ``fsync=off``, 300 connections) started for the run and
stopped by its postmaster's pid. Each layout gets a fresh database, dropped at
the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from bench.common.clients import HttpConn, run_pool, submit
from bench.common.daemons import Daemon, ScriptServer
from bench.common.report import log
from bench.common.stats import Deadline, LoadMeter, own_cpu_s, process_cpu_s
from bench.per_job_daemon import CONNECTIONS, NOOP, Tree
from bench.throughput_harness import Row
from tests.pg_cluster import PrivateCluster

PG_URL = os.environ.get(
    "JOBFERRY_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:55432/jobferry"
)


def _answers(url: str) -> bool:
    engine = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False
    finally:
        engine.dispose()


class Postgres:
    """The PostgreSQL server of the run: the shared one, else a private cluster."""

    def __init__(self) -> None:
        self.url = PG_URL
        self.private: PrivateCluster | None = None
        self.databases: list[str] = []

    def start(self) -> None:
        if _answers(self.url):
            log(f"PostgreSQL: {make_url(self.url).render_as_string(hide_password=True)}")
            return
        # A private cluster (tests.pg_cluster), as the tests' outage scenarios use.
        self.private = PrivateCluster()
        self.private.start("max_connections=300")
        self.url = self.private.database_url("postgres")
        log(
            f"PostgreSQL: a private cluster on port {self.private.port}"
            " (the shared one does not answer)"
        )

    def _admin(self, statement: str) -> None:
        engine = create_engine(self.url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text(statement))
        finally:
            engine.dispose()

    def fresh(self, tag: str) -> str:
        name = f"jf_perjob_{tag}_{os.getpid()}"
        self._admin(f'DROP DATABASE IF EXISTS "{name}"')
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE template0')
        self.databases.append(name)
        return make_url(self.url).set(database=name).render_as_string(hide_password=False)

    def close(self) -> None:
        for name in self.databases:
            with contextlib.suppress(Exception):
                self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.databases = []
        if self.private is not None:
            self.private.close()
            self.private = None


class Layout:
    """N queue-only daemons of one tree on one store (SQLite: N = 1)."""

    def __init__(self, name: str, workdir: Path, tree: Path, nodes: int, url: str | None) -> None:
        self.name = name
        self.daemons: list[Daemon] = []
        for i in range(1, nodes + 1):
            config: dict[str, Any] = {
                "node": {"name": f"{name}-n{i}"},
                "runners": {"local": {"slots": 0}},
            }
            if url:
                config["database"] = {"url": url}
            self.daemons.append(Daemon(f"{name}-n{i}", workdir / name, config, tree=tree))
        self.slug = ""

    def start(self, noop: Path) -> None:
        for daemon in self.daemons:
            daemon.start()
        first = self.daemons[0]
        for daemon in self.daemons[1:]:
            daemon.key = first.key  # one store: the first node's admin key is everyone's
        self.slug = first.register(noop)

    def conns(self, count: int) -> list[HttpConn]:
        return [self.daemons[i % len(self.daemons)].conn() for i in range(count)]

    def cpu_s(self) -> float:
        return sum(d.cpu()[0] for d in self.daemons)

    def stop(self) -> None:
        for daemon in self.daemons:
            daemon.stop()


def postgres_cpu_s() -> float:
    """CPU seconds of the processes running as ``postgres`` (the servers and their backends):
    ours while a PostgreSQL layout is measured, not other work. Read only."""
    total = 0.0
    for proc in psutil.process_iter(["username", "cpu_times"]):
        times = proc.info.get("cpu_times")
        if proc.info.get("username") == "postgres" and times is not None:
            total += times.user + times.system
    return total


async def measure_pool(
    conns: list[HttpConn],
    n: int,
    slug: str,
    server_cpu: Callable[[], float],
    deadline: Deadline,
    store_cpu: Callable[[], float] | None = None,
) -> dict[str, Any]:
    """Submissions/s of *n* submissions over *conns* (after a warm-up), CPU per submission
    (the server's, and the database server's when *store_cpu* is given)."""

    async def task(conn: HttpConn, _index: int) -> str:
        return await submit(conn, slug)

    def store() -> float:
        return store_cpu() if store_cpu is not None else 0.0

    try:
        await deadline.bounded(run_pool(conns, 2 * len(conns), task), "warm-up")
        meter = LoadMeter(lambda: own_cpu_s() + server_cpu() + store())
        cpu0, store0 = server_cpu(), store()
        t0 = time.perf_counter()
        await deadline.bounded(run_pool(conns, n, task), "submissions")
        seconds = time.perf_counter() - t0
        return {
            "requests": n,
            "requests_per_s": n / seconds,
            "server_cpu_ms_per_request": 1000 * (server_cpu() - cpu0) / n,
            "database_cpu_ms_per_request": 1000 * (store() - store0) / n,
            **meter.stop(),
        }
    finally:
        for conn in conns:
            conn.close()


#: Targets of issue 15.
ACCEPT_PER_S = 1500.0
PG_RATIO = 0.9


def med(values: Sequence[float]) -> float:
    return float(statistics.median(values))


class Acceptance:
    """Acceptance of every tree: SQLite, PostgreSQL one node, three nodes; the hello-world
    server between them. Part of ``per_job.PerJob`` (which sets these attributes)."""

    s: Any  # per_job.Settings
    trees: list[Tree]
    workdir: Path
    deadline: Deadline
    hello: ScriptServer
    rows: list[Row]
    details: dict[str, Any]

    def label(self, tree: str, figure: str) -> str:
        raise NotImplementedError

    def order(self, names: list[str], index: int) -> list[str]:
        raise NotImplementedError

    async def acceptance(self) -> None:
        pg = Postgres() if self.s.postgres else None
        layouts: dict[tuple[str, str], Layout] = {}
        try:
            if pg is not None:
                await asyncio.to_thread(pg.start)
            for tree in self.trees:
                kinds: list[tuple[str, int, str | None]] = [("sqlite", 1, None)]
                if pg is not None:
                    kinds += [("pg-1", 1, pg.fresh(f"{tree.label}_1")),
                              ("pg-3", 3, pg.fresh(f"{tree.label}_3"))]  # fmt: skip
                for kind, nodes, url in kinds:
                    layout = Layout(
                        f"accept-{tree.label}-{kind}", self.workdir, tree.path, nodes, url
                    )
                    layouts[(tree.label, kind)] = layout
                    await asyncio.to_thread(layout.start, NOOP)
            await self.accept_rounds(layouts)
        finally:
            for layout in layouts.values():
                layout.stop()
            if pg is not None:
                await asyncio.to_thread(pg.close)

    async def accept_rounds(self, layouts: dict[tuple[str, str], Layout]) -> None:
        per_round = max(2 * CONNECTIONS, self.s.accept_jobs // self.s.rounds)
        results: dict[str, list[dict[str, Any]]] = {}
        names = ["hello", *(f"{t}/{k}" for t, k in layouts)]
        for index in range(self.s.rounds):
            for name in self.order(names, index):
                if name == "hello":
                    conns = [self.hello.conn() for _ in range(CONNECTIONS)]
                    info = await measure_pool(
                        conns, per_round, "noop", self.hello_cpu_s, self.deadline
                    )
                else:
                    label, kind = name.split("/")
                    layout = layouts[(label, kind)]
                    info = await measure_pool(
                        layout.conns(CONNECTIONS), per_round, layout.slug, layout.cpu_s,
                        self.deadline, postgres_cpu_s if kind.startswith("pg") else None,
                    )  # fmt: skip
                results.setdefault(name, []).append(info)
                log(
                    f"acceptance round {index + 1}/{self.s.rounds} {name}:"
                    f" {info['requests_per_s']:.0f}/s, server CPU"
                    f" {info['server_cpu_ms_per_request']:.2f} ms/submission"
                    + (
                        f" + PostgreSQL {info['database_cpu_ms_per_request']:.2f} ms"
                        if name.endswith(("pg-1", "pg-3"))
                        else ""
                    )
                    + f" (other work {info['other_cores']:.2f} cores)"
                )
        self.details["acceptance"] = results
        hello = med([r["requests_per_s"] for r in results["hello"]])
        for tree in self.trees:
            rate = {
                kind: med([r["requests_per_s"] for r in results[f"{tree.label}/{kind}"]])
                for label, kind in layouts
                if label == tree.label
            }
            other = max(r["other_cores"] for k, v in results.items() for r in v)
            sqlite = rate["sqlite"]
            self.rows.append(
                Row(self.label(tree.label, "acceptance, SQLite (c=16, queued)"), sqlite, "/s",
                    hello, "hello-world", sqlite / hello, f">= {ACCEPT_PER_S:g}/s",
                    sqlite >= ACCEPT_PER_S, other)
            )  # fmt: skip
            if "pg-1" in rate:
                one, three = rate["pg-1"], rate["pg-3"]
                self.rows.append(
                    Row(self.label(tree.label, "acceptance, PostgreSQL 1 node"), one, "/s",
                        sqlite, "SQLite", one / sqlite, f">= {PG_RATIO:g} x SQLite",
                        one >= PG_RATIO * sqlite, other)
                )  # fmt: skip
                self.rows.append(
                    Row(self.label(tree.label, "acceptance, PostgreSQL 3 nodes"), three, "/s",
                        one, "PostgreSQL 1 node", three / one, ">= 1 node", three >= one, other)
                )  # fmt: skip

    def hello_cpu_s(self) -> float:
        return process_cpu_s(self.hello.pid)
