"""File downloads with HEAD and Range, built on Tornado's StaticFileHandler.

StaticFileHandler already implements byte ranges (206/416), HEAD, conditional
requests and chunked streaming from disk; we add authentication, lookup of the
file through the job service (which confines the path), a stored-checksum ETag
(instead of Tornado's whole-file hash) and JSON errors.
"""

from __future__ import annotations

import os
from urllib.parse import quote

import tornado.web

from jobferry.api.base import Services
from jobferry.api.galaxy.files import parse_range
from jobferry.api.wooey import WooeyMixin


class AssetHandler(WooeyMixin, tornado.web.StaticFileHandler):
    """GET/HEAD ``/api/jobs/v1/<job>/assets/<file>/``: one job file, for its owner or an admin."""

    def initialize(self, services: Services) -> None:  # type: ignore[override]
        super().initialize(services)
        self._sha256 = ""
        tornado.web.StaticFileHandler.initialize(self, path=os.sep)

    async def get(  # type: ignore[override]
        self, job_id: str, file_id: str, include_body: bool = True
    ) -> None:
        principal = await self.authenticate()
        path, job_file = await self.call(self.services.jobs.output_path, principal, job_id, file_id)
        self.root = str(path.parent)
        self._sha256 = job_file.sha256
        filename = quote(os.path.basename(job_file.name), safe="")
        self.set_header("Content-Disposition", f"attachment; filename*=UTF-8''{filename}")
        self.set_header("Cache-Control", "private, no-cache")
        # A range past the end answers with our JSON 416 (StaticFileHandler's is empty).
        parse_range(self.request.headers.get("Range"), job_file.size)
        await super().get(path.name, include_body=include_body)

    async def head(self, job_id: str, file_id: str) -> None:  # type: ignore[override]
        await self.get(job_id, file_id, include_body=False)

    def compute_etag(self) -> str | None:
        return f'"{self._sha256}"' if self._sha256 else None

    def get_content_type(self) -> str:
        return "application/octet-stream"

    @classmethod
    def get_content_version(cls, abspath: str) -> str:
        return ""
