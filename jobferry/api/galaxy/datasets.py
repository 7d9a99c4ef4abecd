"""``/api/datasets/{id}`` and its ``/display``: job files as Galaxy history datasets."""

from __future__ import annotations

import mimetypes
import os
from typing import Any

import tornado.web

from jobferry.api.base import Services
from jobferry.api.galaxy.base import GalaxyMixin
from jobferry.api.galaxy.common import GalaxyResource, route
from jobferry.api.galaxy.datasets_json import dataset
from jobferry.api.galaxy.files import parse_range
from jobferry.staging.paths import safe_filename


class DatasetHandler(GalaxyResource):
    async def get(self, dataset_id: str) -> None:
        principal = await self.authenticate()
        record = await self.call(self.services.galaxy.show_dataset, principal, dataset_id)
        self.send_json(dataset(record))


class DatasetDisplayHandler(GalaxyMixin, tornado.web.StaticFileHandler):
    """GET/HEAD the content of a dataset, for its owner or an admin, with byte ranges.

    StaticFileHandler does ranges (206/416), HEAD, conditional requests and
    streaming; the file is found through the service, which confines the path.
    Query parameters (``to_ext``, ``preview``, ...) are ignored.
    """

    def initialize(self, services: Services) -> None:  # type: ignore[override]
        GalaxyMixin.initialize(self, services)
        self._sha256 = ""
        self._content_type = "application/octet-stream"
        tornado.web.StaticFileHandler.initialize(self, path=os.sep)

    async def get(self, dataset_id: str, include_body: bool = True) -> None:
        principal = await self.authenticate()
        path, job_file = await self.call(self.services.galaxy.dataset_path, principal, dataset_id)
        self.root = str(path.parent)
        self._sha256 = job_file.sha256
        filename = safe_filename(os.path.basename(job_file.name), "dataset")
        guessed, _ = mimetypes.guess_type(filename)
        if guessed == "text/plain" or (guessed or "").endswith(("csv", "tab-separated-values")):
            self._content_type = "text/plain; charset=utf-8"
        self.set_header("Content-Disposition", f'attachment; filename="{filename}"')
        self.set_header("Cache-Control", "private, no-cache")
        # A range past the end answers with the JSON 416 (StaticFileHandler's is empty).
        parse_range(self.request.headers.get("Range"), job_file.size)
        await super().get(path.name, include_body=include_body)

    async def head(self, dataset_id: str) -> None:
        await self.get(dataset_id, include_body=False)

    def compute_etag(self) -> str | None:
        return f'"{self._sha256}"' if self._sha256 else None

    def get_content_type(self) -> str:
        return self._content_type

    @classmethod
    def get_content_version(cls, abspath: str) -> str:
        return ""


def dataset_routes(init: dict[str, Any]) -> list[Any]:
    return [
        (route(r"/api/datasets/([^/]+)"), DatasetHandler, init),
        (route(r"/api/datasets/([^/]+)/display"), DatasetDisplayHandler, init),
    ]
