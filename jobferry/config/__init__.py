"""Configuration: one schema, one loader.

The schema is a tree of pydantic models with every default in it, so no file is
needed. ``load_config`` reads the YAML once, rejects unknown keys, wrong types
and bad values with a ``ConfigError`` naming the file, the dotted key and what
was expected, then applies command-line overrides. No other module reads the
environment or the file. pydantic was chosen over hand-written checks because it
reports the exact location of every error and coerces types strictly.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator
from pydantic import ValidationError as PydanticValidationError

from jobferry.config.base import _Section, _section_of
from jobferry.config.operations import (
    LoggingConfig,
    MetricsConfig,
    RetentionConfig,
    StorageConfig,
    WebConfig,
)
from jobferry.config.routing import RoutingConfig
from jobferry.config.routing import RoutingRule as RoutingRule  # re-exported
from jobferry.config.tes import ContainerConfig, TesConfig
from jobferry.config_yaml import load_yaml as _load_yaml
from jobferry.errors import ConfigError

#: Destination names (they are stored on jobs and shown in URLs and tables).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: Environment variable naming the configuration file when --config is not given.
CONFIG_ENV = "JOBFERRY_CONFIG"


class ServerConfig(_Section):
    """The HTTP server."""

    host: str = Field("127.0.0.1", description="Address to bind; 127.0.0.1 unless you mean it.")
    port: Annotated[int, Field(ge=0, le=65535)] = Field(8080, description="TCP port (0: any).")
    base_url: str | None = Field(
        None, description="URL clients reach this daemon at, for links; default: from the request."
    )
    xheaders: bool = Field(False, description="Trust X-Forwarded-* headers from a reverse proxy.")
    max_upload_mb: Annotated[int, Field(ge=1)] = Field(
        1024, description="Largest request body accepted (uploads), in MiB."
    )
    max_form_kb: Annotated[int, Field(ge=1)] = Field(
        1024, description="Largest non-file form body (urlencoded/JSON, or one form field), KiB."
    )
    form_key_max_kb: Annotated[int, Field(ge=1)] = Field(
        1024,
        description="Largest job_files upload whose job_key is in the form, not the query, "
        "KiB: held in memory (never on disk) until the key is checked.",
    )
    idle_timeout_s: Annotated[float, Field(gt=0)] = Field(
        60.0,
        description="Close a connection that has not sent a whole request head this long after "
        "it opened or its last answer (idle keep-alive and slow headers alike).",
    )
    min_body_rate_kbps: Annotated[float, Field(ge=0)] = Field(
        4.0, description="Slowest average upload accepted, KiB/s (0: no limit); see body_grace_s."
    )
    body_grace_s: Annotated[float, Field(gt=0)] = Field(
        30.0, description="Seconds a request body may take before min_body_rate_kbps applies."
    )
    max_connections_per_address: Annotated[int, Field(ge=1)] = Field(
        256, description="Open connections from one client address; more get a 503 and close."
    )


class DatabaseConfig(_Section):
    """The SQL store."""

    url: str | None = Field(
        None,
        description="SQLAlchemy URL (sqlite:/// or postgresql://); "
        "default: sqlite:///<data_dir>/jobferry.db.",
    )
    pool_size: Annotated[int, Field(ge=1, le=64)] = Field(
        4, description="Connections (and database worker threads) per daemon."
    )


class ApiConfig(_Section):
    """API authentication."""

    enable_api_keys: bool = Field(True, description="Accept 'Authorization: Bearer <key>'.")
    key_last_used_resolution_s: Annotated[int, Field(ge=0)] = Field(
        60, description="Record a key's last use at most this often (0: every request)."
    )
    key_cache_s: Annotated[float, Field(ge=0, le=60)] = Field(
        1.0,
        description="Trust a verified key this long without asking the store again; a key "
        "revoked by another process stops working within this time (0: always ask).",
    )
    baseauth_failures_per_minute: Annotated[int, Field(ge=1)] = Field(
        10,
        description="Failed /api/authenticate/baseauth attempts per user and per client "
        "address in a minute; more answer 429 with Retry-After (kept in memory).",
    )


class ScriptsConfig(_Section):
    """Registered scripts and their introspection."""

    interpreter: str | None = Field(
        None, description="Python that runs scripts and introspects them; default: the daemon's."
    )
    introspection_timeout_s: Annotated[float, Field(gt=0, le=600)] = Field(
        10.0, description="Time allowed to read a script's parser."
    )
    introspection_memory_mb: Annotated[int, Field(ge=64)] = Field(
        1024, description="Address-space limit of the introspection process."
    )
    introspection_user: str | None = Field(
        None,
        description="Unprivileged user that runs a script's top-level code to read its "
        "parser, when the daemon runs as root (null: nobody); ignored otherwise.",
    )
    max_script_kb: Annotated[int, Field(ge=1)] = Field(
        1024, description="Largest script file accepted."
    )
    default_group: str = Field("Scripts", description="Group of a new script when none is given.")
    max_command_tokens: Annotated[int, Field(ge=1, le=100_000)] = Field(
        2000,
        description="Most arguments a submitted command may have (more: 400); checking "
        "takes time growing with their square (2000: well under a second).",
    )
    command_check_timeout_s: Annotated[float, Field(gt=0, le=600)] = Field(
        5.0,
        description="CPU time allowed to check one long command (in a low-priority "
        "worker process; more, or 12 times this in all: 400).",
    )


class LocalRunnerConfig(_Section):
    """The local process runner."""

    slots: Annotated[int, Field(ge=0)] | None = Field(
        None, description="Jobs run at once; default: the number of cores (0: accept, run none)."
    )
    kill_grace_s: Annotated[float, Field(ge=0)] = Field(
        5.0, description="Between SIGTERM and SIGKILL when a job is cancelled or over time."
    )


class DockerRunnerConfig(_Section):
    """The Docker runner (docker SDK)."""

    enabled: bool = Field(False, description="Serve destinations with runner: docker.")
    base_url: str = Field(
        "unix:///var/run/docker.sock", description="The Docker engine's API address."
    )
    pull: bool = Field(
        False, description="Pull an image missing locally (false: such a job ends error)."
    )
    user: str | None = Field(
        None,
        description="uid:gid jobs run as in containers; default: the daemon's own if "
        "not root, else 65534:65534 (nobody).",
    )
    slots: Annotated[int, Field(ge=0)] | None = Field(
        None, description="Containers run at once on this node; default: the number of cores."
    )
    timeout_s: Annotated[float, Field(gt=0)] = Field(
        60.0, description="Timeout of one Docker API call."
    )


class SlurmRunnerConfig(_Section):
    """The Slurm runner (sbatch, squeue, scontrol, sacct, scancel)."""

    enabled: bool = Field(False, description="Serve destinations with runner: slurm.")
    bin_dir: str | None = Field(
        None, description="Directory of the Slurm commands; default: found on PATH."
    )
    slots: Annotated[int, Field(ge=0)] = Field(
        1000, description="Slurm jobs this node keeps submitted at once."
    )
    poll_interval_s: Annotated[float, Field(gt=0)] = Field(
        2.0, description="Longest pause between two squeue calls (one call covers every job)."
    )
    command_timeout_s: Annotated[float, Field(gt=0)] = Field(
        30.0, description="Timeout of one Slurm command."
    )


class RunnersConfig(_Section):
    """Runners that execute jobs."""

    local: LocalRunnerConfig = LocalRunnerConfig()
    docker: DockerRunnerConfig = DockerRunnerConfig()
    slurm: SlurmRunnerConfig = SlurmRunnerConfig()


class DestinationConfig(_Section):
    """Where and how a job runs: a runner plus its parameters."""

    runner: Literal["local", "docker", "slurm"] = "local"
    cores: Annotated[int, Field(ge=1)] = 1
    memory_mb: Annotated[int, Field(ge=1)] | None = None
    gpus: Annotated[int, Field(ge=0)] = 0
    walltime_s: Annotated[int, Field(ge=0)] | None = None
    image: str | None = None
    partition: str | None = None
    sbatch_args: list[str] = Field(default_factory=list)
    network: bool = False
    staging: Literal["shared", "remote"] = "shared"
    scratch_dir: str = "/tmp/jobferry-scratch"
    interpreter: str = "python3"
    env: dict[str, str] = Field(default_factory=dict)
    max_concurrent: Annotated[int, Field(ge=1)] | None = None
    container: ContainerConfig | None = None  # TES executors' engine (config.tes)

    @model_validator(mode="after")
    def _runner_params(self) -> DestinationConfig:
        if self.runner == "docker" and not self.image:
            raise ValueError("a docker destination needs an image")
        if self.runner == "docker" and self.container:
            raise ValueError("container: for slurm or local (docker runs its containers)")
        if self.runner == "local" and self.staging == "remote":
            raise ValueError("staging: remote needs runner docker or slurm")
        return self


class NodeConfig(_Section):
    """This daemon as a node: its name and what it offers to local and Docker jobs."""

    name: str | None = Field(None, description="Node name; default: the host name.")
    cores: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Cores jobs may use here; default: the number of cores."
    )
    memory_mb: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Memory jobs may use here, MB; default: the total memory."
    )
    gpus: Annotated[int, Field(ge=0)] | None = Field(
        None, description="GPUs jobs may use here; default: counted by nvidia-smi, else 0."
    )
    url: str | None = Field(
        None, description="URL other nodes and clients reach this node at; default: base_url."
    )
    labels: dict[str, str] = Field(default_factory=dict, description="Free-form node labels.")
    heartbeat_s: Annotated[float, Field(gt=0)] = Field(
        5.0, description="Seconds between heartbeats written to the store."
    )
    dead_after_s: Annotated[float, Field(gt=0)] = Field(
        30.0, description="A node silent this long is declared dead by another node."
    )
    shared_filesystem: bool = Field(
        True,
        description="Every node sees every job directory at the same path (one host, or "
        "NFS); false: a job runs on the node that accepted it (unless staged remotely) and "
        "requests for its files are redirected there.",
    )

    @model_validator(mode="after")
    def _dead_after_heartbeats(self) -> NodeConfig:
        if self.dead_after_s <= self.heartbeat_s:
            raise ValueError(
                "node.dead_after_s must be longer than node.heartbeat_s (a few heartbeats)"
            )
        return self


class JobsConfig(_Section):
    """Job defaults and limits."""

    default_walltime_s: Annotated[int, Field(ge=0)] = Field(
        0, description="Walltime of a job that names none (0: unlimited)."
    )
    max_attempts: Annotated[int, Field(ge=1)] = Field(
        3,
        description="Attempts of a job whose node died before it ends error (a job never "
        "runs on two nodes at once).",
    )
    files_grace_s: Annotated[int, Field(ge=0)] = Field(
        600,
        description="How long a job's files stay open to its job_key after it ends, so that "
        "late output uploads land.",
    )
    max_log_mb: Annotated[int, Field(ge=0)] = Field(
        100,
        description="Cap of a job's stdout and of its stderr, MiB: beyond it the head and the "
        "tail are kept, with a marker saying how many bytes were dropped (0: no cap).",
    )


class Config(_Section):
    """The whole configuration."""

    data_dir: str = Field(
        "./jobferry-data", description="Database, job directories, secret and admin key."
    )
    server: ServerConfig = ServerConfig()
    database: DatabaseConfig = DatabaseConfig()
    api: ApiConfig = ApiConfig()
    scripts: ScriptsConfig = ScriptsConfig()
    runners: RunnersConfig = RunnersConfig()
    destinations: dict[str, DestinationConfig] = Field(
        default_factory=lambda: {"local": DestinationConfig()},
        description="Named destinations: a runner and its parameters.",
    )
    routing: RoutingConfig = RoutingConfig()
    node: NodeConfig = NodeConfig()
    jobs: JobsConfig = JobsConfig()
    logging: LoggingConfig = LoggingConfig()
    metrics: MetricsConfig = MetricsConfig()
    storage: StorageConfig = StorageConfig()
    retention: RetentionConfig = RetentionConfig()
    web: WebConfig = WebConfig()
    tes: TesConfig = TesConfig()

    @model_validator(mode="after")
    def _routes_name_destinations(self) -> Config:
        names = set(self.destinations)
        problems = []
        if self.routing.default not in names:
            problems.append(f"routing.default: unknown destination {self.routing.default!r}")
        if self.tes.destination is not None and self.tes.destination not in names:
            problems.append(f"tes.destination: unknown destination {self.tes.destination!r}")
        for i, rule in enumerate(self.routing.rules):
            if rule.destination not in names:
                problems.append(
                    f"routing.rules.{i}.destination: unknown destination {rule.destination!r}"
                )
        for name, dest in self.destinations.items():
            if not _NAME.fullmatch(name):
                problems.append(f"destinations.{name}: names are letters, digits, _ . -")
            if dest.runner != "local" and not getattr(self.runners, dest.runner).enabled:
                problems.append(
                    f"destinations.{name}.runner: runner {dest.runner!r} is not enabled "
                    f"(runners.{dest.runner}.enabled)"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _tes_roots_spare_the_data_dir(self) -> Config:
        """A ``file://`` root that holds the data directory (or lies inside it) would let
        any TES user read the store, the secret, the admin key and other users' job files:
        refused when the configuration is loaded, not found out later."""
        data = self.data_path
        for root in self.tes.file_roots:
            resolved = Path(root).resolve()
            if resolved == data or resolved in data.parents or data in resolved.parents:
                raise ValueError(
                    f"tes.file_roots: {root!r} overlaps the data directory {str(data)!r}"
                )
        return self

    # --- derived values (not keys) ------------------------------------------------

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite:///{self.data_path / 'jobferry.db'}"

    @property
    def interpreter(self) -> str:
        return self.scripts.interpreter or sys.executable

    @property
    def local_slots(self) -> int:
        slots = self.runners.local.slots
        if slots is None:
            return os.cpu_count() or 1
        return slots


def _describe(error: Any) -> str:
    loc = ".".join(str(part) for part in error["loc"]) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        model: type[BaseModel] | None = Config
        for part in error["loc"][:-1]:
            model = _section_of(model, part) if model is not None else None
        if model is None:
            return f"{loc}: unknown key"
        return f"{loc}: unknown key (expected one of: {', '.join(model.model_fields)})"
    if kind == "value_error":  # from a model validator: the message names its keys
        message = str(error["msg"]).removeprefix("Value error, ")
        return message if loc == "(top level)" else f"{loc}: {message}"
    value = error.get("input")
    return f"{loc}: {error['msg']} (got {value!r})"


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"a {type(value).__name__} ({value!r:.60})"


def parse_config(data: Any, source: str = "<config>") -> Config:
    """Validate a parsed YAML document. Raises ConfigError naming *source*."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: (top level): expected a mapping of keys, got {_kind(data)}")
    try:
        return Config.model_validate(data)
    except PydanticValidationError as exc:
        problems = "; ".join(_describe(err) for err in exc.errors())
        raise ConfigError(f"{source}: {problems}") from exc


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Load the configuration from *path*, else $JOBFERRY_CONFIG, else defaults.

    *overrides* maps dotted keys (``server.port``) to values from the command line;
    ``None`` values are ignored. Raises ConfigError.
    """
    env = os.environ if environ is None else environ
    chosen = str(path) if path else env.get(CONFIG_ENV) or None
    data: dict[str, Any] = {}
    source = "<defaults>"
    if chosen:
        source = chosen
        try:
            text = Path(chosen).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{chosen}: cannot read: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{chosen}: not UTF-8 text (byte {exc.start}); expected a YAML file"
            ) from exc
        loaded = _load_yaml(chosen, text)
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(
                f"{chosen}: (top level): expected a mapping of keys, got {_kind(loaded)}"
            )
        data = loaded or {}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, last = dotted.split(".")
        for depth, part in enumerate(parents):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parents[: depth + 1])
                raise ConfigError(f"{source}: {where}: expected a mapping, got {_kind(child)}")
            node = child
        node[last] = value
    return parse_config(data, source)


def config_as_dict(config: Config) -> dict[str, Any]:
    """The effective configuration, defaults filled in, as plain data."""
    data = config.model_dump(mode="json")
    data["data_dir"] = str(config.data_path)
    data["database"]["url"] = config.database_url
    data["scripts"]["interpreter"] = config.interpreter
    data["runners"]["local"]["slots"] = config.local_slots
    return data
