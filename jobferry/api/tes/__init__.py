"""The GA4GH TES face (Task Execution Service 1.1): service-info and tasks.

Routes answer under ``/ga4gh/tes/v1`` (required) and ``/v1`` (Funnel's, which some
clients try): ``GET service-info`` (open), ``GET/POST tasks``, ``GET tasks/{id}``
and ``POST tasks/{id}:cancel`` (the id pattern stops at the colon). Handlers
parse, make one ``TesService`` call and send what ``services.tes_views`` shaped:
this face has no serialiser of its own, because the views are the wire format
(py-tes rejects any key the specification does not list).

Imports: ``jobferry.services``, ``staging`` and ``errors`` only.
"""

from __future__ import annotations

from typing import Any

import tornado.web

from jobferry.api.base import Services
from jobferry.api.tes.handlers import (
    CancelHandler,
    ServiceInfoHandler,
    TaskHandler,
    TasksHandler,
)

#: The base paths, the specification's first.
BASES = ("/ga4gh/tes/v1", "/v1")
#: A task id: anything but a slash or a colon (``:cancel`` follows it).
TASK_ID = r"([^/:]+)"


def tes_routes(services: Services) -> list[tuple[str, type[tornado.web.RequestHandler], Any]]:
    init = {"services": services}
    routes: list[tuple[str, type[tornado.web.RequestHandler], Any]] = []
    for base in BASES:
        routes += [
            (rf"{base}/service-info", ServiceInfoHandler, init),
            (rf"{base}/tasks", TasksHandler, init),
            (rf"{base}/tasks/{TASK_ID}:cancel", CancelHandler, init),
            (rf"{base}/tasks/{TASK_ID}", TaskHandler, init),
        ]
    return routes
