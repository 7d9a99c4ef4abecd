"""What the CLI modules share: running ``python -m jobferry.cli`` and checking its one-line
errors and JSON output."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from jobferry.store.engine import head_revision
from tests.helpers import _env

HEAD = head_revision()


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``jobferry ARGS`` exactly as given (no --data-dir added)."""
    return subprocess.run(
        [sys.executable, "-m", "jobferry.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**_env(), **(env or {})},
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("jobferry: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
