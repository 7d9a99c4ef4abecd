"""``/api/nodes``: the daemons sharing the store (admins): list, show, drain, undrain.

Part of the Galaxy face's URL space, so its handlers take Galaxy's key forms
(``?key=``, ``x-api-key``, Bearer) and answer with its statuses.
"""

from __future__ import annotations

from typing import Any

import tornado.web

from jobferry.api.base import Services
from jobferry.api.galaxy.base import GalaxyHandler


class NodeListHandler(GalaxyHandler):
    """``GET /api/nodes``: every node, by name."""

    async def get(self) -> None:
        principal = await self.authenticate()
        self.send_json(await self.call(self.services.nodes.list_nodes, principal))


class NodeHandler(GalaxyHandler):
    """``GET /api/nodes/{name}``: one node."""

    async def get(self, name: str) -> None:
        principal = await self.authenticate()
        self.send_json(await self.call(self.services.nodes.get, principal, name))


class NodeDrainHandler(GalaxyHandler):
    """``PUT /api/nodes/{name}/drain`` and ``.../undrain``: the node's drained flag."""

    async def put(self, name: str, action: str) -> None:
        principal = await self.authenticate()
        node = await self.call(self.services.nodes.set_drained, principal, name, action == "drain")
        self.send_json(node)


def node_routes(services: Services) -> list[tuple[str, type[tornado.web.RequestHandler], Any]]:
    init = {"services": services}
    return [
        (r"/api/nodes/?", NodeListHandler, init),
        (r"/api/nodes/([^/]+)/(drain|undrain)/?", NodeDrainHandler, init),
        (r"/api/nodes/([^/]+)/?", NodeHandler, init),
    ]
