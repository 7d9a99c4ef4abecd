"""``jobferry db upgrade|status``: the store's schema revision, against this jobferry's.

These commands work on a store at any revision (the others refuse one that is not
at head), through ``services.admin``.
"""

from __future__ import annotations

import argparse
from typing import Any

from jobferry.cli.common import add_command, group, schema_services, show


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    services = schema_services(args)
    services.core.ensure_dirs()
    done = services.admin.upgrade_schema()
    show(args, {"database": done.database, "from": done.before, "to": done.after})
    return 0


def cmd_db_status(args: argparse.Namespace) -> int:
    status = schema_services(args).admin.schema_status()
    show(
        args,
        {
            "database": status.database,
            "current": status.current,
            "head": status.head,
            "up_to_date": status.up_to_date,
        },
    )
    return 0 if status.up_to_date else 1


def register(top: Any) -> None:
    db = group(top, "db", "database schema")
    add_command(db, "upgrade", "db.upgrade", cmd_db_upgrade, "migrate the schema to this version")
    add_command(db, "status", "db.status", cmd_db_status, "show the schema revision")
