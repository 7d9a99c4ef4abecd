"""``jobferry node list|show|drain|undrain``: the daemons sharing the store, acting as
the first admin, through ``services.nodes``."""

from __future__ import annotations

import argparse
from typing import Any

from jobferry.cli.common import add_command, group, services_of, show


def _node_row(node: dict[str, Any]) -> dict[str, Any]:
    total, free = node["total"], node["free"]
    return {
        "name": node["name"],
        "state": node["state"],
        "drained": node["drained"],
        "alive": node["alive"],
        "cores": f"{free['cores']}/{total['cores']}",
        "memory_mb": f"{free['memory_mb']}/{total['memory_mb']}",
        "gpus": f"{free['gpus']}/{total['gpus']}",
        "jobs": node["running_jobs"],
        "heartbeat_age_s": node["heartbeat_age_s"],
        "url": node["url"],
    }


NODE_COLUMNS = [
    "name", "state", "drained", "alive", "cores", "memory_mb", "gpus", "jobs",
    "heartbeat_age_s", "url",
]  # fmt: skip


def cmd_node_list(args: argparse.Namespace) -> int:
    services = services_of(args)
    nodes = services.nodes.list_nodes(services.admin.acting_admin())
    if args.json:
        show(args, nodes)
    else:
        show(args, [_node_row(n) for n in nodes], NODE_COLUMNS)
    return 0


def cmd_node_show(args: argparse.Namespace) -> int:
    services = services_of(args)
    show(args, services.nodes.get(services.admin.acting_admin(), args.name))
    return 0


def _set_drained(args: argparse.Namespace, drained: bool) -> int:
    services = services_of(args)
    node = services.nodes.set_drained(services.admin.acting_admin(), args.name, drained)
    show(args, node if args.json else {k: node[k] for k in ("name", "state", "drained")})
    return 0


def cmd_node_drain(args: argparse.Namespace) -> int:
    return _set_drained(args, True)


def cmd_node_undrain(args: argparse.Namespace) -> int:
    return _set_drained(args, False)


def register(top: Any) -> None:
    node = group(top, "node", "nodes (the daemons sharing the store)")
    add_command(node, "list", "node.list", cmd_node_list, "list nodes: state, resources free/total")
    p = add_command(node, "show", "node.show", cmd_node_show, "show a node")
    p.add_argument("name")
    p = add_command(
        node, "drain", "node.drain", cmd_node_drain, "drain a node: it claims no new jobs"
    )
    p.add_argument("name")
    p = add_command(
        node, "undrain", "node.undrain", cmd_node_undrain, "let a drained node claim again"
    )
    p.add_argument("name")
