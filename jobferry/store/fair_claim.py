"""The claim's candidate on SQLite, read in O(users with queued jobs), not O(queue).

A claim takes the best priority, then the user with the fewest jobs running now (fair
share), then the oldest job. As one statement (an outer join on the running count per
user, ordered by it) that order cannot come from an index: SQLite read and sorted
every queued job of the claim's destinations on every claim (about 0.5 ms of the
daemon's CPU a claim with 1,000 queued jobs, and growing with the queue, under the
single writer's lock). PostgreSQL keeps that statement (``transitions``): it locks
the row it reads (``FOR UPDATE SKIP LOCKED``) and sorts on the server.

Here the order comes from ``ix_jobs_claim`` (state, destination, priority DESC,
user_id, created_at, id): within one destination and priority, each user's oldest
job is the first entry after that user's id. So a claim reads, per destination, the
head (best priority, first user, that user's oldest) and then one entry per further
user at that priority (``user_id > :after``: a seek each), keeps each user's oldest
over the destinations at the best priority, and, only when several users are
waiting, counts the running jobs per user (an index range of the running states).
The candidate is the same job the single statement picks; the conditions (state,
destination, home node, could-ever-fit) are the claim's own (``transitions``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, Connection, bindparam, func, select

from jobferry.store.dbapi import RawStatement
from jobferry.store.records import HOLDING, JOBS, in_fixed


class Candidate(NamedTuple):
    """The job a claim would take, and whether another queued job would be left."""

    job_id: str
    cores: int
    memory_mb: int
    gpus: int
    more: bool


class Walk(NamedTuple):
    head: RawStatement  # a destination's first two entries: best priority, first user
    next_user: RawStatement  # the first entry of the next user at that priority
    running: RawStatement  # (user_id, jobs running) per user


def walk_sql(conditions: Sequence[ColumnElement[bool]]) -> Walk:
    """The walk's statements for one shape of claim (*conditions*, which must not name
    the destination: it is bound per destination here); built once per shape by the
    claim's own cache (``transitions._claim_sql``)."""
    c = JOBS.c
    where = (*conditions, c.destination == bindparam("dest"))
    memory = func.coalesce(c.memory_mb, 0)
    columns = (c.priority, c.user_id, c.created_at, c.id, c.cores, memory, c.gpus)
    head = (
        select(*columns)
        .where(*where)
        .order_by(c.priority.desc(), c.user_id, c.created_at, c.id)
        .limit(2)  # the second says whether another job is left (``Candidate.more``)
    )
    next_user = (
        select(*columns)
        .where(*where, c.priority == bindparam("prio"), c.user_id > bindparam("after"))
        .order_by(c.user_id, c.created_at, c.id)
        .limit(1)
    )
    running = select(c.user_id, func.count()).where(in_fixed(c.state, HOLDING)).group_by(c.user_id)
    return Walk(RawStatement(head), RawStatement(next_user), RawStatement(running))


def candidate(
    conn: Connection, walk: Walk, destinations: Sequence[str], params: dict[str, Any]
) -> Candidate | None:
    """The job a claim of *destinations* takes (see the module's docstring); None:
    nothing is queued there that could run here."""
    best: dict[str, tuple[Any, ...]] = {}  # user -> that user's oldest at the top priority
    top: int | None = None
    seen = 0  # queued jobs seen (the heads read two)
    for dest in destinations:
        rows = walk.head.all(conn, {**params, "dest": dest})
        seen += len(rows)
        if not rows or (top is not None and rows[0][0] < top):
            continue
        if top is None or rows[0][0] > top:
            top, best = rows[0][0], {}
        row: tuple[Any, ...] | None = tuple(rows[0])
        while row is not None:
            user = row[1]
            if user not in best or row[2:4] < best[user][2:4]:
                best[user] = row
            found = walk.next_user.first(conn, {**params, "dest": dest, "prio": top, "after": user})
            row = None if found is None else tuple(found)
            seen += row is not None
    if not best:
        return None
    if len(best) == 1:
        chosen = next(iter(best.values()))
    else:
        running = dict(walk.running.all(conn, {}))
        chosen = min(best.values(), key=lambda r: (running.get(r[1], 0), r[2], r[3]))
    return Candidate(chosen[3], chosen[4], chosen[5], chosen[6], seen > 1)
