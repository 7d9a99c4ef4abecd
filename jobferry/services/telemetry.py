"""Prometheus metrics of one daemon: what is recorded where events happen, and read at scrape.

One ``Telemetry`` per process (``Core.telemetry``, made on first use), holding a
``CollectorRegistry`` of its own with the process, platform and GC collectors.
Every layer that records an event reaches it through the core: the faces
(submissions, HTTP requests, staged bytes), the services (job starts and ends)
and the daemon (runner and store errors, reaper rounds). Recording is a counter
increment or a histogram observation under prometheus_client's own short lock:
microseconds, never a store access. With ``metrics.enabled: false`` nothing is
registered and every ``record`` method returns at its first line.

What is only known at scrape time is read then, from memory: the node's
resources, heartbeat age and drain flag (``node_source``, given by the daemon)
and the store's job counts (``store_figures``, refreshed by
``services.metrics.MetricsService`` off the event loop and cached).

Label sets are bounded: route templates (never a raw path), a fixed list of
methods, status classes, faces, directions, reason classes, and the configured
destinations and runners. No label ever carries a job id, a user or a path.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from jobferry.config.operations import MetricsConfig
from jobferry.errors import StoreUnavailableError

#: Faces that submit jobs (the label values of ``jobferry_submissions_total``).
FACES = ("wooey", "galaxy", "tes")
#: HTTP methods kept as label values; any other is counted as ``other``.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: Why a job ended, in a few classes (the label ``reason``).
REASON_CLASSES = (
    "success",
    "exit_code",
    "cancelled",
    "walltime",
    "memory",
    "disk_full",
    "start_failed",
    "lost",
    "other",
)
#: Where store errors are counted (the label ``where``).
STORE_ERROR_PLACES = ("http", "job_end", "heartbeat", "claim")
#: What the reaper did with a dead node's job (the label ``action``).
REAPER_ACTIONS = ("requeued", "failed", "deleted", "adopted")
#: Kinds of runner errors (the label ``kind``).
RUNNER_ERROR_KINDS = ("unavailable", "submit_failed")
#: Seconds: from a second to a day (queue waits and run times).
JOB_BUCKETS = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 12 * 3600, 86400)
#: Seconds: an HTTP request, from a millisecond to a minute. Few buckets: every route,
#: method and status class is a series of them, and exposition time grows with lines.
HTTP_BUCKETS = (0.001, 0.005, 0.025, 0.1, 0.25, 1, 5, 30)
#: Seconds: one staged transfer.
STAGING_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800)


class _HasCore(Protocol):
    core: Any


S = TypeVar("S", bound=_HasCore)
P = ParamSpec("P")
R = TypeVar("R")


def counts_store_errors(
    where: str,
) -> Callable[[Callable[Concatenate[S, P], R]], Callable[Concatenate[S, P], R]]:
    """Decorate a service method: a StoreUnavailableError it raises is counted in
    ``jobferry_store_errors_total{where=...}`` (and raised on)."""

    def wrap(method: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], R]:
        @functools.wraps(method)
        def counted(self: S, *args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return method(self, *args, **kwargs)
            except StoreUnavailableError:
                self.core.telemetry.store_error(where)
                raise

        return counted

    return wrap


def reason_class(state: str, reason: str | None) -> str:
    """The bounded class of a job end's *reason* (its text is free-form)."""
    if state == "ok":
        return "success"
    if state == "deleted":
        return "cancelled"
    text = (reason or "").lower()
    for needle, found in (
        ("disk", "disk_full"),
        ("no space", "disk_full"),
        ("walltime", "walltime"),
        ("time limit", "walltime"),
        ("memory", "memory"),
        ("oom", "memory"),
        ("could not start", "start_failed"),
        ("never started", "start_failed"),
        ("lost", "lost"),
        ("died", "lost"),
        ("exit code", "exit_code"),
    ):
        if needle in text:
            return found
    return "other"


def epoch(moment: datetime | None) -> float | None:
    """*moment* (aware, or naive UTC as the store keeps it) as epoch seconds."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@dataclass(frozen=True)
class NodeFigures:
    """What the daemon knows of its node at a scrape (all from memory)."""

    cores_total: int
    cores_free: int
    memory_mb_total: int
    memory_mb_free: int
    gpus_total: int
    gpus_free: int
    #: Seconds since the last heartbeat was written (None: none yet).
    heartbeat_age_s: float | None
    drained: bool


@dataclass(frozen=True)
class StoreFigures:
    """The store's job counts (non-terminal states) as of *read_at* (epoch seconds)."""

    #: (state, destination, runner) -> jobs held by this node.
    node_jobs: dict[tuple[str, str, str], int] = field(default_factory=dict)
    #: (state, destination, runner) -> jobs in the whole store; None: another node exports them.
    store_jobs: dict[tuple[str, str, str], int] | None = None
    #: (state) -> nodes, whole store; None as above.
    store_nodes: dict[str, int] | None = None
    read_at: float = 0.0
    #: How long reading them took, seconds.
    read_s: float = 0.0


class _ScrapeCollector(Collector):
    """The gauges that are read at scrape time (node figures, store figures)."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry

    def collect(self) -> Iterator[Metric]:
        t = self.telemetry
        node = t.node
        source = t.node_source
        if source is not None:
            yield from _node_families(node, source())
        figures = t.store_figures
        if figures is None:
            return
        jobs = GaugeMetricFamily(
            "jobferry_node_jobs",
            "Jobs this node holds, by state (queued jobs are nobody's: see jobferry_store_jobs).",
            labels=["node", "state", "destination_id", "job_runner_name"],
        )
        for (state, destination, runner), count in sorted(figures.node_jobs.items()):
            jobs.add_metric([node, state, destination, runner], count)
        yield jobs
        exporter = GaugeMetricFamily(
            "jobferry_store_figures_exporter",
            "1 on the one node that exports the whole store's figures (jobferry_store_*).",
            labels=["node"],
        )
        exporter.add_metric([node], 1 if figures.store_jobs is not None else 0)
        yield exporter
        age = GaugeMetricFamily(
            "jobferry_store_figures_age_seconds",
            "Age of the store figures served (they are cached for metrics.store_cache_s).",
            labels=["node"],
        )
        age.add_metric([node], max(0.0, time.time() - figures.read_at))
        yield age
        read = GaugeMetricFamily(
            "jobferry_store_figures_read_seconds",
            "How long the last read of the store figures took.",
            labels=["node"],
        )
        read.add_metric([node], figures.read_s)
        yield read
        if figures.store_jobs is not None:
            store = GaugeMetricFamily(
                "jobferry_store_jobs",
                "Jobs in the whole store by state, destination and runner (non-terminal states).",
                labels=["state", "destination_id", "job_runner_name"],
            )
            for (state, destination, runner), count in sorted(figures.store_jobs.items()):
                store.add_metric([state, destination, runner], count)
            yield store
        if figures.store_nodes is not None:
            nodes = GaugeMetricFamily(
                "jobferry_store_nodes", "Nodes registered in the store, by state.", labels=["state"]
            )
            for state, count in sorted(figures.store_nodes.items()):
                nodes.add_metric([state], count)
            yield nodes


def _node_families(node: str, f: NodeFigures) -> Iterable[Metric]:
    mib = 1024 * 1024
    for name, help_text, total, free in (
        ("cores", "CPU cores for local and Docker jobs", f.cores_total, f.cores_free),
        (
            "memory_bytes",
            "Memory for local and Docker jobs, bytes",
            f.memory_mb_total * mib,
            f.memory_mb_free * mib,
        ),
        ("gpus", "GPUs for local and Docker jobs", f.gpus_total, f.gpus_free),
    ):
        family = GaugeMetricFamily(
            f"jobferry_node_{name}", f"{help_text}: total and free.", labels=["node", "kind"]
        )
        family.add_metric([node, "total"], total)
        family.add_metric([node, "free"], free)
        yield family
    age = GaugeMetricFamily(
        "jobferry_node_heartbeat_age_seconds",
        "Seconds since this node last wrote its heartbeat (NaN: not yet).",
        labels=["node"],
    )
    age.add_metric([node], float("nan") if f.heartbeat_age_s is None else f.heartbeat_age_s)
    yield age
    drained = GaugeMetricFamily(
        "jobferry_node_drained", "1 while this node is drained (claims nothing).", labels=["node"]
    )
    drained.add_metric([node], 1 if f.drained else 0)
    yield drained


class Telemetry:
    """The metrics of one process (see the module's docstring)."""

    def __init__(self, config: MetricsConfig, node: str, version: str = "") -> None:
        self.enabled = config.enabled
        self.node = node
        #: The daemon's view of its node (set by the daemon; None in other processes).
        self.node_source: Callable[[], NodeFigures] | None = None
        #: The last store figures read (``services.metrics``).
        self.store_figures: StoreFigures | None = None
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[str, ...], Any] = {}
        self._http_children: dict[tuple[str, str, int], Any] = {}
        if not self.enabled:
            return
        registry = self.registry
        # No ``*_created`` series (one more line per series, read by no dashboard here):
        # exposition time grows with lines (prometheus_client's process-wide switch).
        disable_created_metrics()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        registry.register(_ScrapeCollector(self))
        info = GaugeMetricFamily(
            "jobferry_build_info", "The daemon's version and node.", labels=["version", "node"]
        )
        info.add_metric([version, node], 1)
        registry.register(_Constant([info]))
        self._submissions = Counter(
            "jobferry_submissions",
            "Jobs submitted, by face.",
            ["face"],
            registry=registry,
        )
        for face in FACES:  # present from the start, at 0
            self._submissions.labels(face)
        self._ends = Counter(
            "jobferry_job_ends",
            "Job ends recorded by this node, by outcome (state) and reason class.",
            ["destination_id", "job_runner_name", "state", "reason"],
            registry=registry,
        )
        self._queue_wait = Histogram(
            "jobferry_job_queue_wait_seconds",
            "Time from a job's creation to its start (claim), by destination.",
            ["destination_id"],
            buckets=JOB_BUCKETS,
            registry=registry,
        )
        self._run_time = Histogram(
            "jobferry_job_run_seconds",
            "Time from a job's start to its end (wall time of the run), by destination.",
            ["destination_id"],
            buckets=JOB_BUCKETS,
            registry=registry,
        )
        self._staged_bytes = Counter(
            "jobferry_staging_bytes",
            "Bytes staged over HTTP (request or response body), by channel and direction.",
            ["channel", "direction"],
            registry=registry,
        )
        self._staged_seconds = Histogram(
            "jobferry_staging_seconds",
            "Duration of one staged transfer over HTTP, by channel and direction.",
            ["channel", "direction"],
            buckets=STAGING_BUCKETS,
            registry=registry,
        )
        self._http = Histogram(
            "jobferry_http_request_duration_seconds",
            "HTTP requests by route template, method and status class.",
            ["route", "method", "status"],
            buckets=HTTP_BUCKETS,
            registry=registry,
        )
        self._runner_errors = Counter(
            "jobferry_runner_errors",
            "Runner errors: engine or controller unreachable (unavailable), submit failures.",
            ["job_runner_name", "kind"],
            registry=registry,
        )
        self._store_errors = Counter(
            "jobferry_store_errors",
            "Store operations that failed (unavailable, full, or otherwise), by where.",
            ["where"],
            registry=registry,
        )
        for where in STORE_ERROR_PLACES:
            self._store_errors.labels(where)
        self._store_retries = Counter(
            "jobferry_store_retries",
            "Retries of recording a job's end while the store could not take it.",
            registry=registry,
        )
        self._reaper_rounds = Counter(
            "jobferry_reaper_rounds",
            "Reaper rounds this node ran (declaring dead nodes, recovering their jobs).",
            registry=registry,
        )
        self._reaper_jobs = Counter(
            "jobferry_reaper_jobs",
            "Jobs of dead nodes recovered by this node's reaper, by action.",
            ["action"],
            registry=registry,
        )
        for action in REAPER_ACTIONS:
            self._reaper_jobs.labels(action)
        self._dead_nodes = Counter(
            "jobferry_reaper_dead_nodes",
            "Nodes this node's reaper declared dead.",
            registry=registry,
        )

    def declare_runners(self, runners: Iterable[str]) -> None:
        """Show each runner's error counters from the start, at 0."""
        if self.enabled:
            for runner in runners:
                for kind in RUNNER_ERROR_KINDS:
                    self._runner_errors.labels(runner, kind)

    # --- recording (hot paths: microseconds, no store) ----------------------------------------

    # Each labelled child is looked up once through ``labels()`` (a lock, validation) and
    # then kept in a plain dict: a dict hit and the child's own update is all a hot-path
    # call costs. Two threads adding the same key get the same child (labels() is
    # idempotent), so the dicts need no lock.

    def submitted(self, face: str, count: int = 1) -> None:
        if self.enabled:
            child = self._children.get(("submitted", face))
            if child is None:
                child = self._children[("submitted", face)] = self._submissions.labels(face)
            child.inc(count)

    def job_started(self, destination: str, created_at: datetime | None) -> None:
        """A job began running (claimed, or started directly): its queue wait."""
        if self.enabled:
            created = epoch(created_at)
            wait = 0.0 if created is None else max(0.0, time.time() - created)
            child = self._children.get(("wait", destination))
            if child is None:
                child = self._children[("wait", destination)] = self._queue_wait.labels(destination)
            child.observe(wait)

    def job_ended(
        self,
        destination: str,
        runner: str,
        state: str,
        reason: str | None,
        run_s: float | None,
    ) -> None:
        """A job's end was recorded by this process; *run_s*: its run's wall time, if it ran."""
        if self.enabled:
            destination = destination or "unknown"
            key = ("end", destination, runner or "unknown", state, reason_class(state, reason))
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self._ends.labels(*key[1:])
            child.inc()
            if run_s is not None:
                child = self._children.get(("run", destination))
                if child is None:
                    child = self._children[("run", destination)] = self._run_time.labels(
                        destination
                    )
                child.observe(max(0.0, run_s))

    def staged(self, channel: str, direction: str, size: int, seconds: float) -> None:
        if self.enabled:
            key = ("staged", channel, direction)
            children = self._children.get(key)
            if children is None:  # labels() per call cost more than the update (every submit)
                children = self._children[key] = (
                    self._staged_bytes.labels(channel, direction),
                    self._staged_seconds.labels(channel, direction),
                )
            children[0].inc(size)
            children[1].observe(seconds)

    def http_request(self, route: str, method: str, status: int, seconds: float) -> None:
        if self.enabled:
            key = (route, method, status)
            child = self._http_children.get(key)
            if child is None:
                child = self._http_children[key] = self._http.labels(
                    route, method if method in METHODS else "other", f"{status // 100}xx"
                )
            child.observe(seconds)

    def runner_error(self, runner: str, kind: str) -> None:
        if self.enabled:
            self._runner_errors.labels(runner, kind).inc()

    def store_error(self, where: str) -> None:
        if self.enabled:
            self._store_errors.labels(where).inc()

    def store_retry(self) -> None:
        if self.enabled:
            self._store_retries.inc()

    def reaper_round(self, *, dead: int, actions: dict[str, int]) -> None:
        if self.enabled:
            self._reaper_rounds.inc()
            if dead:
                self._dead_nodes.inc(dead)
            for action, count in actions.items():
                if count:
                    self._reaper_jobs.labels(action).inc(count)

    # --- exposition ---------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)


class _Constant(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)
