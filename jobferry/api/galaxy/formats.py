"""Galaxy's scalar formats: the version this daemon reports, timestamps, human sizes.

Shared by every ``*_json`` module of this package (and the configuration and
version handlers), so that each Galaxy resource writes them the same way.
"""

from __future__ import annotations

from datetime import UTC, datetime

#: What this daemon tells clients that gate features on Galaxy's version.
GALAXY_VERSION_MAJOR = "24.1"
GALAXY_VERSION_MINOR = "0"


def iso(value: datetime | None) -> str | None:
    """Naive UTC ISO 8601 with microseconds, as Galaxy writes timestamps."""
    if value is None:
        return None
    if value.tzinfo is UTC:  # what the store returns: drop the "+00:00"
        return value.isoformat(timespec="microseconds")[:-6]
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(timespec="microseconds")


def human_bytes(size: float) -> str:
    """A size as Galaxy shows it: ``512 bytes``, ``1.5 KB``, ... ``2.0 TB``."""
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"  # pragma: no cover
