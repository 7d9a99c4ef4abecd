"""The Galaxy-compatible face: job_files, jobs, auth, configuration, tools, datasets, users.

Handlers (one module per resource: ``jobs``, ``tools``, ``datasets``, ``users``,
``config``, ``files``) parse a request, make one service call and hand the
service's face-neutral records to this face's serialisers (``jobs_json``,
``tools_json``, ``datasets_json``, ``users_json``, ``formats``), which own
every Galaxy wire shape. Imports: ``jobferry.services`` (records, the state
vocabulary, the services), ``staging`` and ``errors`` — never the store or the
daemon.
"""

from __future__ import annotations

from typing import Any

import tornado.web

from jobferry.api.base import Services

Route = tuple[str, type[tornado.web.RequestHandler], dict[str, Any]]


def galaxy_routes(services: Services) -> list[Route]:
    """Every route of the Galaxy face, slash-optional (never a redirect: bioblend
    sends non-GET requests with redirects off)."""
    from jobferry.api.galaxy.files import files_routes
    from jobferry.api.galaxy.resources import resource_routes

    return [*files_routes(services), *resource_routes(services)]
