"""job_files: a job's wrapper or runner fetching inputs and posting outputs (placeholder)."""

from __future__ import annotations

from typing import Any

from jobferry.api.base import Services


def files_routes(services: Services) -> list[Any]:
    return []
