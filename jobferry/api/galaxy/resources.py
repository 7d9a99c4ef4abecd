"""Galaxy's jobs, configuration, authentication, tools, datasets and users.

Each resource has its module in this package; this one assembles their routes.
Every route matches with and without a trailing slash and never redirects
(bioblend sends POST/PUT/DELETE with redirects disabled).
"""

from __future__ import annotations

from typing import Any

from jobferry.api.base import Services
from jobferry.api.galaxy.config import config_routes
from jobferry.api.galaxy.datasets import dataset_routes
from jobferry.api.galaxy.jobs import job_routes
from jobferry.api.galaxy.tools import tool_routes
from jobferry.api.galaxy.users import user_routes


def resource_routes(services: Services) -> list[Any]:
    init = {"services": services}
    return [
        *config_routes(init),
        *job_routes(init),
        *tool_routes(init),
        *dataset_routes(init),
        *user_routes(init),
    ]
