"""The Wooey-compatible face: scripts add-or-update/list/detail, submit, status, details, assets.

Shapes and status codes follow ``reference/wooey-contract.md``; where Wooey
answers with an HTML 500 (unknown ids, unbalanced quotes, ambiguous versions)
we answer with a JSON error instead. Request bodies are streamed to disk.

``base`` holds the face's error shape and its streamed-form handler,
``scripts`` and ``jobs`` the routes' handlers, ``serialize`` Wooey's JSON
shapes and status strings (built from the services' records; the face imports
services, never the store). Downloads are ``jobferry.api.downloads``'s.
"""

from __future__ import annotations

from typing import Any

import tornado.web

from jobferry.api.wooey.jobs import AssetHandler, JobDetailsHandler, JobStatusHandler, SubmitHandler
from jobferry.api.wooey.scripts import (
    AddOrUpdateScriptHandler,
    ScriptDetailHandler,
    ScriptListHandler,
)
from jobferry.api.wooey.serialize import wooey_status

__all__ = ["wooey_routes", "wooey_status"]


def wooey_routes(services: Any) -> list[tuple[str, type[tornado.web.RequestHandler], Any]]:
    slug = r"([a-zA-Z0-9_-]+)"
    init = {"services": services}
    return [
        (r"/api/scripts/v1/add-or-update/?", AddOrUpdateScriptHandler, init),
        (r"/api/scripts/v1/list/?", ScriptListHandler, init),
        (rf"/api/scripts/v1/{slug}/submit/?", SubmitHandler, init),
        (rf"/api/scripts/v1/{slug}/?", ScriptDetailHandler, init),
        (r"/api/jobs/v1/([^/]+)/status/?", JobStatusHandler, init),
        (r"/api/jobs/v1/([^/]+)/details/?", JobDetailsHandler, init),
        # An asset is named by its id or by its path among the outputs (slashes as they
        # are or as %2F).
        (r"/api/jobs/v1/([^/]+)/assets/(.+?)/?", AssetHandler, init),
    ]
