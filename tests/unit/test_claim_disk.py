"""A claimed job whose directory cannot be made (a full disk) goes back to the queue."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobferry.services.execution import ExecutionService
from jobferry.services.nodes import NodeService
from jobferry.store.models import JobState
from tests.unit.test_nodes import add_job, cores, job  # noqa: F401 - the fixture


def test_a_claim_whose_job_directory_cannot_be_made_requeues_the_job(
    cores: tuple,  # noqa: F811
) -> None:
    """Guards: the claim committed, then making the job's directory failed (ENOSPC):
    the job stayed claimed, with no process, until the daemon's next start."""
    n1, _ = cores
    NodeService(n1).register(url="u")
    job_id = add_job(n1, node=None, attempt=0, state=JobState.QUEUED.value)
    Path(job(n1, job_id).job_dir).parent.mkdir(parents=True, exist_ok=True)
    Path(job(n1, job_id).job_dir).write_text("in the way")  # mkdir fails, like ENOSPC

    with pytest.raises(OSError):
        ExecutionService(n1, base_url="").claim_next(["local"], None)

    requeued = job(n1, job_id)
    assert requeued.state == JobState.QUEUED.value and requeued.node is None
    assert "could not be made" in (requeued.state_reason or "")
