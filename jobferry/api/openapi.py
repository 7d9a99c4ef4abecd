"""The OpenAPI document of the whole HTTP surface, served at ``GET /api/openapi.json``.

The document is hand-written YAML shipped with the package (``openapi.yaml`` next
to this module), plus one fragment per area that came later (``openapi.<area>.yaml``:
its ``paths``, ``tags`` and ``components`` are merged in; a name defined twice is
an error). It is read once, on first use, and its JSON rendering is kept: the
handler answers from memory.
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
    fragments = [
        entry
        for entry in resources.files("jobferry.api").iterdir()
        if entry.name.startswith("openapi.")
        and entry.name.endswith(".yaml")
        and entry.name != "openapi.yaml"
    ]
    for entry in sorted(fragments, key=lambda e: e.name):
        _merge(document, yaml.safe_load(entry.read_text(encoding="utf-8")) or {}, entry.name)
    return document


def _merge(document: dict[str, Any], fragment: dict[str, Any], name: str) -> None:
    """Add *fragment*'s paths, tags and components to *document*, refusing a clash."""
    for path, item in (fragment.get("paths") or {}).items():
        if path in document["paths"]:
            raise RuntimeError(f"{name}: path {path} is already documented")
        document["paths"][path] = item
    known_tags = {tag["name"] for tag in document.setdefault("tags", [])}
    for tag in fragment.get("tags") or []:
        if tag["name"] in known_tags:
            raise RuntimeError(f"{name}: tag {tag['name']} is already documented")
        document["tags"].append(tag)
    for section, entries in (fragment.get("components") or {}).items():
        target = document.setdefault("components", {}).setdefault(section, {})
        for key, value in entries.items():
            if key in target:
                raise RuntimeError(f"{name}: components.{section}.{key} is already defined")
            target[key] = value


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
