"""The Wooey-compatible face: scripts add-or-update/list/detail, submit, status, details.

Shapes and status codes follow ``reference/wooey-contract.md``; where Wooey
answers with an HTML 500 (unknown ids, unbalanced quotes, ambiguous versions)
we answer with a JSON error instead. Request bodies are streamed to disk.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import tornado.web

from jobferry import errors
from jobferry.api.base import ApiMixin
from jobferry.services.jobs import SubmitRequest
from jobferry.services.routing import RESOURCE_FIELDS, parse_request
from jobferry.services.scripts import ScriptUpload
from jobferry.staging.forms import FormReceiver
from jobferry.store.models import TERMINAL_STATES, JobState

logger = logging.getLogger(__name__)


TERMINAL_VALUES = frozenset(s.value for s in TERMINAL_STATES)
#: Longest ``?wait=`` a status request may hold, seconds.
MAX_WAIT_S = 60.0


def wooey_status(state: str, exit_code: int | None, reason: str | None) -> str:
    """Map the internal state onto Wooey 0.14.1's status strings."""
    if state == JobState.OK.value:
        return "completed"
    if state == JobState.ERROR.value:
        # A script that ran and failed is FAILURE; anything that stopped it is error.
        ran = exit_code not in (None, 0) and (reason or "").startswith("exit code")
        return "FAILURE" if ran else "error"
    if state == JobState.DELETED.value:
        return "REVOKED"
    if state in (JobState.RUNNING.value, JobState.DELETING.value):
        return "running"
    if state == JobState.NEW.value:
        return "submitted"
    return "queued"


class WooeyMixin(ApiMixin):
    """Errors in Wooey's shape: ``{"valid": false, "errors": {...}}``."""

    def error_body(self, exc: BaseException | None, status: int, message: str) -> dict[str, Any]:
        body = super().error_body(exc, status, message)
        if isinstance(exc, errors.AuthenticationError):
            message = errors.AuthenticationError().message  # Wooey's one wording
            errs: dict[str, Any] = {"__all__": [message]}
        elif isinstance(exc, errors.ValidationError):
            errs = exc.errors
        else:
            field = "__all__"
            if isinstance(exc, errors.JobferryError):
                field = str(exc.details.get("field", "__all__"))
            errs = {field: [message]}
        return {"valid": False, "errors": errs, **body}


class WooeyHandler(WooeyMixin, tornado.web.RequestHandler):
    """Base of the Wooey face's handlers."""


@tornado.web.stream_request_body
class StreamingFormHandler(WooeyHandler):
    """Authenticates before reading the body, then streams it through a FormReceiver."""

    receiver: FormReceiver | None = None
    admin_only = False

    async def prepare(self) -> None:
        principal = await self.authenticate()
        if self.admin_only and not principal.is_admin:
            raise errors.PermissionDeniedError("You do not have permission to manage scripts.")
        cap = self.core.config.server.max_upload_mb * 1024 * 1024
        length = self.request.headers.get("Content-Length")
        if length is not None:
            if not length.isdigit():
                raise errors.RequestError("invalid Content-Length")
            if int(length) > cap:
                raise errors.PayloadTooLargeError(
                    f"the request body ({length} bytes) exceeds server.max_upload_mb"
                )
        self.request.connection.set_max_body_size(cap)  # type: ignore[union-attr]
        self.receiver = FormReceiver(
            self.request.headers.get("Content-Type", ""),
            self.core.tmp_path,
            max_body_bytes=cap,
            max_field_bytes=self.core.config.server.max_form_kb * 1024,
        )

    def data_received(self, chunk: bytes) -> None:
        if self._finished or self.receiver is None:
            return
        try:
            self.receiver.feed(chunk)
        except Exception as exc:  # any failure answers (JSON) instead of dropping the connection
            self.receiver.discard()
            self.receiver = None
            self._handle_request_exception(exc)

    def on_connection_close(self) -> None:
        # Tornado's own handler ends the request (its body future fails): without
        # it the handler would wait for a body that never comes, holding its parser
        # and buffers, until the daemon stops.
        super().on_connection_close()
        if self.receiver is not None:
            self.receiver.discard()
            self.receiver = None

    def finish(self, chunk: str | bytes | dict[str, Any] | None = None) -> Any:
        # Leftover uploads go before the response does, so a client that sees the
        # answer never sees a half-kept file.
        if self.receiver is not None:
            self.receiver.discard()
        return super().finish(chunk)

    def complete_body(self) -> FormReceiver | None:
        """The fully received body, or None if a response was already sent."""
        if self._finished or self.receiver is None:
            return None
        self.receiver.finish()
        return self.receiver


class AddOrUpdateScriptHandler(StreamingFormHandler):
    admin_only = True

    async def post(self) -> None:
        form = self.complete_body()
        if form is None:
            return
        assert self.principal is not None
        uploads = [ScriptUpload(f.field, f.path, f.filename) for f in form.files]
        default_text = (form.field("default") or "").strip().lower()
        results = await self.call(
            self.services.scripts.add_or_update,
            self.principal,
            uploads,
            group=form.field("group") or None,
            default=default_text not in ("false", "0", "no", "off"),
            description=form.field("script_description"),
        )
        self.send_json(results)


class SubmitHandler(StreamingFormHandler):
    async def post(self, slug: str) -> None:
        form = self.complete_body()
        if form is None:
            return
        assert self.principal is not None
        request = SubmitRequest(
            slug=slug,
            job_name=form.field("job_name"),
            job_description=form.field("job_description"),
            command=form.field("command") or "",
            version=form.field("version"),
            iteration=form.field("iteration"),
            resources=parse_request({k: form.field(k) for k in RESOURCE_FIELDS}),
        )
        job_id = await self.call(self.services.jobs.submit, self.principal, request, form.files)
        self.send_json({"valid": True, "job_id": job_id})


class ScriptListHandler(WooeyHandler):
    async def get(self) -> None:
        principal = await self.authenticate()
        if not principal.is_admin:
            raise errors.PermissionDeniedError("You do not have permission to manage scripts.")
        scripts = await self.call(self.services.scripts.list_scripts)
        self.send_json({"valid": True, "scripts": scripts})


class ScriptDetailHandler(WooeyHandler):
    async def get(self, slug: str) -> None:
        principal = await self.authenticate()
        if not principal.is_admin:
            raise errors.PermissionDeniedError("You do not have permission to manage scripts.")
        script = await self.call(self.services.scripts.get_script, slug)
        self.send_json({"valid": True, "script": script})


class JobStatusHandler(WooeyHandler):
    async def get(self, job_id: str) -> None:
        principal = await self.authenticate()
        status = await self.call(self.services.jobs.status, principal, job_id)
        wait_s = self._wait_seconds()
        # ?wait=S (our extension): answer as soon as the job is complete, or after S s.
        deadline = time.monotonic() + wait_s
        while status.state not in TERMINAL_VALUES and time.monotonic() < deadline:
            ended = await self.core.wait_job_change(job_id, min(1.0, deadline - time.monotonic()))
            if ended is not None:  # its end as this daemon just recorded it: final
                status = status._replace(**ended._asdict())
            else:
                status = await self.call(self.services.jobs.status, principal, job_id)
        self.send_json(
            {
                "status": wooey_status(status.state, status.exit_code, status.state_reason),
                "is_complete": status.state in TERMINAL_VALUES,
            }
        )

    def _wait_seconds(self) -> float:
        raw = self.get_query_argument("wait", None)
        if raw is None:
            return 0.0
        try:
            value = float(raw)
        except ValueError:
            raise errors.ValidationError(errors={"wait": ["Enter a number of seconds."]}) from None
        if not 0 <= value <= MAX_WAIT_S:
            raise errors.ValidationError(errors={"wait": [f"Between 0 and {MAX_WAIT_S:g}."]})
        return value


class JobDetailsHandler(WooeyHandler):
    async def get(self, job_id: str) -> None:
        principal = await self.authenticate()
        view = await self.call(self.services.jobs.get, principal, job_id)
        stdout = await self.call(self.services.jobs.read_log, view, "stdout")
        stderr = await self.call(self.services.jobs.read_log, view, "stderr")
        assets = []
        if view.is_terminal:
            for job_file in view.files:
                if job_file.kind != "output":
                    continue
                assets.append(
                    {
                        "name": job_file.name,
                        "url": self.absolute_url(
                            f"/api/jobs/v1/{view.job.id}/assets/{job_file.id}/"
                        ),
                        "size": job_file.size,
                        "sha256": job_file.sha256,
                    }
                )
        job = view.job
        self.send_json(
            {
                "status": wooey_status(job.state, job.exit_code, job.state_reason),
                "is_complete": view.is_terminal,
                "uuid": job.uuid,
                "job_name": job.name,
                "job_description": job.description,
                "stdout": stdout,
                "stderr": stderr,
                "assets": assets,
                "job_id": job.id,
                "exit_code": job.exit_code,
                "reason": job.state_reason,
                "destination": job.destination,
                "runner": job.runner,
                "node": job.node,
            }
        )


def wooey_routes(services: Any) -> list[tuple[str, type[tornado.web.RequestHandler], Any]]:
    from jobferry.api.files import AssetHandler

    slug = r"([a-zA-Z0-9_-]+)"
    init = {"services": services}
    return [
        (r"/api/scripts/v1/add-or-update/?", AddOrUpdateScriptHandler, init),
        (r"/api/scripts/v1/list/?", ScriptListHandler, init),
        (rf"/api/scripts/v1/{slug}/submit/?", SubmitHandler, init),
        (rf"/api/scripts/v1/{slug}/?", ScriptDetailHandler, init),
        (r"/api/jobs/v1/([^/]+)/status/?", JobStatusHandler, init),
        (r"/api/jobs/v1/([^/]+)/details/?", JobDetailsHandler, init),
        # An asset is named by its id or by its path among the outputs (slashes as they
        # are or as %2F).
        (r"/api/jobs/v1/([^/]+)/assets/(.+?)/?", AssetHandler, init),
    ]
