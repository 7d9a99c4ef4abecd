"""GA4GH TES 1.1 task documents: checking a client's document, and the small rules around it.

Pure functions (no I/O, no store), so the TES face, the service and the tests share
one reading of the specification (``ga4gh/task-execution-schemas``, tag ``v1.1``):

- ``validate_task``: a client's ``tesTask`` checked and normalized. The result holds
  only the specification's writable keys, so it is what the store keeps, what the
  task program (``jobferry/runners/tes_task.py``) executes and what ``BASIC`` and
  ``FULL`` views send back. Read-only keys a client sends (``id``, ``state``,
  ``logs``, ``creation_time``) and keys the specification does not know are
  dropped, not refused: clients copy tasks they fetched, and older clients send
  keys 1.1 removed. A JSON ``null`` counts as absent (some clients serialize every
  unset field).
- Container paths are refused when they could leave the task's directory on the
  execution host (a ``..`` component: the task program maps container path ``P``
  to ``root + P``) or break the ``docker run -v HOST:P`` argument (``:``), and an
  image that starts with ``-`` is refused because it would be read as a flag.
- Every string is refused when it holds NUL or is not valid Unicode (a lone
  surrogate from a ``\\ud800`` escape): neither can be stored (PostgreSQL's text and
  JSON refuse both) nor passed to a process.
- ``task_state``: the TES state of a task from its job's state and the task
  program's phase (``tes-interfaces.md`` section 3).
- Tag filters (the specification's truth table), page tokens, RFC 3339 times.

Every refusal is a ``ValidationError`` (400) whose message starts with the field's
path, e.g. ``executors[0].image: must be a non-empty string``.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

from jobferry.errors import ValidationError
from jobferry.services.states import JobState

__all__ = [
    "FILE_TYPES",
    "MAX_NAME_CHARS",
    "MAX_RESOURCE",
    "TASK_KEYS",
    "TES_STATES",
    "VIEWS",
    "decode_page_token",
    "encode_page_token",
    "keep_supported_backend_parameters",
    "rfc3339",
    "tag_filter",
    "tags_match",
    "task_state",
    "unsupported_backend_parameters",
    "validate_task",
]

#: The specification's ``tesState`` values, in its order.
TES_STATES = (
    "UNKNOWN",
    "QUEUED",
    "INITIALIZING",
    "RUNNING",
    "PAUSED",
    "COMPLETE",
    "EXECUTOR_ERROR",
    "SYSTEM_ERROR",
    "CANCELED",
    "PREEMPTED",
    "CANCELING",
)
#: The ``view`` parameter's values (``MINIMAL`` is the default of list and get).
VIEWS = ("MINIMAL", "BASIC", "FULL")
#: ``tesFileType``; ``FILE`` is the default.
FILE_TYPES = ("FILE", "DIRECTORY")
#: The writable ``tesTask`` keys, in the specification's order: all a stored document holds.
TASK_KEYS = (
    "name",
    "description",
    "inputs",
    "outputs",
    "resources",
    "executors",
    "volumes",
    "tags",
)
#: A task's name is indexed for ``name_prefix`` listing; a B-tree entry must stay small.
MAX_NAME_CHARS = 1024
#: Upper bound of ``cpu_cores``, ``ram_gb`` and ``disk_gb``: the job's cores and memory
#: (in MiB) are 32-bit integer columns, and no node comes near a million of either.
MAX_RESOURCE = 1_000_000
#: POSIX pattern characters that make an output path a wildcard (IEEE 1003.1, 2.13).
_WILDCARDS = frozenset("*?[")
#: Page tokens carry a version, so their format can change without misreading old ones.
_TOKEN_VERSION = "t1"


def _fail(where: str, message: str) -> NoReturn:
    raise ValidationError(f"{where}: {message}", errors={where: [message]})


# --- primitive readers ----------------------------------------------------------------


def _object(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        _fail(where, "must be a JSON object")
    return value


def _array(value: object, where: str) -> list[Any]:
    if not isinstance(value, list):
        _fail(where, "must be an array")
    return value


def _string(value: object, where: str, *, non_empty: bool = False) -> str:
    if not isinstance(value, str) or (non_empty and not value):
        _fail(where, "must be a non-empty string" if non_empty else "must be a string")
    if "\x00" in value:
        _fail(where, "must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        _fail(where, "must be valid Unicode text (no lone surrogates)")
    return value


def _boolean(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        _fail(where, "must be true or false")
    return value


def _string_map(value: object, where: str) -> dict[str, str]:
    """A JSON object of strings (``env``, ``tags``, ``backend_parameters``), copied."""
    src = _object(value, where)
    out: dict[str, str] = {}
    for key, item in src.items():
        name = _string(key, where + " key")
        out[name] = _string(item, f"{where}.{name}")
    return out


def _string_list(value: object, where: str, *, non_empty: bool = False) -> list[str]:
    items = _array(value, where)
    if non_empty and not items:
        _fail(where, "must be a non-empty array of strings")
    return [_string(item, f"{where}[{n}]") for n, item in enumerate(items)]


def _container_path(value: object, where: str, *, below_root: bool = True) -> str:
    """An absolute path inside the container, kept as the client wrote it.

    ``..`` is refused because the task program places container path ``P`` at
    ``root + P`` on the execution host; ``:`` because ``docker run -v HOST:P``
    splits on it; control characters because no tool quotes them reliably.
    ``below_root`` refuses ``/`` itself (an input, output, volume or stream is a
    file or directory *in* the container, never its whole file system).
    """
    path = _string(value, where, non_empty=True)
    if not path.startswith("/"):
        _fail(where, "must be an absolute path")
    if any(ord(char) < 0x20 or char == "\x7f" for char in path):
        _fail(where, "must not contain control characters")
    if ":" in path:
        _fail(where, "must not contain ':'")
    if ".." in path.split("/"):
        _fail(where, "must not contain '..' components")
    if below_root and not path.strip("/"):
        _fail(where, "must name a path below '/'")
    return path


def _file_type(value: object, where: str) -> str:
    if value is None:
        return "FILE"
    if value not in FILE_TYPES:
        _fail(where, "must be FILE or DIRECTORY")
    return str(value)


def _copy_strings(src: Mapping[str, Any], keys: Iterable[str], where: str) -> dict[str, Any]:
    """The optional string fields *keys* of *src* that are present, checked."""
    return {key: _string(src[key], f"{where}{key}") for key in keys if src.get(key) is not None}


# --- the document ---------------------------------------------------------------------


def validate_task(doc: object, *, max_content_bytes: int = 1 << 20) -> dict[str, Any]:
    """A TES ``tesTask`` document (already JSON-parsed) checked and normalized.

    Returns a new dict holding only the writable keys (``TASK_KEYS``), in the
    specification's order, with defaults filled: ``inputs[].type`` and
    ``outputs[].type`` ``FILE``, ``executors[].ignore_error`` false,
    ``resources.backend_parameters_strict`` false (when ``resources`` is given).
    Absent optional keys stay absent.

    An input's ``content`` wins over its ``url`` when it is not empty (the
    specification); an empty ``content`` next to a ``url`` is dropped, so a reader
    of the result needs one rule: *an input with a ``content`` key is that literal;
    otherwise it is its ``url``*.

    Raises ValidationError naming the first offending field.
    """
    task = _object(doc, "task")
    out: dict[str, Any] = _copy_strings(task, ("name", "description"), "")
    if len(out.get("name", "")) > MAX_NAME_CHARS:
        _fail("name", f"must be at most {MAX_NAME_CHARS} characters")
    if task.get("inputs") is not None:
        inputs = _array(task["inputs"], "inputs")
        out["inputs"] = [
            _input(item, f"inputs[{n}]", max_content_bytes) for n, item in enumerate(inputs)
        ]
    if task.get("outputs") is not None:
        outputs = _array(task["outputs"], "outputs")
        out["outputs"] = [_output(item, f"outputs[{n}]") for n, item in enumerate(outputs)]
    if task.get("resources") is not None:
        out["resources"] = _resources(task["resources"], "resources")
    if task.get("executors") is None:
        _fail("executors", "is required (at least one executor)")
    executors = _array(task["executors"], "executors")
    if not executors:
        _fail("executors", "must hold at least one executor")
    out["executors"] = [_executor(item, f"executors[{n}]") for n, item in enumerate(executors)]
    if task.get("volumes") is not None:
        volumes = _array(task["volumes"], "volumes")
        out["volumes"] = [_container_path(v, f"volumes[{n}]") for n, v in enumerate(volumes)]
    if task.get("tags") is not None:
        out["tags"] = _string_map(task["tags"], "tags")
    return {key: out[key] for key in TASK_KEYS if key in out}


def _input(value: object, where: str, max_content_bytes: int) -> dict[str, Any]:
    src = _object(value, where)
    out = _copy_strings(src, ("name", "description"), where + ".")
    if src.get("url") is not None:
        out["url"] = _string(src["url"], where + ".url", non_empty=True)
    if src.get("path") is None:
        _fail(where + ".path", "is required")
    out["path"] = _container_path(src["path"], where + ".path")
    out["type"] = _file_type(src.get("type"), where + ".type")
    if src.get("content") is not None:
        content = _string(src["content"], where + ".content")
        if out["type"] == "DIRECTORY":
            _fail(where + ".content", "a literal content makes a FILE, not a DIRECTORY")
        size = len(content.encode("utf-8"))
        if size > max_content_bytes:
            _fail(
                where + ".content",
                f"is {size} bytes; at most {max_content_bytes} bytes are accepted",
            )
        if content or "url" not in out:
            out["content"] = content
    if "url" not in out and "content" not in out:
        _fail(where, "needs a url or a content")
    if src.get("streamable") is not None:
        out["streamable"] = _boolean(src["streamable"], where + ".streamable")
    return out


def _output(value: object, where: str) -> dict[str, Any]:
    src = _object(value, where)
    out = _copy_strings(src, ("name", "description"), where + ".")
    if src.get("url") is None:
        _fail(where + ".url", "is required")
    out["url"] = _string(src["url"], where + ".url", non_empty=True)
    if src.get("path") is None:
        _fail(where + ".path", "is required")
    path = out["path"] = _container_path(src["path"], where + ".path")
    prefix = src.get("path_prefix")
    if prefix is not None:
        prefix = out["path_prefix"] = _string(prefix, where + ".path_prefix")
    if _WILDCARDS.intersection(path):
        # The spec: path_prefix is required with wildcards, and is removed from each
        # match to name it under ``url``; a prefix with a pattern in it could not be.
        if not prefix:
            _fail(where + ".path_prefix", "is required when the path has wildcards (* ? [)")
        if _WILDCARDS.intersection(prefix):
            _fail(where + ".path_prefix", "must not contain wildcards")
        if not path.startswith(prefix):
            _fail(where + ".path_prefix", f"must be a prefix of the path {path!r}")
    out["type"] = _file_type(src.get("type"), where + ".type")
    return out


def _executor(value: object, where: str) -> dict[str, Any]:
    src = _object(value, where)
    image = _string(src.get("image"), where + ".image", non_empty=True)
    if image.startswith("-") or any(char.isspace() or ord(char) < 0x20 for char in image):
        _fail(where + ".image", "must be an image name (no spaces, not starting with '-')")
    if src.get("command") is None:
        _fail(where + ".command", "is required (an argv array)")
    out: dict[str, Any] = {
        "image": image,
        "command": _string_list(src["command"], where + ".command", non_empty=True),
    }
    if src.get("workdir") is not None:
        out["workdir"] = _container_path(src["workdir"], where + ".workdir", below_root=False)
    for key in ("stdin", "stdout", "stderr"):
        if src.get(key) is not None:
            out[key] = _container_path(src[key], f"{where}.{key}")
    if src.get("env") is not None:
        env = out["env"] = _string_map(src["env"], where + ".env")
        for name in env:
            if not name or "=" in name:
                _fail(f"{where}.env", f"{name!r} is not a variable name (empty or with '=')")
    ignore = src.get("ignore_error")
    out["ignore_error"] = False if ignore is None else _boolean(ignore, where + ".ignore_error")
    return out


def _positive_number(value: object, where: str, *, integer: bool) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        _fail(where, "must be a positive integer" if integer else "must be a positive number")
    if integer and isinstance(value, float):
        if not value.is_integer():
            _fail(where, "must be a positive integer")
        value = int(value)
    if not math.isfinite(value) or value <= 0:
        _fail(where, "must be a positive integer" if integer else "must be a positive number")
    if value > MAX_RESOURCE:
        _fail(where, f"must be at most {MAX_RESOURCE}")
    return value


def _resources(value: object, where: str) -> dict[str, Any]:
    src = _object(value, where)
    out: dict[str, Any] = {}
    if src.get("cpu_cores") is not None:
        out["cpu_cores"] = _positive_number(src["cpu_cores"], where + ".cpu_cores", integer=True)
    if src.get("preemptible") is not None:
        out["preemptible"] = _boolean(src["preemptible"], where + ".preemptible")
    for key in ("ram_gb", "disk_gb"):
        if src.get(key) is not None:
            out[key] = _positive_number(src[key], f"{where}.{key}", integer=False)
    if src.get("zones") is not None:
        out["zones"] = _string_list(src["zones"], where + ".zones")
    if src.get("backend_parameters") is not None:
        out["backend_parameters"] = _string_map(
            src["backend_parameters"], where + ".backend_parameters"
        )
    strict = src.get("backend_parameters_strict")
    out["backend_parameters_strict"] = (
        False if strict is None else _boolean(strict, where + ".backend_parameters_strict")
    )
    return out


def unsupported_backend_parameters(task: Mapping[str, Any], supported: Iterable[str]) -> list[str]:
    """The names in ``resources.backend_parameters`` that *supported* lacks, sorted.

    The specification makes backend parameter keys case-insensitive.
    """
    known = {name.casefold() for name in supported}
    params = (task.get("resources") or {}).get("backend_parameters") or {}
    return sorted(name for name in params if name.casefold() not in known)


def keep_supported_backend_parameters(
    task: Mapping[str, Any], supported: Iterable[str]
) -> dict[str, Any]:
    """A copy of *task* without the backend parameters *supported* lacks.

    The specification: "Backends shall not store or return unsupported keys if
    included in a task" (a non-strict task still runs, with a warning).
    """
    unsupported = set(unsupported_backend_parameters(task, supported))
    out = dict(task)
    if unsupported and isinstance(out.get("resources"), Mapping):
        resources = out["resources"] = dict(out["resources"])
        resources["backend_parameters"] = {
            name: value
            for name, value in resources["backend_parameters"].items()
            if name not in unsupported
        }
    return out


# --- the task's state -----------------------------------------------------------------


def task_state(job_state: str, exit_code: int | None, phase: str | None) -> str:
    """The TES state of a task whose job is in *job_state*.

    *exit_code* is the job's recorded exit status (None while it runs or if none
    was recorded); *phase* is the ``phase`` of the latest attempt's state file
    (None before the task program wrote one). A running job whose task program has
    not begun (pending in Slurm, or being started) is still ``QUEUED``; it is
    ``INITIALIZING`` from the program's start until its first executor starts. An ended job is
    ``EXECUTOR_ERROR`` only when the program says so *and* exited with its status
    for it (1): anything else that ended badly (killed, out of memory, a staging
    failure, a lost node) is the system's error.
    """
    if job_state in (JobState.NEW, JobState.QUEUED):
        return "QUEUED"
    if job_state == JobState.RUNNING:
        if phase is None:
            return "QUEUED"
        return "INITIALIZING" if phase == "INITIALIZING" else "RUNNING"
    if job_state == JobState.DELETING:
        return "CANCELING"
    if job_state == JobState.DELETED:
        return "CANCELED"
    if job_state == JobState.OK:
        return "COMPLETE"
    if job_state == JobState.ERROR:
        return "EXECUTOR_ERROR" if exit_code == 1 and phase == "EXECUTOR_ERROR" else "SYSTEM_ERROR"
    return "UNKNOWN"


# --- listing: tag filters and page tokens ---------------------------------------------


def tag_filter(keys: Sequence[str], values: Sequence[str]) -> dict[str, str | None]:
    """``tag_key``/``tag_value`` zipped in order into ``{key: value or None}``.

    None (a key without a value, or with an empty one) matches any value. A key
    repeated with two different values is refused: no task could match both.
    """
    if len(values) > len(keys):
        _fail("tag_value", "more tag_value than tag_key parameters")
    wanted: dict[str, str | None] = {}
    for n, key in enumerate(keys):
        _string(key, "tag_key")
        value = _string(values[n], "tag_value") if n < len(values) else ""
        value_or_any = value or None
        if key in wanted and None not in (wanted[key], value_or_any):
            if wanted[key] != value_or_any:
                _fail("tag_key", f"{key!r} is given twice with different values")
        if wanted.get(key) is None:
            wanted[key] = value_or_any
    return wanted


def tags_match(tags: Mapping[str, str], keys: Sequence[str], values: Sequence[str]) -> bool:
    """Whether a task with *tags* passes the ``tag_key``/``tag_value`` filter.

    The specification's truth table: every key must be present on the task; a
    key whose value is missing or empty matches any value (even ``""``); other
    values must be equal. Tasks may carry more tags than the filter names.
    """
    for key, value in tag_filter(keys, values).items():
        if key not in tags or (value is not None and tags[key] != value):
            return False
    return True


def _utc(when: datetime) -> datetime:
    """*when* in UTC; a naive time is taken as UTC already (the store's convention)."""
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def encode_page_token(created_at: datetime, job_id: str) -> str:
    """An opaque, URL-safe token naming the last task of a page (newest-first keyset)."""
    raw = f"{_TOKEN_VERSION}|{_utc(created_at).isoformat()}|{job_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str) -> tuple[datetime, str]:
    """The (created_at in UTC, job id) a page token names; ValidationError if it is damaged."""
    try:
        if len(token) > 512:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        version, stamp, job_id = raw.split("|", 2)
        if version != _TOKEN_VERSION or not job_id or "\x00" in job_id:
            raise ValueError("not a page token")
        return _utc(datetime.fromisoformat(stamp)), job_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        _fail("page_token", "is not a page token this server issued")


def rfc3339(when: datetime | None) -> str | None:
    """*when* as RFC 3339 in UTC with microseconds, e.g. ``2026-12-03T11:40:00.123456Z``."""
    if when is None:
        return None
    return _utc(when).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
