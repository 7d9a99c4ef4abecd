"""How long the daemon's Docker image takes to build (the test suite builds it).

    .venv/bin/python bench/docker_image.py

Prints, each next to the same engine's fixed cost of a build (a one-layer image FROM
the same local base, measured in this run) and their ratio:
- cold: no layer cache (``--no-cache``), the wheelhouse already filled;
- warm: a code change (a new jobferry wheel; the dependencies' layer is reused);
- reused: the sources of an image already built (what a second test session pays).
The images it builds are tagged ``jobferry-bench/...`` and removed at the end.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.docker_image import build_image  # noqa: E402
from tests.services import PYTHON_IMAGE  # noqa: E402

TAGS = ("jobferry-bench/daemon:cold", "jobferry-bench/daemon:warm", "jobferry-bench/ref:1")


def reference_s() -> float:
    """A build with one fresh layer FROM the same base: the engine's own cost."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "Dockerfile").write_text(
            f"FROM {PYTHON_IMAGE}\nRUN echo {time.time()} > /stamp\n"
        )
        started = time.monotonic()
        subprocess.run(
            ["docker", "build", "-q", "-t", TAGS[2], tmp], check=True, capture_output=True
        )
        return time.monotonic() - started


def main() -> int:
    try:
        ref = reference_s()
        _, cold = build_image(no_cache=True, tag=TAGS[0])
        _, warm = build_image(no_cache=False, tag=TAGS[1])
        started = time.monotonic()
        _, reused = build_image()
        reused = reused or time.monotonic() - started
        print(f"reference build (one layer FROM {PYTHON_IMAGE}): {ref:6.1f} s")
        for name, seconds in (("cold", cold), ("warm", warm), ("reused", reused)):
            print(f"{name:>6}: {seconds:6.1f} s   {seconds / ref:5.1f} x reference")
    finally:
        subprocess.run(["docker", "image", "rm", *TAGS], capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
