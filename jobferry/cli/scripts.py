"""``jobferry script add|list|show``: registered scripts and their versions, acting as
the first admin, through ``services.scripts``."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from jobferry.cli.common import add_command, group, services_of, show
from jobferry.errors import NotFoundError
from jobferry.services.scripts import ScriptUpload


def cmd_script_add(args: argparse.Namespace) -> int:
    services = services_of(args)
    path = Path(args.file)
    if not path.is_file():
        raise NotFoundError(f"no such file: {path}")
    with tempfile.TemporaryDirectory(dir=services.core.tmp_path) as tmp:
        copy = Path(tmp) / path.name
        shutil.copyfile(path, copy)
        name = args.name or path.stem
        results = services.scripts.add_or_update(
            services.admin.acting_admin(),
            [ScriptUpload(name, copy, path.name)],
            group=args.group,
            default=not args.no_default,
        )
    result = results[0]
    show(args, result)
    if not result["success"]:
        print(f"jobferry: error: {' '.join(str(result['errors']).split())}", file=sys.stderr)
        return 1
    return 0


def cmd_script_list(args: argparse.Namespace) -> int:
    scripts = services_of(args).scripts.list_scripts()
    rows = [
        {
            **s,
            "default": (s["default_version"] or {}).get("script_version"),
            "iteration": (s["default_version"] or {}).get("script_iteration"),
        }
        for s in scripts
    ]
    show(args, rows, ["slug", "script_name", "group", "default", "iteration", "versions_count"])
    return 0


def cmd_script_show(args: argparse.Namespace) -> int:
    show(args, services_of(args).scripts.get_script(args.slug))
    return 0


def register(top: Any) -> None:
    script = group(top, "script", "scripts")
    p = add_command(
        script, "add", "script.add", cmd_script_add, "register a script (or a new version)"
    )
    p.add_argument("file")
    p.add_argument("--group")
    p.add_argument("--name", help="script name (default: the file name without .py)")
    p.add_argument("--no-default", action="store_true", help="do not make it the default")
    add_command(script, "list", "script.list", cmd_script_list, "list scripts")
    p = add_command(
        script, "show", "script.show", cmd_script_show, "show a script and its versions"
    )
    p.add_argument("slug")
