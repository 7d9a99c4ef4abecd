"""The OpenAPI document of the whole HTTP surface, served at ``GET /api/openapi.json``.

The document is hand-written YAML shipped with the package (``openapi.yaml`` next
to this module). It is read once, on first use, and its JSON rendering is kept:
the handler answers from memory.
"""

from __future__ import annotations

import copy
import functools
import json
from importlib import resources
from typing import Any

import tornado.web
import yaml

from jobferry.api.base import ApiHandler, Services

#: Where the handler is mounted.
OPENAPI_PATH = "/api/openapi.json"


@functools.cache
def _document() -> dict[str, Any]:
    text = resources.files("jobferry.api").joinpath("openapi.yaml").read_text(encoding="utf-8")
    document = yaml.safe_load(text)
    if not isinstance(document, dict) or "openapi" not in document:
        raise RuntimeError("jobferry/api/openapi.yaml is not an OpenAPI document")
    return document


@functools.cache
def _document_json() -> bytes:
    return json.dumps(_document(), separators=(",", ":")).encode("utf-8")


def load_document() -> dict[str, Any]:
    """The OpenAPI document as a dict (a copy: callers may change it)."""
    return copy.deepcopy(_document())


class OpenApiHandler(ApiHandler):
    """``GET /api/openapi.json``: the document, as JSON, without authentication."""

    def get(self) -> None:
        self.finish(_document_json())


def openapi_routes(services: Services) -> list[tuple[str, type[tornado.web.RequestHandler], Any]]:
    return [(r"/api/openapi\.json", OpenApiHandler, {"services": services})]
