"""Route templates: the pattern a request matched, fit for a log field or a metric label.

Metrics and access logs must never carry a raw path (a job id in a label is an
unbounded label set; a path may carry a job_key). ``route_template(handler)``
names the route a request was dispatched to, with each captured group shown as
``{}``: ``/api/jobs/v1/{}/status/``. ``make_app`` records its routes once
(``route_table``); a lookup is a dict hit, plus a regex match only for a handler
class mounted on several routes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import tornado.web

#: The application setting that holds the table.
SETTING = "jobferry_route_templates"
#: The template of a request no route matched (answered 404 by the default handler).
UNMATCHED = "(unmatched)"

RouteTable = dict[type, list[tuple["re.Pattern[str]", str]]]


def template_of(pattern: str) -> str:
    """``/api/jobs/([^/]+)/files/?`` -> ``/api/jobs/{}/files``; ``$``, a trailing ``/?``
    and regex escapes are dropped, each top-level group becomes ``{}``."""
    out: list[str] = []
    depth = 0
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            if depth == 0:
                out.append(pattern[i + 1])
            i += 2
            continue
        if ch == "(":
            if depth == 0:
                out.append("{}")
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0 and i + 1 < len(pattern) and pattern[i + 1] in "?*+":
                i += 1
        elif depth == 0 and ch not in "^$":
            out.append(ch)
        i += 1
    text = "".join(out)
    if text.endswith("/?"):
        text = text[:-2] or "/"
    return text


def route_table(routes: Iterable[tuple[Any, ...]]) -> RouteTable:
    """Handler class -> [(compiled pattern, template)] for *routes* as given to Application."""
    table: RouteTable = {}
    for route in routes:
        pattern, handler_class = route[0], route[1]
        regex = re.compile(pattern if pattern.endswith("$") else pattern + "$")
        table.setdefault(handler_class, []).append((regex, template_of(pattern)))
    return table


def route_template(handler: tornado.web.RequestHandler) -> str:
    """The template of the route *handler* serves (``UNMATCHED`` for the default 404)."""
    table: RouteTable = handler.application.settings.get(SETTING) or {}
    entries = table.get(type(handler))
    if not entries:
        return UNMATCHED
    if len(entries) == 1:
        return entries[0][1]
    path = handler.request.path
    for regex, template in entries:
        if regex.match(path):
            return template
    return entries[0][1]
