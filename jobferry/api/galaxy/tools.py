"""``/api/tools``: registered scripts as Galaxy tools; running one is ``POST /api/tools``."""

from __future__ import annotations

from typing import Any

from jobferry.api.galaxy.common import GalaxyResource, route


class ToolsHandler(GalaxyResource):
    """``GET /api/tools`` (list) and ``POST /api/tools`` (run a tool: 200, not 201)."""

    async def get(self) -> None:
        await self.authenticate()
        if self.flag("trackster"):
            self.send_json([])  # no tool here is a Trackster visualisation
            return
        tools = self.services.galaxy_tools
        q = self.arg("q")
        result = await self.call(tools.list_tools, in_panel=self.flag("in_panel"), q=q or None)
        self.send_json(result)

    async def post(self) -> None:
        principal = await self.authenticate()
        payload = self.payload()
        self.send_json(await self.call(self.services.galaxy_tools.run_tool, principal, payload))


class ToolHandler(GalaxyResource):
    """``GET /api/tools/{id}`` (``io_details=true``: its inputs and outputs)."""

    async def get(self, slug: str) -> None:
        await self.authenticate()
        version = self.arg("tool_version") or self.arg("version") or None
        result = await self.call(
            self.services.galaxy_tools.show_tool,
            slug,
            version=version,
            io_details=self.flag("io_details"),
        )
        self.send_json(result)


def tool_routes(init: dict[str, Any]) -> list[Any]:
    return [
        (route(r"/api/tools"), ToolsHandler, init),
        (route(r"/api/tools/([^/]+)"), ToolHandler, init),
    ]
