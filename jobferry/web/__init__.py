"""The browser face: server-rendered pages under ``/ui/``, their static files and
the sign-in sessions. Thin handlers over the same services as the APIs.

``web_routes(services)`` is what the daemon adds to ``api.app.make_app`` (the two
faces never import each other). Each area of the site has its own module and
routes function; add yours to ``web_routes``, before the catch-all 404.
"""

from __future__ import annotations

from typing import Any

from jobferry.services.container import Services
from jobferry.web.base import STATIC, UI, StaticHandler
from jobferry.web.job_page import job_routes
from jobferry.web.keys import key_routes
from jobferry.web.nodes import node_routes
from jobferry.web.scripts import script_routes
from jobferry.web.signin import (
    HomeHandler,
    PageNotFoundHandler,
    RootHandler,
    SignInHandler,
    SignOutHandler,
)

Route = tuple[str, type, dict[str, Any]]


def web_routes(services: Services) -> list[Route]:
    """Every route of the browser face (none when ``web.enabled`` is false)."""
    if not services.core.config.web.enabled:
        return []
    s = {"services": services}
    return [
        (r"/", RootHandler, s),
        (rf"{UI}/?", HomeHandler, s),
        (rf"{UI}/sign-in", SignInHandler, s),
        (rf"{UI}/sign-out", SignOutHandler, s),
        (rf"{UI}/static/(.*)", StaticHandler, {**s, "path": str(STATIC)}),
        *key_routes(s),
        *node_routes(s),
        *script_routes(s),
        *job_routes(s),
        # Area routes go above this line (one ``<area>_routes(s)`` per module).
        (rf"{UI}/(.*)", PageNotFoundHandler, s),  # route template: /ui/{}
    ]
