"""``/api/datasets/{id}`` and its ``/display``: job files as Galaxy history datasets."""

from __future__ import annotations

import mimetypes
import os
from typing import Any

from jobferry.api.downloads import Download, DownloadHandler
from jobferry.api.galaxy.base import GalaxyMixin
from jobferry.api.galaxy.common import GalaxyResource, route
from jobferry.api.galaxy.datasets_json import dataset
from jobferry.services.core import Principal
from jobferry.staging.paths import safe_filename


class DatasetHandler(GalaxyResource):
    async def get(self, dataset_id: str) -> None:
        principal = await self.authenticate()
        record = await self.call(self.services.galaxy.show_dataset, principal, dataset_id)
        self.send_json(dataset(record))


class DatasetDisplayHandler(GalaxyMixin, DownloadHandler):
    """GET/HEAD the content of a dataset, for its owner or an admin, with byte ranges.

    Query parameters (``to_ext``, ``preview``, ...) are ignored.
    """

    staging = "galaxy_datasets"  # counted in jobferry_staging_bytes_total

    async def locate(self, principal: Principal, *args: str) -> Download:
        (dataset_id,) = args
        path, job_file = await self.call(self.services.galaxy.dataset_path, principal, dataset_id)
        filename = safe_filename(os.path.basename(job_file.name), "dataset")
        guessed, _ = mimetypes.guess_type(filename)
        content_type = "application/octet-stream"
        if guessed == "text/plain" or (guessed or "").endswith(("csv", "tab-separated-values")):
            content_type = "text/plain; charset=utf-8"
        return Download(
            path,
            job_file.size,
            job_file.sha256,
            disposition=f'attachment; filename="{filename}"',
            content_type=content_type,
        )


def dataset_routes(init: dict[str, Any]) -> list[Any]:
    return [
        (route(r"/api/datasets/([^/]+)"), DatasetHandler, init),
        (route(r"/api/datasets/([^/]+)/display"), DatasetDisplayHandler, init),
    ]
