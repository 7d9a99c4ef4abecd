"""The one table from the exception tree (``jobferry.errors``) to HTTP statuses.

Both HTTP faces answer with it: the APIs (``api/base.py``, which adds the Galaxy
face's few differences) and the browser pages (``web/base.py``). It lives here,
below both, so that they share one table without importing each other.
"""

from __future__ import annotations

from jobferry import errors

#: Exception class → HTTP status; the most specific class listed wins.
STATUS_BY_ERROR: dict[type[errors.JobferryError], int] = {
    errors.FormError: 200,  # Wooey answers form errors with 200 and valid=false
    errors.ScriptNotFoundError: 200,  # ditto for an unknown script on submit
    errors.ValidationError: 400,
    errors.PayloadTooLargeError: 413,
    errors.RangeNotSatisfiableError: 416,
    errors.RequestError: 400,
    errors.AuthenticationError: 403,  # Wooey (and Galaxy) answer 403, not 401
    errors.PermissionDeniedError: 403,
    errors.PathRejectedError: 403,
    errors.NotFoundError: 404,
    errors.ConflictError: 409,
    errors.GoneError: 410,
    errors.TooManyRequestsError: 429,
    errors.InsufficientStorageError: 507,
    errors.StoreFullError: 507,  # before StoreUnavailableError (its other base)
    errors.BusyError: 503,
    errors.ElsewhereError: 307,
    errors.NodeDownError: 503,
    errors.IntrospectionError: 400,
    errors.StoreUnavailableError: 503,
    errors.RunnerUnavailableError: 503,
    errors.SchemaOutOfDateError: 503,
}


def lookup_status(table: dict[type[errors.JobferryError], int], exc: BaseException) -> int | None:
    """*table*'s entry for *exc*'s most specific listed class, if any."""
    for cls in type(exc).__mro__:
        if cls in table:
            return table[cls]
    return None


def http_status(exc: BaseException) -> int:
    """The HTTP status for an exception (500 for one the tree does not list)."""
    return lookup_status(STATUS_BY_ERROR, exc) or 500
