"""The admin command line: ``jobferry serve|db|config|user|key|script|job|node``,
and ``jobferry remote ...``, a client for a running daemon (``cli/remote/``).

Every command works on the store named by the configuration (``--config``,
``--data-dir``), prints a readable table by default and JSON with ``--json``,
and exits non-zero with a one-line error on bad input.

One module per noun registers that noun's commands (``serve``, ``schema`` for
``db``, ``configuration``, ``users``, ``keys``, ``scripts``, ``jobs``, ``nodes``);
each command builds the process's services once (``common.services_of``, through
``services.container.build``) and calls them. Nothing here imports the store.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from jobferry import __version__
from jobferry.errors import JobferryError, StoreUnavailableError, ValidationError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the subcommands inherit this class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"jobferry: error: {self.prog}: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    # Imported here: `jobferry remote` (below) starts without the services and the store.
    from jobferry.cli import configuration, jobs, keys, nodes, remote, schema, scripts, serve, users
    from jobferry.cli.common import COMMANDS, global_options

    parser = _Parser(prog="jobferry", description="jobferry job runner daemon and admin tool")
    parser.add_argument("--version", action="version", version=f"jobferry {__version__}")
    global_options(parser, top=True)
    top = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command", required=True)
    for noun in (serve, schema, configuration, users, keys, scripts, jobs, nodes):
        noun.register(top)  # in this order in --help
    remote.register(top, COMMANDS)  # HTTP to a running daemon, never the store
    return parser


def _remote_parser(registry: dict[str, Any]) -> argparse.ArgumentParser:
    """``jobferry remote ...`` alone: a laptop's client loads no store, services or runners."""
    from jobferry.cli import remote

    parser = _Parser(prog="jobferry", description="jobferry job runner daemon and admin tool")
    top = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command", required=True)
    remote.register(top, registry)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    commands: dict[str, Any] = {}
    if words[:1] == ["remote"]:
        parser = _remote_parser(commands)
    else:
        parser = build_parser()
        from jobferry.cli.common import COMMANDS

        commands = COMMANDS
    args = parser.parse_args(words)
    handler = commands.get(getattr(args, "command_key", ""))
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return handler(args) or 0
    except JobferryError as exc:
        line = _one_line(exc)
        if isinstance(exc, StoreUnavailableError) and exc.details.get("reason"):
            line = f"{line.rstrip('.')}: {_flatten(exc.details['reason'])}"  # an admin sees why
        print(f"jobferry: error: {line}", file=sys.stderr)
        return 1
    except Exception as exc:
        db_errors = sys.modules.get("sqlalchemy.exc")  # loaded if the command used the store
        if db_errors is None or not isinstance(exc, db_errors.SQLAlchemyError):
            raise
        reason = getattr(exc, "orig", None) or exc
        print(f"jobferry: error: the database failed: {_flatten(reason)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `jobferry job logs ID | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes at exit
        return 141


def _flatten(text: Any) -> str:
    return " ".join(str(text).split())


def _one_line(exc: JobferryError) -> str:
    """The message, with a ValidationError's per-field messages, on one line."""
    message = exc.message
    if message == (type(exc).__doc__ or "").strip():
        message = message.splitlines()[0]  # a default message: the docstring's summary
    if isinstance(exc, ValidationError):
        details = []
        for field, problems in exc.errors.items():
            for problem in problems if isinstance(problems, list) else [problems]:
                if problem != message:
                    details.append(problem if field == "__all__" else f"{field}: {problem}")
        if details:
            message = f"{message.rstrip('.')}: {'; '.join(details)}"
    return _flatten(message)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
