"""``jobferry remote ...``: a client for a running daemon, over HTTP only.

For a user on a laptop or a login node: it needs the daemon's URL and an API
key (``settings``), speaks HTTP with the standard library (``client``), moves
files with progress bars on a terminal (``transfer``, ``progress``) and has one
function per command (``commands``). It never opens the store and needs none of
the daemon's services (an import-linter contract keeps it so); the admin
commands (``jobferry job ...``) stay separate.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import Any

from jobferry.cli.remote import commands

Handler = Callable[[argparse.Namespace], int | None]

_RATE = re.compile(r"(\d+(?:\.\d+)?)([kKmMgG]?)")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_rate(text: str) -> int:
    """``--limit-rate``: bytes a second, with an optional K, M or G suffix (as curl's)."""
    found = _RATE.fullmatch(text.strip())
    if not found or float(found.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate such as 500K or 20M")
    return max(1, int(float(found.group(1)) * _UNITS[found.group(2).lower()]))


def _split_class(base: type[argparse.ArgumentParser]) -> type[argparse.ArgumentParser]:
    """*base*, but everything after the first ``--`` is the script's arguments (``args``),
    whatever options come before it (``submit SCRIPT --file A=B -- -i A``)."""

    class SplitAtDashes(base):  # type: ignore[valid-type,misc]
        def parse_known_args(
            self, args: list[str] | None = None, namespace: argparse.Namespace | None = None
        ) -> tuple[argparse.Namespace, list[str]]:
            given = list(args or [])
            if "--" not in given:
                return super().parse_known_args(given, namespace)
            at = given.index("--")
            parsed, extras = super().parse_known_args(given[:at], namespace)
            if not hasattr(parsed, "args"):
                return parsed, [*extras, *given[at + 1 :]]  # an action that takes none
            parsed.args = [*parsed.args, *given[at + 1 :]]
            return parsed, extras

    return SplitAtDashes


def _options(parser: argparse.ArgumentParser) -> None:
    """The connection and output options, accepted before and after the action."""
    quiet = argparse.SUPPRESS
    parser.add_argument(
        "--url", help="the daemon's base URL (default: $JOBFERRY_URL)", default=quiet
    )
    parser.add_argument(
        "--key-file",
        help="a file holding the API key, mode 0600 (default: $JOBFERRY_KEY, then the client file)",
        default=quiet,
    )
    parser.add_argument("--json", action="store_true", help="print JSON", default=quiet)
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bars or notes", default=quiet
    )


def register(top: Any, registry: dict[str, Handler]) -> None:
    """Add ``remote`` and its actions to the top parser; their handlers to *registry*."""
    help_text = "a client for a running daemon, over HTTP (URL and key from options or files)"
    group = top.add_parser(
        "remote",
        help=help_text,
        description=f"{help_text}; the client file is $XDG_CONFIG_HOME/jobferry/client.yml "
        "(url: and key:, mode 0600)",
    )
    _options(group)
    actions = group.add_subparsers(
        metavar="ACTION", dest="action", required=True, parser_class=_split_class(type(group))
    )

    def action(name: str, fn: Handler, text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = actions.add_parser(name, help=text, description=text)
        key = f"remote.{name}"
        parser.set_defaults(command_key=key)
        registry[key] = fn
        _options(parser)
        return parser

    action("scripts", commands.cmd_scripts, "list the scripts you may run")

    p = action("submit", commands.cmd_submit, "submit a job: SCRIPT [--file NAME=PATH ...] -- ARGS")
    p.add_argument("script", metavar="SCRIPT", help="the script's slug")
    p.add_argument(
        "--file",
        action="append",
        metavar="NAME=PATH",
        help="upload PATH as the form file NAME (name it in ARGS)",
    )
    p.add_argument("--name", help="the job's name (default: the script's slug)")
    p.add_argument("--description", help="the job's description")
    p.add_argument("--wait", action="store_true", help="wait for the job to end, show it")
    p.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds")
    p.add_argument("args", nargs="*", metavar="ARGS", help="the script's arguments, after --")

    p = action("status", commands.cmd_status, "a job's status")
    p.add_argument("id", metavar="ID")

    p = action("wait", commands.cmd_wait, "wait for a job to end (long poll), show it")
    p.add_argument("id", metavar="ID")
    p.add_argument("--timeout", type=float, help="give up after this many seconds")

    p = action("logs", commands.cmd_logs, "a job's stdout (or --stderr)")
    p.add_argument("id", metavar="ID")
    p.add_argument("--stderr", action="store_true", help="the job's stderr instead")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until it ends")

    p = action("download", commands.cmd_download, "download a job's outputs (resumable)")
    p.add_argument("id", metavar="ID")
    p.add_argument("--to", default=".", metavar="DIR", help="where to put them (default: .)")
    p.add_argument("--asset", action="append", metavar="NAME", help="only this output")
    p.add_argument(
        "--limit-rate", type=parse_rate, metavar="RATE", help="at most RATE bytes/s (e.g. 20M)"
    )

    p = action("cancel", commands.cmd_cancel, "cancel a job")
    p.add_argument("id", metavar="ID")

    p = action("jobs", commands.cmd_jobs, "your jobs (admins: everyone's)")
    p.add_argument("--state", help="only these states, comma-separated (any face's names)")
    p.add_argument("--limit", type=int, default=100, help="at most this many (default: 100)")
