"""The TES face's handlers, its authentication and its error statuses.

Authentication: ``Authorization: Bearer <API key>`` (py-tes's ``token=``), or HTTP
Basic (``user=``/``password=``) with a user name or email and a password or one of
the user's API keys (``TesService.authenticate_basic``). A missing or wrong
credential is 401 here (the Wooey face's table says 403), with a
``WWW-Authenticate`` header naming both schemes.

Errors use the one table (``jobferry.http_status``) with this face's differences
(``TES_STATUS_BY_ERROR``). Their body is every face's (``ApiMixin.error_body``)
plus Funnel's ``code`` (the HTTP status): TES defines no error body, Funnel's
``{"code", "message"}`` is what its clients print, and the common keys keep the
one error schema of the OpenAPI document true.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import tornado.web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from jobferry import errors
from jobferry.api.base import ApiMixin, decode_baseauth
from jobferry.http_status import lookup_status
from jobferry.services.core import Principal
from jobferry.services.tes import ListQuery
from jobferry.staging.json_body import parse_json

#: Where the TES face's statuses differ from the table.
TES_STATUS_BY_ERROR: dict[type[errors.JobferryError], int] = {
    errors.AuthenticationError: 401,  # a missing, wrong or revoked credential
    errors.FormError: 400,
    errors.ScriptNotFoundError: 404,
}
#: The header a node's request to the node holding a task's files carries.
FORWARDED = "X-Jobferry-Forwarded-By"
#: How long a node waits for the node holding a task's files.
_ASK_TIMEOUT_S = 5.0
#: Slack over twice the largest inline content: JSON escapes and the rest of the task.
_BODY_SLACK = 256 * 1024

logger = logging.getLogger(__name__)


class TesMixin(ApiMixin):
    def face_status(self, exc: errors.JobferryError) -> int | None:
        return lookup_status(TES_STATUS_BY_ERROR, exc)

    def error_body(self, exc: BaseException | None, status: int, message: str) -> dict[str, Any]:
        if status == 401:  # still before the body is sent (write_error's finish)
            self.set_header("WWW-Authenticate", 'Bearer, Basic realm="jobferry"')
        return {"code": status, **super().error_body(exc, status, message)}

    async def authenticate(self) -> Principal:
        header = self.request.headers.get("Authorization", "")
        if header.strip().partition(" ")[0].lower() != "basic":  # Bearer, key, or none
            return await super().authenticate()
        basic = decode_baseauth(header)
        principal = await self.call(
            self.services.tes.authenticate_basic, *basic, self.request.remote_ip or ""
        )
        self.principal = principal
        return principal


class TesHandler(TesMixin, tornado.web.RequestHandler):
    """Base of the TES handlers without a body."""


class ServiceInfoHandler(TesHandler):
    """``GET /service-info``: open to anyone (clients read it before authenticating)."""

    def get(self) -> None:
        self.send_json(self.services.tes.service_info(self.absolute_url("/")))


class TaskHandler(TesHandler):
    """``GET /tasks/{id}?view=``.

    A running task whose files are on another node (``node.shared_filesystem``
    false: ``TesService.get`` raises ElsewhereError) is asked of that node with the
    client's own credentials, and its answer relayed: a redirect would do, but
    clients drop ``Authorization`` on a redirect to another host or port (requests,
    hence py-tes, does), and a workflow engine's poll must not fail. The nodes share
    the store, its users and keys, so the credential means the same there. That node
    answers from its disk (``FORWARDED``); if it does not answer, the task is shown
    from the store here."""

    async def get(self, task_id: str) -> None:
        principal = await self.authenticate()
        view = self.get_query_argument("view", "MINIMAL")
        tes = self.services.tes
        here = FORWARDED in self.request.headers
        try:
            body = await self.call(tes.get, principal, task_id, view, here=here)
        except errors.ElsewhereError as exc:
            body = await self._ask(exc) or await self.call(
                tes.get, principal, task_id, view, here=True
            )
        self.send_json(body)

    async def _ask(self, elsewhere: errors.ElsewhereError) -> dict[str, Any] | None:
        """The task as the node holding its files shows it (None: it did not answer)."""
        headers = {FORWARDED: self.core.node_name}
        if "Authorization" in self.request.headers:
            headers["Authorization"] = self.request.headers["Authorization"]
        url = elsewhere.node_url.rstrip("/") + (self.request.uri or "/")
        node = elsewhere.details.get("node")
        try:
            response = await AsyncHTTPClient().fetch(
                url,
                headers=headers,
                raise_error=False,
                follow_redirects=False,
                request_timeout=_ASK_TIMEOUT_S,
                connect_timeout=_ASK_TIMEOUT_S,
            )
        except (OSError, HTTPClientError) as exc:  # unreachable, timed out
            logger.warning("node %s did not answer for a task: %s", node, exc)
            return None
        if response.code != 200 or response.body is None:
            logger.warning("node %s did not show a task: status %s", node, response.code)
            return None
        try:
            found = json.loads(response.body)
        except ValueError:
            return None
        return found if isinstance(found, dict) else None


class CancelHandler(TesHandler):
    """``POST /tasks/{id}:cancel``: ``{}`` (also for a task that already ended)."""

    async def post(self, task_id: str) -> None:
        principal = await self.authenticate()
        await self.call(self.services.tes.cancel, principal, task_id)
        self.send_json({})


@tornado.web.stream_request_body
class TasksHandler(TesHandler):
    """``GET /tasks`` (filters, pages) and ``POST /tasks`` (a task document, JSON)."""

    def initialize(self, services: Any) -> None:
        super().initialize(services)
        self._body = bytearray()
        self._too_large = False
        tes, server = services.core.config.tes, services.core.config.server
        self._cap = max(server.max_form_kb * 1024, 2 * tes.max_content_kb * 1024 + _BODY_SLACK)

    async def prepare(self) -> None:
        """Authenticate before a byte of the body is taken, then cap the body."""
        await self.authenticate()
        length = self.request.headers.get("Content-Length")
        if length is not None and (not length.isdigit() or int(length) > self._cap):
            raise errors.PayloadTooLargeError(f"the task may not exceed {self._cap} bytes")
        connection = self.request.connection
        if connection is not None and hasattr(connection, "set_max_body_size"):
            connection.set_max_body_size(self._cap)

    def data_received(self, chunk: bytes) -> None:
        if self._too_large or len(self._body) + len(chunk) > self._cap:
            self._too_large = True  # reported by post(); the bytes are dropped
            self._body.clear()
            return
        self._body += chunk

    async def get(self) -> None:
        principal = self.principal
        assert principal is not None
        page_size = self.get_query_argument("page_size", None)
        if page_size is not None and not page_size.isdigit():
            raise errors.ValidationError("page_size: must be a whole number")
        query = ListQuery(
            name_prefix=self.get_query_argument("name_prefix", None),
            state=self.get_query_argument("state", None),
            tag_keys=self.get_query_arguments("tag_key"),
            tag_values=self.get_query_arguments("tag_value"),
            page_size=None if page_size is None else int(page_size[:6]),
            page_token=self.get_query_argument("page_token", None) or None,
            view=self.get_query_argument("view", "MINIMAL"),
        )
        page = await self.call(self.services.tes.list_tasks, principal, query)
        body: dict[str, Any] = {"tasks": page.tasks}
        if page.next_page_token:
            body["next_page_token"] = page.next_page_token
        self.send_json(body)

    async def post(self) -> None:
        principal = self.principal
        assert principal is not None
        if self._too_large:
            raise errors.PayloadTooLargeError(f"the task may not exceed {self._cap} bytes")
        doc = parse_json(self._body, max_bytes=None, what="the task")
        task_id = await self.call(self.services.tes.create, principal, doc)
        self.send_json({"id": task_id})
