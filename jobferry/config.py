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
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic import ValidationError as PydanticValidationError

from jobferry.errors import ConfigError

#: Environment variable naming the configuration file when --config is not given.
CONFIG_ENV = "JOBFERRY_CONFIG"


class _Section(BaseModel):
    # strict: YAML already gives ints, floats, bools and strings, so nothing needs
    # coercing; a quoted "80" or a `true` where a number belongs is a mistake.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        """A section whose keys are all commented out (``server:`` alone) is empty."""
        if isinstance(data, dict):
            return {
                key: value
                for key, value in data.items()
                if not (value is None and _section_of(cls, key) is not None)
            }
        return data


def _section_of(model: type[BaseModel], key: Any) -> type[_Section] | None:
    """The section model of *model*'s field *key*, if that field is a section."""
    field = model.model_fields.get(key) if isinstance(key, str) else None
    annotation = field.annotation if field is not None else None
    if isinstance(annotation, type) and issubclass(annotation, _Section):
        return annotation
    return None


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


class DatabaseConfig(_Section):
    """The SQL store."""

    url: str | None = Field(
        None, description="SQLAlchemy URL; default: sqlite:///<data_dir>/jobferry.db."
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
    max_script_kb: Annotated[int, Field(ge=1)] = Field(
        1024, description="Largest script file accepted."
    )
    default_group: str = Field("Scripts", description="Group of a new script when none is given.")


class LocalRunnerConfig(_Section):
    """The local process runner."""

    slots: Annotated[int, Field(ge=0)] | None = Field(
        None, description="Jobs run at once; default: the number of cores (0: accept, run none)."
    )
    kill_grace_s: Annotated[float, Field(ge=0)] = Field(
        5.0, description="Between SIGTERM and SIGKILL when a job is cancelled or over time."
    )


class RunnersConfig(_Section):
    """Runners that execute jobs."""

    local: LocalRunnerConfig = LocalRunnerConfig()


class JobsConfig(_Section):
    """Job defaults and limits."""

    default_walltime_s: Annotated[int, Field(ge=0)] = Field(
        0, description="Walltime of a job that names none (0: unlimited)."
    )
    files_grace_s: Annotated[int, Field(ge=0)] = Field(
        600,
        description="How long a job's files stay open to its job_key after it ends, so that "
        "late output uploads land.",
    )


class LoggingConfig(_Section):
    """Logging."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    access_log: bool = Field(False, description="Log every HTTP request.")


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
    jobs: JobsConfig = JobsConfig()
    logging: LoggingConfig = LoggingConfig()

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
    value = error.get("input")
    return f"{loc}: {error['msg']} (got {value!r})"


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"a {type(value).__name__} ({value!r:.60})"


def _yaml_error(source: str, exc: yaml.YAMLError) -> ConfigError:
    """One line: where the YAML broke and why."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    what = " ".join(str(problem or exc).split())
    context = getattr(exc, "context", None)
    if context:
        what = f"{' '.join(str(context).split())}: {what}"
    return ConfigError(f"{source}: not valid YAML{where}: {what}")


def _load_yaml(source: str, text: str) -> Any:
    """Parse *text*; duplicate keys are an error (YAML would keep the last silently)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_duplicates(source, node, [])
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise _yaml_error(source, exc) from exc
    finally:
        loader.dispose()


def _check_duplicates(source: str, node: yaml.Node, path: list[str]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            dotted = ".".join([*path, key])
            if key_node.tag != "tag:yaml.org,2002:merge" and key in seen:
                line = key_node.start_mark.line + 1
                raise ConfigError(
                    f"{source}: {dotted}: duplicate key (line {line}); give each key once"
                )
            seen.add(key)
            _check_duplicates(source, value_node, [*path, key])
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _check_duplicates(source, item, [*path, str(index)])


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
