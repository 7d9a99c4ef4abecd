"""The daemon's life: start-up, recovery, serving, signals, graceful shutdown.

One process runs the Tornado server and the scheduler on one asyncio loop.
Start-up: check (or, for a fresh store, create) the schema, create the first
admin, take the data directory's lock, register as a node (``nodes`` row),
re-attach to jobs left running, then serve and beat (``daemon.heartbeat``).
SIGTERM/SIGINT stop accepting work and exit (the node row says ``stopped``);
running jobs keep running and are re-attached by the next start.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import logging
import os
import signal
import socket
from pathlib import Path
from typing import IO

import tornado.httpserver
import tornado.netutil

from jobferry.api.app import make_app
from jobferry.config import Config
from jobferry.daemon import logformat, redact
from jobferry.daemon.connections import GuardedHTTPServer
from jobferry.daemon.heartbeat import Heartbeat
from jobferry.daemon.logcontext import ContextExecutor, ContextFormatter
from jobferry.daemon.retention import RetentionTask
from jobferry.daemon.scheduler import Scheduler
from jobferry.daemon.sdnotify import Notifier
from jobferry.daemon.supervisor import Supervisor
from jobferry.errors import ConfigError
from jobferry.runners.registry import build_runners
from jobferry.services.container import build as build_services
from jobferry.services.core import Core
from jobferry.services.execution import ExecutionService
from jobferry.services.tes_end import TASK_ENDS
from jobferry.staging.uploads import sweep_partial_uploads
from jobferry.store.engine import check_schema
from jobferry.store.notify import Listener
from jobferry.web import web_routes

logger = logging.getLogger(__name__)

#: File in the data directory describing the running daemon (pid, url), for tools.
STATE_FILE = "daemon.json"


def configure_logging(config: Config) -> None:
    # Job lines end with their job_id, attempt, node and destination, request lines with
    # their request id (``daemon.logcontext``); or JSON lines (``daemon.logformat``).
    handler = logging.StreamHandler()
    handler.setFormatter(ContextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    node = config.node.name or socket.gethostname()
    logformat.install(handler, json_lines=config.logging.format == "json", node=node)
    logging.basicConfig(level=getattr(logging, config.logging.level), handlers=[handler])
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
    # Alembic says "Context impl ..." / "Will assume ... DDL" on every schema check:
    # noise at each start. A migration that runs is logged by jobferry.store.engine.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    redact.install()  # no line may carry an API key, a job_key or a password


#: Above server.max_form_kb for the transport's own check, so that a handler's cap
#: (a JSON 413) is what a client just over the limit meets.
BODY_SLACK = 64 * 1024


def _lock_data_dir(path: Path) -> IO[str]:
    handle = open(path / "daemon.lock", "a+")  # noqa: SIM115 - held for the process's life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ConfigError(
            f"another jobferry daemon is using {path} (lock {path / 'daemon.lock'} is held)"
        ) from None
    return handle


def _listen(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on host:port, or a one-line ConfigError saying why not."""
    try:
        return tornado.netutil.bind_sockets(
            port, host, family=socket.AF_INET if ":" not in host else socket.AF_INET6
        )
    except OSError as exc:
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"{where} is already in use") from None
        raise ConfigError(f"cannot listen on {where}: {exc.strerror or exc}") from None


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        # systemd's variables, out of the environment before anything spawns a job.
        self.notifier = Notifier.from_environment()
        # The port first: a daemon that cannot listen must not leave a new data dir,
        # database and admin key behind (connections queue until we serve).
        self._sockets = _listen(config.server.host, config.server.port)
        node = config.node.name or socket.gethostname()
        self.runners, self.slots = build_runners(config, node)
        self.core = Core(config, runners=self.runners, node_name=node)
        self.stop_event = asyncio.Event()
        self.url = ""
        self.port = 0

    async def start(self) -> tornado.httpserver.HTTPServer:
        core = self.core
        sockets = self._sockets
        # Runners' run_in_executor(None, ...) calls log in their caller's context.
        asyncio.get_running_loop().set_default_executor(ContextExecutor())
        core.ensure_dirs()
        self._lock = _lock_data_dir(core.data_path)
        await core.call(check_schema, core.engine)
        await core.call(lambda: core.secret)
        sweep_partial_uploads(core.tmp_path)  # uploads cut off by a crash
        # The scheduler before the services: they are given its side door for
        # submissions and its ear for callbacks (nothing runs until ``run``).
        self.port = sockets[0].getsockname()[1]
        host = self.config.server.host
        self.url = self.config.server.base_url or f"http://{host}:{self.port}"
        execution = ExecutionService(core, base_url=self.url, on_end=TASK_ENDS)
        self.scheduler = Scheduler(core, execution, self.runners, slots=self.slots)
        services = build_services(
            core, dispatcher=self.scheduler.direct, job_events=self.scheduler, execution=execution
        )
        admin_key_path = await core.call(services.auth.ensure_admin)
        if admin_key_path is not None:
            logger.info("created user 'admin'; its API key is in %s (mode 0600)", admin_key_path)
        limits = self.config.server
        server = GuardedHTTPServer(
            make_app(services, extra_routes=web_routes(services)),
            # Every route that takes no upload buffers its body before its handler runs:
            # by default no more than a form's worth (an anonymous 1 GiB POST to, say,
            # a status route used to be held in memory whole). The streaming upload
            # handlers raise this in prepare(), once the client is authorised.
            max_body_size=limits.max_form_kb * 1024 + BODY_SLACK,
            max_buffer_size=16 * 1024 * 1024,
            xheaders=limits.xheaders,
            # Also Tornado's header timeout: a whole request head within this time.
            idle_connection_timeout=limits.idle_timeout_s,
            body_timeout=3600,
            max_per_address=limits.max_connections_per_address,
            min_body_rate=limits.min_body_rate_kbps * 1024,
            body_grace_s=limits.body_grace_s,
        )
        # Other nodes' submissions and requeues (PostgreSQL NOTIFY); polling stays.
        self.listener = Listener(core.engine, self.scheduler.direct.queued)
        self.listener.start()
        self.heartbeat = Heartbeat(
            core, services.nodes, self.scheduler, web_sessions=services.web_sessions
        )
        self.retention = RetentionTask(core, services.retention)
        core.telemetry.node_source = self.heartbeat.figures  # jobferry_node_* at each scrape
        core.telemetry.declare_runners(self.runners)
        await self.heartbeat.register(self.url)
        await self.scheduler.recovery.recover()
        server.add_sockets(sockets)
        self._write_state()
        logger.info(
            "jobferry serving on %s (node %s, data %s, slots %s)",
            self.url,
            core.node_name,
            core.data_path,
            ", ".join(f"{name} {n}" for name, n in self.slots.items()),
        )
        return server

    def _write_state(self) -> None:
        path = self.core.data_path / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "url": self.url, "port": self.port}))
        tmp.replace(path)

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT, or until a background task or thread dies
        (``daemon.supervisor``); the process's exit status (non-zero after a crash)."""
        server = await self.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_event.set)
        supervisor = Supervisor(self.stop_event)
        supervisor.watch_threads()
        supervisor.start("scheduler", self.scheduler.run(self.stop_event))
        supervisor.start("heartbeat", self.heartbeat.run(self.stop_event))
        if self.notifier.watchdog_s is not None:
            supervisor.start("watchdog", self.notifier.watchdog(self.stop_event))
        if self.retention.retention.enabled:
            supervisor.start("retention", self.retention.run(self.stop_event))
        # Once it serves and SIGTERM is handled (systemd may stop it at once).
        self.notifier.notify(f"READY=1\nSTATUS=serving on {self.url}")
        await self.stop_event.wait()
        self.notifier.notify("STOPPING=1\nSTATUS=stopping")
        logger.info("stopping: no new work accepted; running jobs keep running")
        server.stop()
        await supervisor.join()
        await self.scheduler.detach()
        await self.heartbeat.stopped()
        await loop.run_in_executor(None, self.listener.stop)
        supervisor.close()
        try:
            await asyncio.wait_for(server.close_all_connections(), timeout=5)
        except TimeoutError:
            logger.warning("some connections did not close in time")
        (self.core.data_path / STATE_FILE).unlink(missing_ok=True)
        self.core.close()
        if supervisor.crashed:
            logger.critical(
                "stopped after the crash of %s; exit status %d",
                ", ".join(supervisor.crashed),
                supervisor.exit_status,
            )
        else:
            logger.info("stopped")
        return supervisor.exit_status


def serve(config: Config) -> None:
    """Run the daemon until SIGTERM/SIGINT; exit non-zero if a background task crashed."""
    configure_logging(config)
    status = asyncio.run(Daemon(config).run())
    if status:
        raise SystemExit(status)
