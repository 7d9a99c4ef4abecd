"""The Galaxy-compatible face: job_files, jobs, auth, configuration, tools, datasets, users."""

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
