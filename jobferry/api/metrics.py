"""``GET /metrics`` (Prometheus text format) and the per-request observation.

Access: open to loopback clients (a Prometheus or node agent on the same host);
any other client presents ``Authorization: Bearer <token>``, with the scrape
token ``metrics.token`` or an admin's API key. Behind a reverse proxy with
``server.xheaders``, the client is the one the proxy names (``X-Real-Ip``).
With ``metrics.enabled: false`` the route does not exist (404) and
``observe_request`` returns at once.

The exposition is ``prometheus_client``'s (``Telemetry.exposition``); the store's
figures in it are refreshed through ``MetricsService`` in the worker pool when
older than ``metrics.store_cache_s``.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

import tornado.web
from prometheus_client import CONTENT_TYPE_LATEST

from jobferry import errors
from jobferry.api.base import ApiHandler, Services
from jobferry.api.route_names import route_template
from jobferry.services.core import Core

#: Where the handler is mounted.
METRICS_PATH = "/metrics"


def is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class MetricsHandler(ApiHandler):
    """``GET /metrics``: this node's metrics in the Prometheus text format."""

    async def get(self) -> None:
        await self.authorize()
        metrics = self.services.metrics
        if metrics.stale():
            await self.call(metrics.refresh)
        body = self.core.telemetry.exposition()
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(body)

    async def authorize(self) -> None:
        """Loopback, the scrape token, or an admin key; else 403."""
        if is_loopback(self.request.remote_ip):
            return
        token = self.core.config.metrics.token
        presented = self.presented_key()
        if token and presented and hmac.compare_digest(presented.encode(), token.encode()):
            return
        if presented is None:
            raise errors.AuthenticationError(
                "/metrics needs the scrape token or an admin API key off loopback"
            )
        principal = await self.authenticate()
        if not principal.is_admin:
            raise errors.AdminRequiredError("/metrics needs the scrape token or an admin API key")


def metrics_routes(services: Services) -> list[tuple[str, type[tornado.web.RequestHandler], Any]]:
    """The /metrics route, or none when ``metrics.enabled`` is false."""
    if not services.core.config.metrics.enabled:
        return []
    return [(METRICS_PATH, MetricsHandler, {"services": services})]


def observe_request(handler: tornado.web.RequestHandler) -> None:
    """Record a finished request: its duration by route template, method and status
    class, and the bytes of a staged transfer (handlers with a ``staging`` channel)."""
    services: Services | None = getattr(handler, "services", None)
    if services is None:
        return
    core: Core = services.core
    telemetry = core.telemetry
    if not telemetry.enabled:
        return
    request = handler.request
    status = handler.get_status()
    seconds = request.request_time()
    method = request.method or ""
    telemetry.http_request(route_template(handler), method, status, seconds)
    channel: str | None = getattr(handler, "staging", None)
    if channel is None or not 200 <= status < 300:
        return
    if method == "POST":
        size = request.headers.get("Content-Length", "")
        if size.isdigit():
            telemetry.staged(channel, "upload", int(size), seconds)
    elif method == "GET":
        sent = handler._headers.get("Content-Length", "")
        if sent.isdigit():
            telemetry.staged(channel, "download", int(sent), seconds)
