"""What every CLI command shares: the global options and the command registry,
the services it works through (built once, by ``services.container.build``),
and printing as a table or JSON."""

from __future__ import annotations

import argparse
import json
import socket
from collections.abc import Callable
from datetime import datetime
from typing import Any

from jobferry.config import Config, load_config
from jobferry.services.container import Services, build
from jobferry.services.core import Core

Handler = Callable[[argparse.Namespace], int | None]
COMMANDS: dict[str, Handler] = {}


def global_options(
    parser: argparse.ArgumentParser, *, json_flag: bool = True, top: bool = False
) -> None:
    """The global options, accepted before and after the subcommand.

    The top-level parser sets their defaults; on a (sub)command parser they default
    to SUPPRESS, so an option given before the subcommand is not reset by the
    subcommand's parser (argparse copies every default of a subparser over).
    """
    default: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    parser.add_argument(
        "--config", help="YAML configuration file (default: $JOBFERRY_CONFIG)", **default
    )
    parser.add_argument("--data-dir", help="data directory (overrides data_dir)", **default)
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print JSON", **default)


def add_command(
    sub: Any, name: str, key: str, fn: Handler, help_text: str
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
    parser.set_defaults(command_key=key)
    COMMANDS[key] = fn
    global_options(parser)
    return parser


def config_of(args: argparse.Namespace, **extra: Any) -> Config:
    overrides = {"data_dir": getattr(args, "data_dir", None), **extra}
    return load_config(getattr(args, "config", None), overrides=overrides)


def group(top: Any, name: str, help_text: str) -> Any:
    """A command group (``jobferry db ...``) whose action is required."""
    parser = top.add_parser(name, help=help_text, description=help_text)
    global_options(parser)  # `jobferry user --data-dir D create X` too
    return parser.add_subparsers(metavar="ACTION", dest="action", required=True)


def services_of(args: argparse.Namespace) -> Services:
    """The services of this CLI process, built once, on the store the options name.

    The runners are built too (e.g. to stop a Docker or Slurm job on cancel), the
    data directory is created, and a store whose schema is not at head is refused
    (an empty one is initialised).
    """
    from jobferry.runners.registry import build_runners

    config = config_of(args)
    node = config.node.name or socket.gethostname()
    runners, _ = build_runners(config, node)
    core = Core(config, runners=runners, node_name=node)
    core.ensure_dirs()
    services = build(core)
    services.admin.check_schema()
    return services


def schema_services(args: argparse.Namespace) -> Services:
    """The services for ``jobferry db``: no runners, and a store at any revision."""
    return build(Core(config_of(args)))


def json_value(value: Any) -> Any:
    """Datetimes as ISO 8601 (as the HTTP API gives them); anything else as text."""
    return value.isoformat() if isinstance(value, datetime) else str(value)


def show(args: argparse.Namespace, data: Any, columns: list[str] | None = None) -> None:
    if args.json:
        print(json.dumps(data, indent=2, default=json_value))
        return
    if columns is None:
        if isinstance(data, dict):
            width = max((len(k) for k in data), default=0)
            for key, value in data.items():
                shown = value
                if isinstance(value, list | dict):
                    shown = json.dumps(value, default=json_value)
                print(f"{key:<{width}}  {'' if shown is None else shown}")
        else:
            print(data)
        return
    rows = [[("" if row.get(c) is None else str(row.get(c))) for c in columns] for row in data]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
