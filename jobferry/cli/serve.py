"""``jobferry serve``: run the daemon (the one place the CLI imports ``daemon``)."""

from __future__ import annotations

import argparse
from typing import Any

from jobferry.cli.common import add_command, config_of


def cmd_serve(args: argparse.Namespace) -> int:
    from jobferry.daemon.server import serve

    config = config_of(args, **{"server.host": args.host, "server.port": args.port})
    serve(config)
    return 0


def register(top: Any) -> None:
    serve = add_command(top, "serve", "serve", cmd_serve, "run the daemon")
    serve.add_argument("--host", help="address to bind (overrides server.host)")
    serve.add_argument("--port", type=int, help="port to bind (overrides server.port)")
