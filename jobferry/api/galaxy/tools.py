"""``/api/tools``: registered scripts as Galaxy tools; running one is ``POST /api/tools``."""

from __future__ import annotations

from typing import Any

from jobferry.api.galaxy.common import GalaxyResource, route
from jobferry.api.galaxy.tools_json import tool, tool_detail, tool_panel, tool_run


class ToolsHandler(GalaxyResource):
    """``GET /api/tools`` (list) and ``POST /api/tools`` (run a tool: 200, not 201)."""

    async def get(self) -> None:
        await self.authenticate()
        if self.flag("trackster"):
            self.send_json([])  # no tool here is a Trackster visualisation
            return
        in_panel = self.flag("in_panel")
        q = self.arg("q") or None
        rows = await self.call(self.services.galaxy_tools.list_tools, q=q)
        if q is not None:
            self.send_json([row.slug for row in rows])  # Galaxy's search answers ids
        elif in_panel:
            self.send_json(tool_panel(rows))
        else:
            self.send_json([tool(row) for row in rows])

    async def post(self) -> None:
        principal = await self.authenticate()
        payload = self.payload()
        jobs = await self.call(self.services.galaxy_tools.run_tool, principal, payload)
        self.core.telemetry.submitted("galaxy", len(jobs))
        self.send_json(tool_run(jobs))


class ToolHandler(GalaxyResource):
    """``GET /api/tools/{id}`` (``io_details=true``: its inputs and outputs)."""

    async def get(self, slug: str) -> None:
        await self.authenticate()
        version = self.arg("tool_version") or self.arg("version") or None
        io_details = self.flag("io_details")
        row, versions = await self.call(self.services.galaxy_tools.show_tool, slug, version=version)
        self.send_json(tool_detail(row, versions, io_details=io_details))


def tool_routes(init: dict[str, Any]) -> list[Any]:
    return [
        (route(r"/api/tools"), ToolsHandler, init),
        (route(r"/api/tools/([^/]+)"), ToolHandler, init),
    ]
