"""The Tornado application: every route of every face, built in one factory.

The daemon and the tests both call ``make_app``. Routes of faces outside ``api``
(the browser pages, ``jobferry.web``) come in as *extra_routes*: the daemon
composes them, since ``api`` and ``web`` never import each other. They get the
same request ids, access log and metrics as the API's routes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tornado.web

from jobferry.api.access_log import RequestIdApplication, log_access
from jobferry.api.base import NotFoundHandler
from jobferry.api.callbacks import callback_routes
from jobferry.api.galaxy import galaxy_routes
from jobferry.api.health import health_routes
from jobferry.api.metrics import metrics_routes, observe_request
from jobferry.api.nodes import node_routes
from jobferry.api.openapi import openapi_routes
from jobferry.api.route_names import SETTING, route_table
from jobferry.api.tes import tes_routes
from jobferry.api.wooey import wooey_routes
from jobferry.services.container import Services


def make_app(
    services: Services, extra_routes: Sequence[tuple[Any, ...]] = ()
) -> tornado.web.Application:
    # Tornado tries the routes in order, a regular expression each: the Wooey routes
    # (submissions and status polls, the hot ones) and the probes come first, so the
    # usual request is matched by its first few patterns instead of after the two
    # dozen of the browser face. None of their paths (/api/scripts/v1/..,
    # /api/jobs/v1/.., /healthz, /readyz, /metrics) is one an extra route (the browser
    # face: / and /ui/..) could match, so no route shadows another differently.
    routes = [
        *wooey_routes(services),
        *health_routes(services),
        *metrics_routes(services),
        *extra_routes,
        *openapi_routes(services),
        *callback_routes(services),
        *node_routes(services),
        *galaxy_routes(services),
        *tes_routes(services),
    ]
    log_requests = services.core.config.logging.access_log

    def log_function(handler: tornado.web.RequestHandler) -> None:
        observe_request(handler)
        status = handler.get_status()
        if log_requests or status >= 500:
            log_access(handler, status)

    app = RequestIdApplication(
        routes,
        default_handler_class=NotFoundHandler,
        default_handler_args={"services": services},
        log_function=log_function,
        xheaders=services.core.config.server.xheaders,
    )
    app.settings[SETTING] = route_table(routes)
    return app
