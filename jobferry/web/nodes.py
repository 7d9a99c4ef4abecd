"""Nodes (admins): each daemon sharing the store, its load and heartbeat; drain/undrain.

Over ``NodeService`` (what ``/api/nodes`` and ``jobferry node`` use): the page lists
``list_nodes``; the buttons POST to ``/ui/nodes/<name>/drain`` (or ``undrain``) and
come back to the list (303), which names the node that changed.
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import urlencode

from jobferry.web.base import UI, WebHandler, admin_only

#: A unit scale: (the bound a value stays under, what it is divided by, its format),
#: the last bound infinite.
Scale = tuple[tuple[float, float, str], ...]

MEMORY_UNITS: Scale = (
    (1024, 1, "{:.0f} MB"),
    (1024 * 1024, 1024, "{:.1f} GB"),
    (math.inf, 1024 * 1024, "{:.1f} TB"),
)
AGE_UNITS: Scale = (
    (120, 1, "{:.0f} s ago"),
    (2 * 3600, 60, "{:.0f} min ago"),
    (2 * 86400, 3600, "{:.0f} h ago"),
    (math.inf, 86400, "{:.0f} days ago"),
)


def scaled(value: float, units: Scale) -> str:
    """*value* in the first of *units* whose bound it stays under."""
    _, divisor, shape = next(unit for unit in units if value < unit[0])
    return shape.format(value / divisor)


def memory(mb: int | None) -> str:
    """``mb`` megabytes for a person: ``512 MB``, ``7.8 GB``, ``1.5 TB``."""
    return "?" if mb is None else scaled(mb, MEMORY_UNITS)


def age(seconds: float | None) -> str:
    """A heartbeat's age for a person: ``4 s ago``, ``3 min ago``, ``2 h ago``, ``never``."""
    return "never" if seconds is None else scaled(seconds, AGE_UNITS)


#: The badge class of each node state (``site.css``'s ``.badge.*``).
STATE_BADGES = {"up": "ok", "draining": "warn", "dead": "error", "stopped": "info"}


class NodesHandler(WebHandler):
    """``GET /ui/nodes``: every node, by name."""

    @admin_only
    async def get(self) -> None:
        assert self.principal is not None
        nodes: list[dict[str, Any]] = await self.call(
            self.services.nodes.list_nodes, self.principal
        )
        names = {node["name"] for node in nodes}
        # A notice only for a node that exists: the query never puts free text on the page.
        notice = ""
        for action in ("drained", "undrained"):
            name = self.get_query_argument(action, "")
            if name in names:
                notice = f"Node {name} {action}."
        self.render_page(
            "nodes.html",
            title="Nodes",
            nav="nodes",
            css=("nodes.css",),
            nodes=nodes,
            notice=notice,
            here=self.core.node_name,
            badges=STATE_BADGES,
            memory=memory,
            age=age,
        )


class NodeDrainHandler(WebHandler):
    """``POST /ui/nodes/<name>/drain`` or ``.../undrain``: set the node's drained flag."""

    @admin_only
    async def post(self, name: str, action: str) -> None:
        drained = action == "drain"
        await self.call(self.services.nodes.set_drained, self.principal, name, drained)
        done = "drained" if drained else "undrained"
        self.redirect(f"{UI}/nodes?" + urlencode({done: name}), status=303)


def node_routes(s: dict[str, Any]) -> list[tuple[str, type, dict[str, Any]]]:
    return [
        (rf"{UI}/nodes", NodesHandler, s),
        (rf"{UI}/nodes/([^/]+)/(drain|undrain)", NodeDrainHandler, s),
    ]
