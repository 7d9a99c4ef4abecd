"""Wake-ups between nodes: PostgreSQL LISTEN/NOTIFY as a hint, polling as the guarantee.

A transaction that queues a job (a submission, a requeue) calls ``notify_queued``;
on PostgreSQL the notification is delivered when it commits, to every node
listening on ``CHANNEL``, whose scheduler then claims at once instead of at its
next (jittered) poll. On SQLite there is one node and nothing to send.

``Listener`` holds one dedicated autocommit connection in a daemon thread,
re-LISTENs after reconnecting (with back-off, logging once per outage), and
calls its callback for every notification. Lost notifications only cost
latency: the scheduler's poll still finds the job.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy import Connection, Engine, text
from sqlalchemy.orm import Session

from jobferry.store.engine import is_postgres

logger = logging.getLogger(__name__)

CHANNEL = "jobferry_jobs"
_NOTIFY = text("SELECT pg_notify(:channel, '')")


def notify_queued(bind: Session | Connection) -> None:
    """Tell the other nodes a job was queued (PostgreSQL: at this transaction's commit).
    *bind* is the transaction's ORM session or its bare Core connection."""
    connection = bind.connection() if isinstance(bind, Session) else bind
    if connection.dialect.name == "postgresql":
        connection.execute(_NOTIFY, {"channel": CHANNEL})


class Listener:
    """LISTEN on ``CHANNEL`` in a background thread; ``on_notify`` runs in that thread."""

    def __init__(self, engine: Engine, on_notify: Callable[[], None]) -> None:
        self.engine = engine
        self.on_notify = on_notify
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not is_postgres(self.engine):
            return
        self._thread = threading.Thread(target=self._run, name="jobferry-listen", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _connect(self) -> object:
        import psycopg

        url = self.engine.url.set(drivername="postgresql")
        conninfo = url.render_as_string(hide_password=False)
        conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=5)
        conn.execute(f"LISTEN {CHANNEL}")
        return conn

    def _run(self) -> None:
        import psycopg

        delay = 0.5
        down = False
        while not self._stop.is_set():
            try:
                conn = self._connect()
                if down:
                    logger.warning("listening for job notifications again")
                down, delay = False, 0.5
                with conn:  # type: ignore[attr-defined]
                    while not self._stop.is_set():
                        # Wakes at least every second to notice a stop.
                        for _ in conn.notifies(timeout=1.0):  # type: ignore[attr-defined]
                            self.on_notify()
            except psycopg.Error as exc:
                if not down:
                    logger.error("job notifications unavailable (polling goes on): %s", exc)
                down = True
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)
