"""Request ids, face-neutral: the ``REQUEST_ID`` context variable and choosing an id.

Every request gets an id: a sane ``X-Request-Id`` a proxy sent
(``[A-Za-z0-9._-]{1,64}``), else 16 fresh hex digits (one ``secrets`` call), chosen
once per request (``request_id``) and kept on it. Both HTTP faces send it back as
``X-Request-Id`` on every answer (``api/base.py``, ``web/base.py``), and
``api.access_log.RequestIdApplication`` sets ``REQUEST_ID`` around each request's
delegate, so every line logged while serving it carries the id
(``daemon.logformat``). It lives here, below both faces, because ``web`` may not
import ``api``.
"""

from __future__ import annotations

import re
import secrets
from contextvars import ContextVar

import tornado.httputil

#: The id of the request being served in this context (None: no request).
REQUEST_ID: ContextVar[str | None] = ContextVar("jobferry_request_id", default=None)
HEADER = "X-Request-Id"
#: An incoming id we keep: what a proxy (nginx's $request_id, a UUID) sends.
SANE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
#: The attribute of the HTTPServerRequest that holds its id.
_ATTR = "jobferry_request_id"


def request_id(request: tornado.httputil.HTTPServerRequest) -> str:
    """*request*'s id: chosen once (the proxy's if sane, else a new one), then kept."""
    found: str | None = getattr(request, _ATTR, None)
    if found is None:
        incoming = request.headers.get(HEADER)
        found = incoming if incoming and SANE_ID.fullmatch(incoming) else secrets.token_hex(8)
        setattr(request, _ATTR, found)
    return found
