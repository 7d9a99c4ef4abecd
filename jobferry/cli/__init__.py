"""The admin command line: ``jobferry serve|db|config|user|key|script|job``.

Every command works on the store named by the configuration (``--config``,
``--data-dir``), prints a readable table by default and JSON with ``--json``,
and exits non-zero with a one-line error on bad input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from jobferry import __version__
from jobferry.cli.commands import COMMANDS, add_subcommands
from jobferry.errors import JobferryError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobferry", description="jobferry job runner daemon and admin tool"
    )
    parser.add_argument("--version", action="version", version=f"jobferry {__version__}")
    add_subcommands(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = COMMANDS.get(getattr(args, "command_key", ""))
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return handler(args) or 0
    except JobferryError as exc:
        print(f"jobferry: error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
