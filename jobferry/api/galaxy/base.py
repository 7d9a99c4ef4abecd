"""Handler base of the Galaxy face: its key sources and its error JSON.

Keys come from ``?key=``, then the ``x-api-key`` header, then ``Authorization:
Bearer`` (galaxy-contract.md §1.2). Errors carry ``err_msg``/``err_code`` (every
face's errors do) with the statuses of ``GALAXY_STATUS_BY_ERROR`` in ``jobferry.api.base``.
"""

from __future__ import annotations

import tornado.web

from jobferry.api.base import ApiMixin


class GalaxyMixin(ApiMixin):
    galaxy_face = True

    def presented_key(self) -> str | None:
        key = self.get_query_argument("key", None)
        if key:
            return key
        header = self.request.headers.get("x-api-key")
        if header:
            return header
        return super().presented_key()


class GalaxyHandler(GalaxyMixin, tornado.web.RequestHandler):
    """Base of the Galaxy face's handlers."""
