"""Configuration sections for operating a daemon: logs, metrics, disk guard, retention.

Part of the one schema (``jobferry.config``); the same strict rules apply.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from jobferry.config.base import _Section


class LoggingConfig(_Section):
    """Logging."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    access_log: bool = Field(False, description="Log every HTTP request.")
    format: Literal["text", "json"] = Field(
        "text",
        description="text: one readable line per record; json: one JSON object per line "
        "(time, level, logger, message and the context fields).",
    )


class MetricsConfig(_Section):
    """Prometheus metrics at ``GET /metrics``."""

    enabled: bool = Field(True, description="Serve /metrics and keep the metrics up to date.")
    token: str | None = Field(
        None,
        description="A scrape token: a client off loopback may read /metrics with "
        "'Authorization: Bearer <token>' (an admin key also works). Loopback needs none.",
    )
    store_cache_s: Annotated[float, Field(ge=0)] = Field(
        5.0,
        description="How long the store's aggregate figures (jobs by state) are reused between "
        "scrapes, seconds.",
    )


class StorageConfig(_Section):
    """The disk guard on the data directory's filesystem."""

    min_free_mb: Annotated[int, Field(ge=0)] = Field(
        1024,
        description="Below this many MiB free, new submissions and uploads are refused (507).",
    )
    min_free_percent: Annotated[float, Field(ge=0, le=100)] = Field(
        5.0, description="Below this share of the filesystem free, the same (507)."
    )
    check_interval_s: Annotated[float, Field(gt=0)] = Field(
        1.0, description="How long one reading of the free space is reused, seconds."
    )


class RetentionConfig(_Section):
    """What is deleted, and when, after jobs end."""

    files_days: Annotated[float, Field(gt=0)] | None = Field(
        None,
        description="Delete the job directories of jobs that ended this many days ago "
        "(their files then answer 410 Gone). None: keep them.",
    )
    rows_days: Annotated[float, Field(gt=0)] | None = Field(
        None,
        description="Purge the rows of jobs that ended this many days ago (off by default).",
    )
    interval_s: Annotated[float, Field(gt=0)] = Field(
        3600.0, description="Seconds between two retention rounds."
    )
    batch: Annotated[int, Field(ge=1)] = Field(
        200, description="Most jobs one retention round handles (bounded work per round)."
    )

    @model_validator(mode="after")
    def _rows_after_files(self) -> RetentionConfig:
        if (
            self.rows_days is not None
            and self.files_days is not None
            and self.rows_days < self.files_days
        ):
            raise ValueError("retention.rows_days must not be shorter than retention.files_days")
        return self


class WebConfig(_Section):
    """The browser face (``/ui/``): pages and sign-in sessions."""

    enabled: bool = Field(True, description="Serve the browser pages under /ui/.")
    session_idle_s: Annotated[float, Field(gt=0)] = Field(
        8 * 3600.0, description="Sign a browser out after this many seconds without a request."
    )
    session_max_s: Annotated[float, Field(gt=0)] = Field(
        7 * 24 * 3600.0, description="Sign a browser out this many seconds after it signed in."
    )
    session_touch_s: Annotated[float, Field(ge=0)] = Field(
        60.0,
        description="Record a session's last request at most this often, seconds (the idle "
        "clock's resolution; no store write per page).",
    )
    sign_in_failures_per_minute: Annotated[int, Field(ge=1)] = Field(
        10, description="Failed sign-ins allowed per user and per client address in a minute."
    )

    @model_validator(mode="after")
    def _touch_within_idle(self) -> WebConfig:
        if self.session_touch_s >= self.session_idle_s:
            raise ValueError("web.session_touch_s must be shorter than web.session_idle_s")
        return self
