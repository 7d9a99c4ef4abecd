"""The daemon's Docker image for tests: built once per source tree, from the local base.

No registry is reachable, so the image is built ``FROM`` ``jobferry-test/python:1``
(``scripts/services docker``) out of a wheelhouse made by ``scripts/docker-wheels``.
The image is tagged with a hash of everything that goes into it, so a session whose
sources match an image already built reuses it at no cost; otherwise the build
reuses the engine's layer cache (the dependencies' layer is rebuilt only when they
change) and the dependencies' wheels kept in ``wheelhouse_dir()``.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.services import PYTHON_IMAGE

ROOT = Path(__file__).resolve().parent.parent
#: Repository name of the images built here (tag: a hash of their sources).
IMAGE_REPO = "jobferry-test/daemon"
#: What the image is made of: a change to any of these is a new image.
SOURCES = (
    "Dockerfile",
    ".dockerignore",
    "conf/docker",
    "scripts/docker-wheels",
    "pyproject.toml",
    "setup.py",
    "README.md",
    "jobferry",
)
#: The port the image's configuration listens on.
CONTAINER_PORT = 8080
#: Seconds an image build may take (cold, on a busy 2-core machine).
BUILD_TIMEOUT_S = 900


def source_hash() -> str:
    digest = hashlib.sha256()
    for name in SOURCES:
        path = ROOT / name
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if "__pycache__" in file.parts or file.suffix == ".pyc":
                continue
            digest.update(str(file.relative_to(ROOT)).encode() + b"\0")
            digest.update(file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def wheelhouse_dir() -> Path:
    """Where the dependencies' wheels are kept between sessions (scripts/services'
    cache when writable, so ``scripts/services clean`` removes it)."""
    system = Path("/var/cache/jobferry")
    if os.access(system, os.W_OK):
        return system / "wheelhouse"
    return Path.home() / ".cache" / "jobferry-test" / "wheelhouse"


def image_exists(tag: str) -> bool:
    found = subprocess.run(["docker", "image", "inspect", tag], capture_output=True, timeout=60)
    return found.returncode == 0


def build_image(*, no_cache: bool = False, tag: str | None = None) -> tuple[str, float]:
    """Build the image (unless one of these sources exists); return its tag and the
    seconds the build took (0.0 when reused)."""
    tag = tag or f"{IMAGE_REPO}:{source_hash()}"
    if not no_cache and image_exists(tag):
        return tag, 0.0
    started = time.monotonic()
    house = wheelhouse_dir()
    house.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="jobferry-image-") as tmp:
        context = Path(tmp)
        # One wheelhouse per machine: parallel sessions take turns filling it.
        with open(house / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            _run(
                [str(ROOT / "scripts" / "docker-wheels"), str(house)],
                env={**os.environ, "PYTHON": sys.executable},
            )
            shutil.copytree(house, context / "wheels", ignore=shutil.ignore_patterns(".lock"))
        shutil.copy(ROOT / "Dockerfile", context)
        shutil.copy(ROOT / ".dockerignore", context)
        shutil.copytree(ROOT / "conf" / "docker", context / "conf" / "docker")
        argv = ["docker", "build", "--quiet", "--build-arg", f"BASE={PYTHON_IMAGE}", "-t", tag]
        _run([*argv, *(["--no-cache"] if no_cache else []), str(context)])
    return tag, time.monotonic() - started


def _run(argv: list[str], env: dict[str, str] | None = None) -> None:
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, env=env, check=False
    )
    if done.returncode != 0:
        raise AssertionError(f"{argv} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
