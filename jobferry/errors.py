"""The one exception tree of jobferry.

Every layer raises these; ``jobferry.api.base`` maps them to HTTP status codes in
one table, and the CLI turns them into one-line messages. Third-party exceptions
are caught where they are raised and re-raised as one of these with ``from``.
A class's docstring is its default message; structured facts are attributes.
"""

from __future__ import annotations

import errno
from typing import Any

#: errno values that mean "no space left" (a full disk, an exhausted quota).
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
#: SQLite's primary result code for "database or disk is full".
SQLITE_FULL = 13
#: PostgreSQL's SQLSTATE for a full disk (class 53: insufficient resources).
PG_DISK_FULL = "53100"


class JobferryError(Exception):
    """An error occurred in jobferry."""

    #: Short machine-readable code used in JSON error bodies.
    code = "internal_error"

    def __init__(self, message: str | None = None, **details: Any) -> None:
        default = (self.__doc__ or self.__class__.__name__).strip().split("\n", 1)[0]
        self.message = message or default
        self.details = details
        super().__init__(self.message)


class ConfigError(JobferryError):
    """The configuration is invalid."""

    code = "config_error"


# --- client errors --------------------------------------------------------------


class RequestError(JobferryError):
    """The request is malformed."""

    code = "bad_request"


class ValidationError(RequestError):
    """The request did not validate.

    ``errors`` maps a field or parameter name to a list of messages (or a single
    message string, where the Wooey contract answers with a string).
    """

    code = "validation_error"

    def __init__(self, message: str | None = None, errors: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.errors: dict[str, Any] = errors or {"__all__": [self.message]}


class FormError(ValidationError):
    """The form fields are invalid (Wooey answers these with HTTP 200)."""

    code = "form_error"


class ScriptNotFoundError(ValidationError):
    """Unable to find script."""

    code = "script_not_found"


class UnsatisfiableError(ValidationError):
    """The job asks for more than any node or cluster of its destination can give."""

    code = "unsatisfiable"


class AttributeMissingError(RequestError):
    """Attempted to create or update object without required attribute."""

    code = "attribute_missing"


class ParameterMissingError(RequestError):
    """Request is missing parameter required to complete desired action."""

    code = "parameter_missing"


class MalformedIdError(RequestError):
    """The id of the resource is malformed."""

    code = "malformed_id"


class PayloadTooLargeError(RequestError):
    """The request body is larger than allowed."""

    code = "payload_too_large"


class RangeNotSatisfiableError(RequestError):
    """The requested byte range cannot be served."""

    code = "range_not_satisfiable"


class AuthenticationError(JobferryError):
    """Must be authenticated to use this method."""

    code = "authentication_required"


class InvalidKeyError(AuthenticationError):
    """Provided API key is not valid."""

    code = "invalid_key"


class InvalidCredentialsError(AuthenticationError):
    """Invalid password."""

    code = "invalid_credentials"


class PermissionDeniedError(JobferryError):
    """You are not permitted to do this."""

    code = "permission_denied"


class NotAllowedByConfigError(PermissionDeniedError):
    """The configuration of this daemon does not allow that operation."""

    code = "not_allowed_by_config"


class AdminRequiredError(PermissionDeniedError):
    """Action requires admin account."""

    code = "admin_required"


class NotFoundError(JobferryError):
    """The requested object does not exist."""

    code = "not_found"


class TooManyRequestsError(JobferryError):
    """Too many requests: try again later.

    ``retry_after`` (seconds) is sent as the ``Retry-After`` header.
    """

    code = "too_many_requests"

    def __init__(
        self, message: str | None = None, *, retry_after: int = 60, **details: Any
    ) -> None:
        super().__init__(message, retry_after=retry_after, **details)
        self.retry_after = retry_after


class ConflictError(JobferryError):
    """The object is not in a state that allows this change."""

    code = "conflict"


class GoneError(JobferryError):
    """The requested files are gone: they expired under the retention policy.

    Details say ``files_expired: true`` (and the job and when, where known): the job's
    row remains, its directory was deleted (``retention.files_days``, ``job purge``).
    """

    code = "gone"


class ElsewhereError(JobferryError):
    """The job's files live on another node: ask it (``node_url``; answered 307)."""

    code = "elsewhere"

    def __init__(self, message: str | None = None, *, node_url: str, **details: Any) -> None:
        super().__init__(message, node_url=node_url, **details)
        self.node_url = node_url


class NodeDownError(JobferryError):
    """The node holding what was asked for is not alive."""

    code = "node_down"


class IntrospectionError(JobferryError):
    """The script's argument parser could not be read."""

    code = "introspection_error"


# --- server-side errors ---------------------------------------------------------


class InsufficientStorageError(JobferryError):
    """The daemon is out of disk space: try again once space has been freed.

    Details say where (``path``) and, when known, what is free and what is required.
    Nothing of the refused request is kept.
    """

    code = "insufficient_storage"


#: The details of an InsufficientStorageError that clients see (the disk guard's).
STORAGE_FIGURES = frozenset({"free_mb", "required_mb", "free_percent", "required_percent"})


class BusyError(JobferryError):
    """The daemon is too busy to take this request now: try again later."""

    code = "busy"


class StoreError(JobferryError):
    """The store failed."""

    code = "store_error"


class SchemaOutOfDateError(StoreError):
    """The database schema is not at the revision this version of jobferry needs."""

    code = "schema_out_of_date"


class StoreUnavailableError(StoreError):
    """The database cannot be reached right now."""

    code = "store_unavailable"


class RunnerError(JobferryError):
    """The runner failed."""

    code = "runner_error"


class RunnerUnavailableError(RunnerError):
    """The runner cannot take work right now."""

    code = "runner_unavailable"


class SubmitError(RunnerError):
    """The runner could not start the job."""

    code = "submit_error"


class StagingError(JobferryError):
    """A file could not be staged."""

    code = "staging_error"


class PathRejectedError(StagingError):
    """The path is not allowed."""

    code = "path_rejected"


class TransferError(StagingError):
    """The transfer was interrupted or incomplete."""

    code = "transfer_error"


class StoreFullError(InsufficientStorageError, StoreUnavailableError):
    """The daemon is out of disk space: try again once space has been freed.

    Its store cannot grow. Both: clients get 507 (InsufficientStorageError comes
    first), and whatever retries an unavailable store (the job-end recorder) retries
    this too: the store is back as soon as space is.
    """

    code = "insufficient_storage"


# --- third-party exceptions that mean "no space left" ------------------------------


def _chain(exc: BaseException) -> list[BaseException]:
    """*exc* and the exceptions it was raised from or while handling (no cycles)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not s for s in seen) and len(seen) < 16:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def means_no_space(exc: BaseException) -> bool:
    """True when *exc* (or what it was raised from) says the disk is full: an OSError
    with ENOSPC/EDQUOT, SQLite's "database or disk is full", PostgreSQL's disk_full."""
    for found in _chain(exc):
        if isinstance(found, OSError) and found.errno in NO_SPACE_ERRNOS:
            return True
        code = getattr(found, "sqlite_errorcode", None)
        if isinstance(code, int) and code & 0xFF == SQLITE_FULL:
            return True
        if getattr(found, "sqlstate", None) == PG_DISK_FULL:
            return True
    return False


def no_space(exc: BaseException) -> InsufficientStorageError | None:
    """The project error for *exc* if it means the disk is full, else None.

    The API's one mapping place (``api.base``) calls this for exceptions that are not
    ours, so that a full disk answers 507 wherever it strikes (an upload, a store
    write, a job directory being made), without a try/except in each handler.
    """
    if isinstance(exc, InsufficientStorageError):
        return exc
    if not means_no_space(exc):
        return None
    path = next((f.filename for f in _chain(exc) if isinstance(f, OSError) and f.filename), None)
    details = {"path": str(path)} if path is not None else {}
    return InsufficientStorageError(**details)
