"""``POST /api/jobs/{id}/state``: a job's wrapper reporting its state (job_key only).

Thin: the body is JSON, the key comes from the ``job_key`` query parameter or
the ``X-Job-Key`` header; rules live in ``jobferry.services.callbacks``, which
also tells the scheduler at once of a report that ended the job (it stops
waiting on the runner) and wakes status long-polls.
"""

from __future__ import annotations

from typing import Any

import tornado.web

from jobferry.api.base import ApiMixin, Services
from jobferry.staging.json_body import parse_json

#: Largest report body accepted, bytes.
MAX_BODY = 64 * 1024


class JobStateHandler(ApiMixin, tornado.web.RequestHandler):
    SUPPORTED_METHODS = ("POST",)

    async def post(self, job_id: str) -> None:
        key = self.get_query_argument("job_key", None) or self.request.headers.get("X-Job-Key")
        payload: Any = parse_json(self.request.body, max_bytes=MAX_BODY, what="a state report")
        self.send_json(await self.services.callbacks.receive(job_id, key, payload))


def callback_routes(services: Services) -> list[Any]:
    init = {"services": services}
    return [(r"/api/jobs/([^/]+)/state/?", JobStateHandler, init)]
