"""The Wooey face's job routes: submit (a streamed form), status, details, assets."""

from __future__ import annotations

import json
import os
import time
from urllib.parse import quote

from jobferry import errors
from jobferry.api.downloads import Download, DownloadHandler
from jobferry.api.wooey.base import StreamingFormHandler, WooeyHandler, WooeyMixin
from jobferry.api.wooey.serialize import TERMINAL_VALUES, job_details, status_json
from jobferry.services.core import Principal
from jobferry.services.jobs import JobStatus, SubmitRequest
from jobferry.services.routing import RESOURCE_FIELDS, parse_request

#: Longest ``?wait=`` a status request may hold, seconds.
MAX_WAIT_S = 60.0


class SubmitHandler(StreamingFormHandler):
    staging = "wooey"  # the form's files, counted in jobferry_staging_bytes_total

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
        job_id = await self.services.jobs.submit_async(self.principal, request, form.files)
        self.core.telemetry.submitted("wooey")
        # {"valid": true, "job_id": ...} without a json.dumps of the dict.
        self.send_text(f'{{"valid": true, "job_id": {json.dumps(job_id)}}}')


class JobStatusHandler(WooeyHandler):
    async def get(self, job_id: str) -> None:
        principal = await self.authenticate()
        status = await self._status(principal, job_id)
        wait_s = self._wait_seconds()
        # ?wait=S (our extension): answer as soon as the job is complete, or after S s.
        deadline = time.monotonic() + wait_s
        while status.state not in TERMINAL_VALUES and time.monotonic() < deadline:
            ended = await self.core.wait_job_change(job_id, min(1.0, deadline - time.monotonic()))
            if ended is not None:  # its end as this daemon just recorded it: final
                status = status._replace(**ended._asdict())
            else:
                status = await self._status(principal, job_id)
        self.send_text(status_json(status.state, status.exit_code, status.state_reason))

    def compute_etag(self) -> str | None:
        """No ETag: Tornado hashes every GET's body for one, and a status answer is
        ``Cache-Control: no-store`` (never revalidated) and the hottest request."""
        return None

    async def _status(self, principal: Principal, job_id: str) -> JobStatus:
        """The job's status: read on the loop where the store allows (SQLite), which
        costs less than the hop to a worker thread; else in a worker."""
        jobs = self.services.jobs
        status = jobs.status_now(principal, job_id)
        if status is None:
            status = await self.call(jobs.status, principal, job_id)
        return status

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
        self.send_json(job_details(view, stdout, stderr, self._asset_url))

    def _asset_url(self, job_id: str, file_id: str) -> str:
        return self.absolute_url(f"/api/jobs/v1/{job_id}/assets/{file_id}/")


class AssetHandler(WooeyMixin, DownloadHandler):
    """GET/HEAD ``/api/jobs/v1/<job>/assets/<file>/``: one job file, for its owner or an admin."""

    staging = "wooey"  # counted in jobferry_staging_bytes_total

    async def locate(self, principal: Principal, *args: str) -> Download:
        job_id, file_id = args
        path, job_file = await self.call(self.services.jobs.output_path, principal, job_id, file_id)
        filename = quote(os.path.basename(job_file.name), safe="")
        return Download(
            path,
            job_file.size,
            job_file.sha256,
            disposition=f"attachment; filename*=UTF-8''{filename}",
        )
