"""``jobferry key create|list|revoke``: users' API keys, through ``services.auth``.

A key is printed once, when created; listing shows its prefix, never the key.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from jobferry.cli.common import add_command, group, json_value, services_of, show


def cmd_key_create(args: argparse.Namespace) -> int:
    info, key = services_of(args).auth.create_key(args.user, args.name or "")
    if args.json:
        print(json.dumps({**vars(info), "api_key": key}, default=json_value))
    else:
        print(key)
    return 0


def cmd_key_list(args: argparse.Namespace) -> int:
    keys = [vars(k) for k in services_of(args).auth.list_keys(args.user)]
    show(args, keys, ["id", "username", "name", "prefix", "is_active", "last_used_at"])
    return 0


def cmd_key_revoke(args: argparse.Namespace) -> int:
    services_of(args).auth.revoke_key(args.id)
    show(args, {"id": args.id, "revoked": True})
    return 0


def register(top: Any) -> None:
    key = group(top, "key", "API keys")
    p = add_command(
        key, "create", "key.create", cmd_key_create, "create a key for a user; print it"
    )
    p.add_argument("user")
    p.add_argument("--name", help="a label for the key")
    p = add_command(key, "list", "key.list", cmd_key_list, "list keys (never the keys themselves)")
    p.add_argument("--user")
    p = add_command(key, "revoke", "key.revoke", cmd_key_revoke, "revoke a key by id")
    p.add_argument("id")
