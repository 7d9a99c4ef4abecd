"""The CLI's subcommands: each parses, calls one service, and prints."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from jobferry.cli.common import (
    add_command,
    admin_principal,
    config_of,
    core_of,
    global_options,
    json_value,
    show,
)
from jobferry.config import config_as_dict
from jobferry.errors import NotFoundError, ValidationError
from jobferry.services.auth import AuthService
from jobferry.services.core import Core
from jobferry.services.jobs import JobService
from jobferry.services.scripts import ScriptService, ScriptUpload
from jobferry.store.engine import current_revision, display_url, upgrade_schema

# --- serve, db, config --------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from jobferry.daemon.server import serve

    config = config_of(args, **{"server.host": args.host, "server.port": args.port})
    serve(config)
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    config = config_of(args)
    core = Core(config)
    core.ensure_dirs()
    before, after = upgrade_schema(core.engine)
    show(args, {"database": display_url(config.database_url), "from": before, "to": after})
    return 0


def cmd_db_status(args: argparse.Namespace) -> int:
    from jobferry.store.engine import head_revision

    config = config_of(args)
    core = Core(config)
    current, head = current_revision(core.engine), head_revision()
    show(
        args,
        {
            "database": display_url(config.database_url),
            "current": current,
            "head": head,
            "up_to_date": current == head,
        },
    )
    return 0 if current == head else 1


def cmd_config_check(args: argparse.Namespace) -> int:
    config = config_of(args)
    data = config_as_dict(config)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(yaml.safe_dump(data, sort_keys=False).rstrip())
    return 0


# --- users and keys -----------------------------------------------------------------------


def cmd_user_create(args: argparse.Namespace) -> int:
    core = core_of(args)
    user, key = AuthService(core).create_user(args.name, email=args.email, is_admin=args.admin)
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
    from jobferry.services.users import UserService

    core = core_of(args)
    service = UserService(core, AuthService(core))
    service.auth.get_user(args.name)  # an unknown user fails before the prompt
    service.set_password(args.name, _read_new_password().rstrip("\r"))
    show(args, {"username": args.name, "password_changed": True})
    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    users = [vars(u) for u in AuthService(core_of(args)).list_users()]
    show(args, users, ["id", "username", "email", "is_admin", "is_active", "created_at"])
    return 0


def cmd_key_create(args: argparse.Namespace) -> int:
    info, key = AuthService(core_of(args)).create_key(args.user, args.name or "")
    if args.json:
        print(json.dumps({**vars(info), "api_key": key}, default=json_value))
    else:
        print(key)
    return 0


def cmd_key_list(args: argparse.Namespace) -> int:
    keys = [vars(k) for k in AuthService(core_of(args)).list_keys(args.user)]
    show(args, keys, ["id", "username", "name", "prefix", "is_active", "last_used_at"])
    return 0


def cmd_key_revoke(args: argparse.Namespace) -> int:
    AuthService(core_of(args)).revoke_key(args.id)
    show(args, {"id": args.id, "revoked": True})
    return 0


# --- scripts ------------------------------------------------------------------------------


def cmd_script_add(args: argparse.Namespace) -> int:
    core = core_of(args)
    path = Path(args.file)
    if not path.is_file():
        raise NotFoundError(f"no such file: {path}")
    with tempfile.TemporaryDirectory(dir=core.tmp_path) as tmp:
        copy = Path(tmp) / path.name
        shutil.copyfile(path, copy)
        name = args.name or path.stem
        results = ScriptService(core).add_or_update(
            admin_principal(core),
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
    scripts = ScriptService(core_of(args)).list_scripts()
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
    show(args, ScriptService(core_of(args)).get_script(args.slug))
    return 0


# --- jobs ---------------------------------------------------------------------------------


def cmd_job_list(args: argparse.Namespace) -> int:
    from jobferry.services.states import parse_state  # every face's names (README's table)

    states = [parse_state(s) for s in args.state.split(",")] if args.state else []
    core = core_of(args)
    jobs = JobService(core).list_jobs(
        admin_principal(core),
        states=states,
        username=args.user,
        limit=args.limit,
    )
    rows = [
        {
            "id": j.id,
            "user": u,
            "name": j.name,
            "state": j.state,
            "exit_code": j.exit_code,
            "destination": j.destination,
            "node": j.node,
            "created_at": j.created_at.isoformat(timespec="seconds"),
        }
        for j, u in jobs
    ]
    columns = ["id", "user", "name", "state", "exit_code", "destination", "node", "created_at"]
    show(args, rows, columns)
    return 0


def cmd_job_show(args: argparse.Namespace) -> int:
    core = core_of(args)
    view = JobService(core).get(admin_principal(core), args.id)
    job = view.job
    data = {
        "id": job.id,
        "uuid": job.uuid,
        "user": view.username,
        "script": view.script_slug,
        "name": job.name,
        "description": job.description,
        "state": job.state,
        "reason": job.state_reason,
        "state_reason": job.state_reason,
        "exit_code": job.exit_code,
        "command": job.command,
        "argv": job.argv,
        "runner": job.runner,
        "destination": job.destination,
        "node": job.node,
        "attempt": job.attempt,
        "external_id": job.external_id,
        "cores": job.cores,
        "memory_mb": job.memory_mb,
        "gpus": job.gpus,
        "walltime_s": job.walltime_s,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "wall_s": job.wall_s,
        "cpu_user_s": job.cpu_user_s,
        "cpu_sys_s": job.cpu_sys_s,
        "peak_rss_kb": job.peak_rss_kb,
        "job_dir": job.job_dir,
        "files": [
            {"id": f.id, "kind": f.kind, "name": f.name, "size": f.size, "sha256": f.sha256}
            for f in view.files
        ],
    }
    show(args, data)
    return 0


def cmd_job_cancel(args: argparse.Namespace) -> int:
    core = core_of(args)
    state = JobService(core).cancel(admin_principal(core), args.id)
    show(args, {"id": args.id, "state": state})
    return 0


def cmd_job_logs(args: argparse.Namespace) -> int:
    core = core_of(args)
    service = JobService(core)
    view = service.get(admin_principal(core), args.id)
    stream = "stderr" if args.stderr else "stdout"
    path = Path(view.job.job_dir) / stream
    text: str | None = None  # None: the job never ran
    try:
        with open(path, "rb") as handle:
            if args.json:
                text = handle.read().decode("utf-8", "replace")
            else:  # the whole log, streamed: it may be larger than memory
                sys.stdout.flush()
                shutil.copyfileobj(handle, sys.stdout.buffer)
                sys.stdout.buffer.flush()
    except FileNotFoundError:
        pass
    if args.json:
        print(json.dumps({"id": args.id, stream: text}))
    return 0


def cmd_job_key(args: argparse.Namespace) -> int:
    core = core_of(args)
    key = JobService(core).job_key(admin_principal(core), args.id)
    print(json.dumps({"id": args.id, "job_key": key}) if args.json else key)
    return 0


# --- nodes --------------------------------------------------------------------------------


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
    from jobferry.services.nodes import NodeService

    core = core_of(args)
    nodes = NodeService(core).list_nodes(admin_principal(core))
    if args.json:
        show(args, nodes)
    else:
        show(args, [_node_row(n) for n in nodes], NODE_COLUMNS)
    return 0


def cmd_node_show(args: argparse.Namespace) -> int:
    from jobferry.services.nodes import NodeService

    core = core_of(args)
    show(args, NodeService(core).get(admin_principal(core), args.name))
    return 0


def _set_drained(args: argparse.Namespace, drained: bool) -> int:
    from jobferry.services.nodes import NodeService

    core = core_of(args)
    node = NodeService(core).set_drained(admin_principal(core), args.name, drained)
    show(args, node if args.json else {k: node[k] for k in ("name", "state", "drained")})
    return 0


def cmd_node_drain(args: argparse.Namespace) -> int:
    return _set_drained(args, True)


def cmd_node_undrain(args: argparse.Namespace) -> int:
    return _set_drained(args, False)


# --- wiring -------------------------------------------------------------------------------


def _group(top: Any, name: str, help_text: str) -> Any:
    """A command group (``jobferry db ...``) whose action is required."""
    parser = top.add_parser(name, help=help_text, description=help_text)
    global_options(parser)  # `jobferry user --data-dir D create X` too
    return parser.add_subparsers(metavar="ACTION", dest="action", required=True)


def add_subcommands(parser: argparse.ArgumentParser) -> None:
    global_options(parser, top=True)
    top = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command", required=True)

    serve = add_command(top, "serve", "serve", cmd_serve, "run the daemon")
    serve.add_argument("--host", help="address to bind (overrides server.host)")
    serve.add_argument("--port", type=int, help="port to bind (overrides server.port)")

    db = _group(top, "db", "database schema")
    add_command(db, "upgrade", "db.upgrade", cmd_db_upgrade, "migrate the schema to this version")
    add_command(db, "status", "db.status", cmd_db_status, "show the schema revision")

    cfg = _group(top, "config", "configuration")
    add_command(
        cfg, "check", "config.check", cmd_config_check, "validate and print the configuration"
    )

    user = _group(top, "user", "users")
    p = add_command(
        user, "create", "user.create", cmd_user_create, "create a user; print its API key"
    )
    p.add_argument("name")
    p.add_argument("--email")
    p.add_argument("--admin", action="store_true", help="make the user an admin")
    add_command(user, "list", "user.list", cmd_user_list, "list users")
    p = add_command(
        user, "passwd", "user.passwd", cmd_user_passwd, "set a user's password (read from stdin)"
    )
    p.add_argument("name")

    key = _group(top, "key", "API keys")
    p = add_command(
        key, "create", "key.create", cmd_key_create, "create a key for a user; print it"
    )
    p.add_argument("user")
    p.add_argument("--name", help="a label for the key")
    p = add_command(key, "list", "key.list", cmd_key_list, "list keys (never the keys themselves)")
    p.add_argument("--user")
    p = add_command(key, "revoke", "key.revoke", cmd_key_revoke, "revoke a key by id")
    p.add_argument("id")

    script = _group(top, "script", "scripts")
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

    job = _group(top, "job", "jobs")
    p = add_command(job, "list", "job.list", cmd_job_list, "list jobs, newest first")
    p.add_argument("--state")
    p.add_argument("--user")
    p.add_argument("--limit", type=int, default=50)
    p = add_command(job, "show", "job.show", cmd_job_show, "show a job")
    p.add_argument("id")
    p = add_command(
        job, "cancel", "job.cancel", cmd_job_cancel, "cancel a job (kills its processes)"
    )
    p.add_argument("id")
    p = add_command(job, "logs", "job.logs", cmd_job_logs, "print a job's stdout (or --stderr)")
    p.add_argument("id")
    p.add_argument("--stderr", action="store_true")
    p = add_command(job, "key", "job.key", cmd_job_key, "print a job's job_key (admins)")
    p.add_argument("id")

    node = _group(top, "node", "nodes (the daemons sharing the store)")
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
