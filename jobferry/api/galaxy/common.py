"""What the Galaxy resource handlers share: their services, query parsing, JSON bodies.

Query conventions (galaxy-contract.md §1.4): booleans in any of Python's and
JavaScript's spellings (bioblend sends ``True``), list parameters repeated or
comma-separated, unknown parameters ignored. Bodies are read incrementally and
capped at ``server.max_form_kb`` (no file uploads go through these handlers).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import tornado.web

from jobferry import errors
from jobferry.api.base import Services
from jobferry.api.galaxy.base import GalaxyMixin
from jobferry.staging.json_body import parse_json

_TRUE = frozenset({"true", "1", "yes", "on", "y", "t"})
_FALSE = frozenset({"false", "0", "no", "off", "n", "f", "none", "null", ""})


def parse_bool(value: str | None, name: str, default: bool = False) -> bool:
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise errors.ValidationError(
        f"{name}: expected a boolean, got {value[:40]!r}",
        errors={name: ["Enter a boolean (true or false)."]},
    )


@tornado.web.stream_request_body
class GalaxyResource(GalaxyMixin, tornado.web.RequestHandler):
    """Base of the Galaxy resource handlers (jobs, tools, datasets, users, config)."""

    def initialize(self, services: Services) -> None:
        super().initialize(services)
        self._body = bytearray()
        self._too_large = False
        self._body_cap = services.core.config.server.max_form_kb * 1024

    # --- bodies -----------------------------------------------------------------------

    def prepare(self) -> None:
        length = self.request.headers.get("Content-Length")
        if length is not None and (not length.isdigit() or int(length) > self._body_cap):
            raise errors.PayloadTooLargeError(
                f"the request body may not exceed {self._body_cap} bytes (server.max_form_kb)"
            )
        connection = self.request.connection
        if connection is not None and hasattr(connection, "set_max_body_size"):
            connection.set_max_body_size(self._body_cap)

    def data_received(self, chunk: bytes) -> None:
        if self._too_large or len(self._body) + len(chunk) > self._body_cap:
            self._too_large = True  # reported by payload(); the bytes are dropped
            self._body.clear()
            return
        self._body += chunk

    def payload(self) -> dict[str, Any]:
        """The body as an object: JSON (what bioblend sends) or a urlencoded form."""
        if self._too_large:
            raise errors.PayloadTooLargeError(
                f"the request body may not exceed {self._body_cap} bytes (server.max_form_kb)"
            )
        text = self._body.decode("utf-8", "replace")
        if not text.strip():
            return {}
        kind = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if kind == "application/x-www-form-urlencoded":
            return dict(parse_qsl(text, keep_blank_values=True))
        data = parse_json(text, max_bytes=None)  # size capped while it was received
        if not isinstance(data, dict):
            raise errors.RequestError("the JSON body must be an object")
        return data

    # --- query parameters -------------------------------------------------------------

    def arg(self, name: str) -> str | None:
        """A query parameter's last value, or None when absent."""
        return self.get_query_argument(name, None)

    def flag(self, name: str, default: bool = False) -> bool:
        return parse_bool(self.arg(name), name, default)

    def list_arg(self, name: str) -> list[str]:
        """A list parameter: repeated (``state=a&state=b``) and/or comma-separated."""
        values: list[str] = []
        for raw in self.get_query_arguments(name):
            values.extend(v.strip() for v in raw.split(",") if v.strip())
        return values

    def int_arg(self, name: str, default: int, minimum: int = 0) -> int:
        raw = self.arg(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise errors.ValidationError(
                f"{name}: expected a whole number, got {raw[:40]!r}",
                errors={name: ["Enter a whole number."]},
            ) from None
        if value < minimum:
            raise errors.ValidationError(
                f"{name}: must be at least {minimum}",
                errors={name: [f"Ensure this value is at least {minimum}."]},
            )
        return value


def route(pattern: str) -> str:
    """A route that matches with and without a trailing slash (never a redirect)."""
    return rf"{pattern.rstrip('/')}/?"
