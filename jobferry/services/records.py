"""Face-neutral read records: what the job, dataset and tool reads of services return.

Services answer with these frozen dataclasses, never with ORM objects and never
with a face's JSON; each face (``api/galaxy/``, ``api/wooey/``, ...) turns them
into its own wire shapes. They carry plain values (timestamps as aware UTC
datetimes, sizes in bytes), so a face needs neither the store nor ``argspec``
to read them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jobferry.argspec.command import preferred_option
from jobferry.argspec.introspect import ParamSpec, ScriptSpec


def tool_version(version: str | None, iteration: int | None) -> str | None:
    """The version string clients see for a script version: ``1.0``, or ``1.0+3`` for its
    third upload (iteration) of the same declared version (Galaxy's ``tool_version``)."""
    if version is None:
        return None
    return version if not iteration or iteration == 1 else f"{version}+{iteration}"


@dataclass(frozen=True)
class FileRecord:
    """One file of a job: an upload it was given (``input``) or a file it wrote (``output``)."""

    id: str
    job_id: str
    #: "input" or "output".
    kind: str
    #: Path relative to the job's input or working directory.
    name: str
    #: The parameter (dest) an input was given for, if any.
    param: str | None
    size: int
    sha256: str
    created_at: datetime


@dataclass(frozen=True)
class DatasetRecord:
    """A job file with what a reader of it as a dataset needs of its job."""

    file: FileRecord
    history_id: str | None
    #: Retention deleted the file (its job's directory): shown purged, display is 410.
    files_expired: bool = False


@dataclass(frozen=True)
class JobSummary:
    """A job as listings show it. The admin fields are None unless the reader is an admin;
    ``email``, ``node``, ``runner`` and ``state_reason`` only when the read asked for them."""

    id: str
    state: str
    exit_code: int | None
    created_at: datetime | None
    updated_at: datetime | None
    history_id: str | None
    user_id: str
    tool_id: str | None
    tool_version: str | None
    #: Whether the admin fields below were read (the reader is an admin).
    admin: bool = False
    external_id: str | None = None
    argv: Sequence[str] = ()
    runner: str | None = None
    node: str | None = None
    state_reason: str | None = None
    #: Whether the owner's email was read (it may be None all the same).
    email_read: bool = False
    email: str | None = None


@dataclass(frozen=True)
class JobMetrics:
    """What was measured of a job's run (None: not measured, or not yet)."""

    started_at: datetime | None
    finished_at: datetime | None
    cores: int
    wall_s: float | None
    cpu_user_s: float | None
    cpu_sys_s: float | None
    peak_rss_kb: int | None


@dataclass(frozen=True)
class JobPlacement:
    """Where and with what a job runs (admins only)."""

    runner: str
    external_id: str | None
    node: str | None
    destination: str
    cores: int
    memory_mb: int | None
    gpus: int
    walltime_s: float | None


@dataclass(frozen=True)
class JobDetail:
    """One job with its parameters and files; with its logs (and, for an admin, owner's
    email and metrics) when the read asked for them."""

    summary: JobSummary
    params: dict[str, Any]
    files: Sequence[FileRecord]
    metrics: JobMetrics
    #: Whether the logs (and, for admins, email) were read.
    full: bool = False
    stdout: str = ""
    stderr: str = ""
    #: Retention deleted the job's files: its datasets are purged, their display is 410.
    files_expired: bool = False


@dataclass(frozen=True)
class ToolParam:
    """One parameter of a script as a tool: argparse's description of it, flattened."""

    dest: str
    label: str
    #: The option it is given with (its long one if any); None for a positional.
    option: str | None
    positional: bool
    action: str
    nargs: str | int | None
    type: str
    choices: tuple[Any, ...] | None
    default: Any
    const: Any
    required: bool
    help: str | None
    is_flag: bool
    is_input_file: bool
    is_output_file: bool

    @classmethod
    def of(cls, param: ParamSpec) -> ToolParam:
        return cls(
            dest=param.dest,
            label=param.display_name,
            option=None if param.positional else preferred_option(param),
            positional=param.positional,
            action=param.action,
            nargs=param.nargs,
            type=param.type,
            choices=param.choices,
            default=param.default,
            const=param.const,
            required=param.required,
            help=param.help,
            is_flag=param.is_flag,
            is_input_file=param.is_input_file,
            is_output_file=param.is_output_file,
        )


@dataclass(frozen=True)
class ToolRecord:
    """A script and one of its versions: what a Galaxy tool is here."""

    script_id: str
    slug: str
    name: str
    group: str
    description: str | None
    version_id: str
    version: str
    iteration: int
    is_default: bool
    spec_data: dict[str, Any]

    @property
    def tool_version(self) -> str:
        return tool_version(self.version, self.iteration) or self.version

    @property
    def spec(self) -> ScriptSpec:
        return ScriptSpec.from_dict(self.spec_data)

    def params(self) -> tuple[ToolParam, ...]:
        """The script's parameters, in the order the script declares them."""
        return tuple(ToolParam.of(p) for p in self.spec.params)


@dataclass(frozen=True)
class RerunRecord:
    """A job with its tool, to be submitted again (``build_for_rerun``)."""

    tool: ToolRecord
    job_id: str
    history_id: str | None
    params: dict[str, Any]
    files: Sequence[FileRecord]
