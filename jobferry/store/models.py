"""SQLAlchemy 2.0 models: users, API keys, scripts and versions, jobs, job files.

Ids are opaque random hex strings (never a sequence a client could walk), the
same in every API face. Timestamps are timezone-aware UTC. Job states are the
internal vocabulary of ``JobState``; each API face maps them to its own.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from jobferry.request_ids import fresh_hex


def new_id() -> str:
    """A fresh opaque id: 16 hex characters (64 random bits from the kernel CSPRNG,
    read in blocks: ``request_ids.fresh_hex``, no system call per id)."""
    return fresh_hex(8)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores UTC without zone (portable); always returns aware UTC datetimes."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


class JobState(enum.StrEnum):
    """The one internal job state machine (see design.md, "The job's life")."""

    NEW = "new"
    QUEUED = "queued"
    RUNNING = "running"
    OK = "ok"
    ERROR = "error"
    DELETING = "deleting"
    DELETED = "deleted"


#: States that never change again.
TERMINAL_STATES = frozenset({JobState.OK, JobState.ERROR, JobState.DELETED})
#: States from which a job can still be cancelled.
ACTIVE_STATES = frozenset({JobState.NEW, JobState.QUEUED, JobState.RUNNING})

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON(), list[Any]: JSON()}


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    username: Mapped[str] = mapped_column(String(255), unique=True)
    email: Mapped[str | None] = mapped_column(String(255), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    password_changed_at: Mapped[datetime | None]


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(255), default="")
    #: sha256 hex of the key; keys are random (≥190 bits), so no salt is needed.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    #: The first characters of the key, so an admin can tell keys apart.
    prefix: Mapped[str] = mapped_column(String(16))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class WebSession(Base):
    """A browser's sign-in (the web face): the cookie carries the token, the store its
    sha256 only; revoked by sign-out, ``user logout-all`` or its two lifetimes."""

    __tablename__ = "web_sessions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    #: How the browser signed in: "password" or "api_key".
    method: Mapped[str] = mapped_column(String(16))
    #: The key it signed in with (revoking the key ends the session too).
    api_key_id: Mapped[str | None] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: The last request seen, written at most every ``web.session_touch_s``.
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: ``created_at`` + ``web.session_max_s``: the absolute end.
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class Script(Base):
    __tablename__ = "scripts"
    __table_args__ = (UniqueConstraint("name", "group_name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    slug: Mapped[str] = mapped_column(String(255), unique=True)
    name: Mapped[str] = mapped_column(String(255))
    group_name: Mapped[str] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(Text)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_by: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ScriptVersion(Base):
    __tablename__ = "script_versions"
    __table_args__ = (UniqueConstraint("script_id", "version", "iteration"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    script_id: Mapped[str] = mapped_column(ForeignKey("scripts.id", ondelete="CASCADE"), index=True)
    version: Mapped[str] = mapped_column(String(64))
    iteration: Mapped[int] = mapped_column(Integer)
    checksum: Mapped[str] = mapped_column(String(64), index=True)
    path: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    #: The introspected parser (jobferry.argspec.ScriptSpec.to_dict()).
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_by: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        # Listings newest first (Galaxy's default order), per user and per state, with
        # the id as tie-breaker so a page of ids is read from the index alone.
        Index("ix_jobs_updated", "updated_at", "id"),
        Index("ix_jobs_user_updated", "user_id", "updated_at", "id"),
        Index("ix_jobs_created", "created_at", "id"),
        Index("ix_jobs_state_updated", "state", "updated_at", "id"),
        # The claim's order (priority desc, then per user the oldest), so a claim
        # reads one index entry per user with queued jobs instead of sorting the
        # whole queue (``store.fair_claim``); its state prefix also serves the
        # queries on the state alone (metrics, a node's running jobs, recovery).
        Index(
            "ix_jobs_claim",
            "state",
            "destination",
            text("priority DESC"),
            "user_id",
            "created_at",
            "id",
        ),
        Index("ix_jobs_user_created", "user_id", "created_at"),
        # Retention (services.retention): ended jobs whose files are still there, oldest
        # end first (an idle round reads one short index range), and ended jobs by end.
        Index("ix_jobs_files_expiry", "files_expired_at", "finished_at"),
        Index("ix_jobs_finished", "finished_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    script_version_id: Mapped[str | None] = mapped_column(
        ForeignKey("script_versions.id", ondelete="SET NULL"), index=True
    )
    name: Mapped[str] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(Text)
    #: The command string as submitted.
    command: Mapped[str] = mapped_column(Text, default="")
    #: The argv to execute (a list; never passed through a shell).
    argv: Mapped[list[Any]] = mapped_column(JSON)
    #: Parsed parameter values by dest.
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED)
    state_reason: Mapped[str | None] = mapped_column(Text)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    #: An opaque grouping label a client gave at submission (Galaxy's history_id).
    history_id: Mapped[str | None] = mapped_column(String(64), index=True)
    runner: Mapped[str] = mapped_column(String(32), default="local")
    destination: Mapped[str] = mapped_column(String(64), default="local")
    node: Mapped[str | None] = mapped_column(String(255))
    #: The node whose disk holds the job's directory (the one that accepted it).
    home_node: Mapped[str | None] = mapped_column(String(255))
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    #: The runner's id for the run (pid@start, container id, Slurm id).
    external_id: Mapped[str | None] = mapped_column(String(255))
    #: The runner's RunHandle as JSON, to re-attach after a restart.
    handle: Mapped[str | None] = mapped_column(Text)
    cores: Mapped[int] = mapped_column(Integer, default=1)
    gpus: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    memory_mb: Mapped[int | None] = mapped_column(Integer)
    walltime_s: Mapped[float | None] = mapped_column(Float)
    #: What the submission asked of the runner beyond its destination (a TES task's
    #: Slurm ``{"partition": ..., "qos": ...}``), read by ``ExecutionService.spec``.
    runner_options: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    job_dir: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    wall_s: Mapped[float | None] = mapped_column(Float)
    cpu_user_s: Mapped[float | None] = mapped_column(Float)
    cpu_sys_s: Mapped[float | None] = mapped_column(Float)
    peak_rss_kb: Mapped[int | None] = mapped_column(Integer)
    #: When retention deleted the job's directory: its files answer 410 Gone since.
    files_expired_at: Mapped[datetime | None]


class TesTask(Base):
    """A job that is a GA4GH TES task (``services.tes``): the document it was created
    with, beside its ``jobs`` row (state, attempts, node) and removed with it.

    ``user_id``, ``name`` and ``created_at`` repeat the job's so that a TES listing (a
    user's tasks, newest first, by name prefix) reads one index range of this table
    alone; ``tags`` are kept apart from ``doc`` so the tag filter reads them without
    the (up to MiBs of inline content) document."""

    __tablename__ = "tes_tasks"
    __table_args__ = (
        Index("ix_tes_tasks_created", "created_at", "job_id"),
        Index("ix_tes_tasks_user_created", "user_id", "created_at", "job_id"),
    )

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    #: The task's name in full ("" without one; the job's is cut at 255 characters).
    name: Mapped[str] = mapped_column(Text, default="")
    doc: Mapped[dict[str, Any]] = mapped_column(JSON)
    tags: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: Lines known at create for the task's system log (backend parameters ignored).
    notes: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: The TES state the task ended in, written with its job's end (None until then):
    #: the task reads the same once retention removed its files, and on any node.
    final_state: Mapped[str | None] = mapped_column(String(16), default=None)
    #: Then too: each attempt's state file (None for one that wrote none), in order.
    final_logs: Mapped[list[Any] | None] = mapped_column(JSON, default=None)


class JobFile(Base):
    __tablename__ = "job_files"
    __table_args__ = (UniqueConstraint("job_id", "kind", "name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    #: "input" or "output".
    kind: Mapped[str] = mapped_column(String(8))
    #: Path relative to the job's input or working directory.
    name: Mapped[str] = mapped_column(Text)
    #: The parameter (dest) an input was given for, if any.
    param: Mapped[str | None] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Setting(Base):
    """Daemon-wide values shared by every node of a store (e.g. the job_key secret)."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class NodeState(enum.StrEnum):
    UP = "up"
    #: Finishes its jobs, claims no new ones.
    DRAINING = "draining"
    #: Its heartbeat lapsed; its jobs were requeued or adopted by another node.
    DEAD = "dead"
    #: Stopped cleanly (SIGTERM); its jobs keep running and it re-attaches at start.
    STOPPED = "stopped"


class Node(Base):
    """A daemon sharing the store: what it offers, what it has left, when it last spoke."""

    __tablename__ = "nodes"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    #: The URL other nodes and clients reach it at (redirects, remote wrappers).
    url: Mapped[str] = mapped_column(Text, default="")
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16), default=NodeState.UP.value)
    #: Set by an admin (drain): claims nothing new while true, whatever the state.
    drained: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    cores_total: Mapped[int] = mapped_column(Integer, default=0)
    memory_mb_total: Mapped[int] = mapped_column(Integer, default=0)
    gpus_total: Mapped[int] = mapped_column(Integer, default=0)
    cores_free: Mapped[int] = mapped_column(Integer, default=0)
    memory_mb_free: Mapped[int] = mapped_column(Integer, default=0)
    gpus_free: Mapped[int] = mapped_column(Integer, default=0)
    running_jobs: Mapped[int] = mapped_column(Integer, default=0)
    #: Bumped at every start: a daemon that finds a newer incarnation of itself stops.
    incarnation: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime | None]
    #: Written with the database's clock (never the node's own), like the checks on it.
    heartbeat_at: Mapped[datetime | None]
    pid: Mapped[int | None] = mapped_column(Integer)
