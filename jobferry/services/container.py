"""The composition root: every service of one jobferry process, built once.

The daemon and the CLI each call ``build`` once and pass the result down; no
handler, command or background task constructs a service itself. A service
that needs another receives it here, through its constructor, so reading this
one function tells how the services depend on each other.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jobferry.services.admin import AdminService
from jobferry.services.auth import AuthService
from jobferry.services.callbacks import CallbackService
from jobferry.services.core import Core
from jobferry.services.disk import DiskGuard
from jobferry.services.execution import ExecutionService
from jobferry.services.galaxy import GalaxyService
from jobferry.services.galaxy_tools import GalaxyToolService
from jobferry.services.health import HealthService
from jobferry.services.job_files import JobFilesService
from jobferry.services.job_pages import JobPageService
from jobferry.services.jobs import JobService
from jobferry.services.metrics import MetricsService
from jobferry.services.nodes import NodeService
from jobferry.services.ports import NO_DISPATCH, NO_JOB_EVENTS, Dispatcher, JobEvents
from jobferry.services.retention import RetentionService
from jobferry.services.scripts import ScriptService
from jobferry.services.tes import TesService
from jobferry.services.tes_end import TASK_ENDS
from jobferry.services.users import UserService
from jobferry.services.web_sessions import WebSessionService


@dataclass(frozen=True)
class Services:
    """Every service of one process; handlers and CLI commands are given this."""

    core: Core
    auth: AuthService
    users: UserService
    scripts: ScriptService
    jobs: JobService
    nodes: NodeService
    job_files: JobFilesService
    callbacks: CallbackService
    galaxy: GalaxyService
    galaxy_tools: GalaxyToolService
    admin: AdminService
    health: HealthService
    retention: RetentionService
    #: The disk guard (507 below storage.min_free_*); ``check`` is a readiness check.
    disk: DiskGuard
    metrics: MetricsService
    #: Browser sign-ins (the web face's sessions).
    web_sessions: WebSessionService
    #: The browser's job list and job pages (keyset pages, live log tails, previews).
    job_pages: JobPageService
    #: The GA4GH TES face's tasks (jobs running the TES task program).
    tes: TesService
    #: When this process was built (Galaxy's ``server_startttime``), epoch seconds.
    started: int = field(default_factory=lambda: int(time.time()))


def build(
    core: Core,
    *,
    dispatcher: Dispatcher[Any] = NO_DISPATCH,
    job_events: JobEvents = NO_JOB_EVENTS,
    execution: ExecutionService | None = None,
    health_checks: Mapping[str, Callable[[], str]] | None = None,
) -> Services:
    """Wire every service of *core*'s process (cheap: nothing touches the store).

    The daemon passes what services need of it (``services.ports``): its
    *dispatcher* starts or queues submissions, *job_events* hears of jobs that
    callbacks ended, and its *execution* (which knows the daemon's URL) records job
    ends, keeping a TES task's with each (``services.tes_end``: the daemon gives its
    *execution* the same). Without a daemon (the CLI, tests) submissions are queued
    and nobody is told. *health_checks* are readiness checks besides the store, the
    drain flag and the runners (``services.health``), by name."""
    auth = AuthService(core)
    disk = DiskGuard(core)
    jobs = JobService(core, dispatcher, disk)
    galaxy = GalaxyService(core, jobs)
    users = UserService(core, auth)
    return Services(
        core=core,
        auth=auth,
        users=users,
        scripts=ScriptService(core),
        jobs=jobs,
        nodes=NodeService(core, on_end=TASK_ENDS),
        job_files=JobFilesService(core, disk),
        callbacks=CallbackService(
            core,
            execution or ExecutionService(core, base_url="", on_end=TASK_ENDS),
            job_events,
        ),
        galaxy=galaxy,
        galaxy_tools=GalaxyToolService(core, jobs, galaxy),
        admin=AdminService(core, auth),
        health=HealthService(core, extra={"disk": disk.check, **(health_checks or {})}),
        retention=RetentionService(core),
        disk=disk,
        metrics=MetricsService(core),
        web_sessions=WebSessionService(core, auth, users),
        job_pages=JobPageService(core, jobs),
        tes=TesService(core, jobs, auth, users),
    )
