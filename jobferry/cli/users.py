"""``jobferry user create|list|passwd|logout-all``: users, through ``services.auth``,
``.users`` and ``.web_sessions``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from jobferry.cli.common import add_command, group, services_of, show
from jobferry.errors import ValidationError


def cmd_user_create(args: argparse.Namespace) -> int:
    auth = services_of(args).auth
    user, key = auth.create_user(args.name, email=args.email, is_admin=args.admin)
    if args.json:
        print(json.dumps({"id": user.id, "username": user.username, "api_key": key}))
    else:
        print(key)
    return 0


def _read_new_password() -> str:
    """The new password: prompted twice on a terminal, else the first line of stdin."""
    if sys.stdin.isatty():
        import getpass

        first = getpass.getpass("New password: ")
        if getpass.getpass("Repeat it: ") != first:
            raise ValidationError("the two passwords differ")
        return first
    line = sys.stdin.readline()
    return line[:-1] if line.endswith("\n") else line


def cmd_user_passwd(args: argparse.Namespace) -> int:
    services = services_of(args)
    services.auth.get_user(args.name)  # an unknown user fails before the prompt
    ended = services.users.set_password(args.name, _read_new_password().rstrip("\r"))
    show(args, {"username": args.name, "password_changed": True, "sessions_ended": ended})
    return 0


def cmd_user_logout_all(args: argparse.Namespace) -> int:
    ended = services_of(args).web_sessions.logout_all(args.name)
    show(args, {"username": args.name, "sessions_ended": ended})
    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    users = [vars(u) for u in services_of(args).auth.list_users()]
    show(args, users, ["id", "username", "email", "is_admin", "is_active", "created_at"])
    return 0


def register(top: Any) -> None:
    user = group(top, "user", "users")
    p = add_command(
        user, "create", "user.create", cmd_user_create, "create a user; print its API key"
    )
    p.add_argument("name")
    p.add_argument("--email")
    p.add_argument("--admin", action="store_true", help="make the user an admin")
    add_command(user, "list", "user.list", cmd_user_list, "list users")
    p = add_command(
        user,
        "passwd",
        "user.passwd",
        cmd_user_passwd,
        "set a user's password (read from stdin); ends their password-signed browser sessions",
    )
    p.add_argument("name")
    p = add_command(
        user,
        "logout-all",
        "user.logout-all",
        cmd_user_logout_all,
        "sign a user out of every browser session (API keys stay valid)",
    )
    p.add_argument("name")
