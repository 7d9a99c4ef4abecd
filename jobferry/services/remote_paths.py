"""Paths of a job that runs off this host (remote staging, another interpreter).

``relocate`` moves an argument's path from the job directory to the remote
scratch directory; ``files_under`` lists what is staged in; ``copy_script`` gives
a job its own copy of the script it runs.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

#: Where a job's own copy of its script lives (relative to the job directory), for
#: runners whose execution host cannot see the daemon's scripts directory.
SCRIPT_COPY = "script"


def relocate(arg: str, prefix: str, target: str) -> str:
    """*arg* with a leading path under *prefix* moved under *target* (also the value
    of an ``--option=path`` argument)."""
    head, eq, value = arg.partition("=") if arg.startswith("-") else ("", "", arg)
    if value == prefix or value.startswith(prefix + "/"):
        return head + eq + target + value[len(prefix) :]
    return arg


def files_under(job_dir: Path, tops: tuple[str, ...]) -> tuple[str, ...]:
    """Regular files under *tops* of the job directory, relative to it, sorted."""
    found: list[str] = []
    for top in tops:
        for root, dirs, files in os.walk(job_dir / top, followlinks=False):
            dirs.sort()
            for name in sorted(files):
                path = Path(root) / name
                if path.is_file() and not path.is_symlink():
                    found.append(str(path.relative_to(job_dir)))
    return tuple(found)


def copy_script(job_dir: Path, argv: list[object]) -> None:
    """Give a job that runs off this host's interpreter its own copy of the script."""
    if len(argv) < 2:
        return
    source = Path(str(argv[1]))
    target = job_dir / SCRIPT_COPY / source.name
    if target.exists() or not source.is_file():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.part")
    shutil.copyfile(source, partial)
    partial.chmod(0o644)
    os.replace(partial, target)
