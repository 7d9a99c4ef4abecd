"""Liveness and readiness, for load balancers, systemd and container health checks.

``GET /healthz`` answers from memory: no authentication, no store, no runner.
``GET /readyz`` says whether this node should be sent work; the checks, their
cache and their time bound are ``services.health``'s.
"""

from __future__ import annotations

import json
from typing import Any

import tornado.web

from jobferry import __version__
from jobferry.api.base import ApiHandler, Services


class HealthzHandler(ApiHandler):
    """``GET /healthz``: the process answers (liveness)."""

    _body: bytes | None = None

    def get(self) -> None:
        if self._body is None:
            body = {"status": "ok", "version": __version__, "node": self.core.node_name}
            type(self)._body = json.dumps(body).encode()
        self.finish(self._body)


class ReadyzHandler(ApiHandler):
    """``GET /readyz``: 200 when this node can take work, else 503 with each check."""

    async def get(self) -> None:
        readiness = await self.services.health.readiness()
        # 503 is this route's answer, not an error: the body names each check.
        self.send_json(readiness.as_json(), 200 if readiness.ready else 503)


def health_routes(services: Services) -> list[tuple[str, type[tornado.web.RequestHandler], Any]]:
    init = {"services": services}
    return [(r"/healthz", HealthzHandler, init), (r"/readyz", ReadyzHandler, init)]
