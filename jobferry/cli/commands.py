"""The CLI's subcommands: each parses, calls one service, and prints."""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select

from jobferry.config import Config, config_as_dict, load_config
from jobferry.errors import NotFoundError, ValidationError
from jobferry.services.auth import AuthService
from jobferry.services.core import Core, Principal
from jobferry.services.jobs import JobService
from jobferry.services.scripts import ScriptService, ScriptUpload
from jobferry.store.engine import check_schema, current_revision, display_url, upgrade_schema
from jobferry.store.models import User

Handler = Callable[[argparse.Namespace], int | None]
COMMANDS: dict[str, Handler] = {}


def _common(parser: argparse.ArgumentParser, *, json_flag: bool = True, top: bool = False) -> None:
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


def _cmd(sub: Any, name: str, key: str, fn: Handler, help_text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
    parser.set_defaults(command_key=key)
    COMMANDS[key] = fn
    _common(parser)
    return parser


def _config(args: argparse.Namespace, **extra: Any) -> Config:
    overrides = {"data_dir": getattr(args, "data_dir", None), **extra}
    return load_config(getattr(args, "config", None), overrides=overrides)


def _core(args: argparse.Namespace) -> Core:
    from jobferry.daemon.runners import build_runners

    config = _config(args)
    node = config.node.name or socket.gethostname()
    runners, _ = build_runners(config, node)  # e.g. to stop a Docker or Slurm job on cancel
    core = Core(config, runners=runners, node_name=node)
    core.ensure_dirs()
    check_schema(core.engine)
    return core


def _admin(core: Core) -> Principal:
    """The CLI acts as an admin: the first admin user (created if there is none)."""
    AuthService(core).ensure_admin()
    with core.sessions.begin() as session:
        user = session.execute(
            select(User).where(User.is_admin).order_by(User.created_at).limit(1)
        ).scalar()
    if user is None:
        raise NotFoundError("no admin user exists; create one with 'jobferry user create --admin'")
    return Principal(user.id, user.username, True)


def _json_value(value: Any) -> Any:
    """Datetimes as ISO 8601 (as the HTTP API gives them); anything else as text."""
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _print(args: argparse.Namespace, data: Any, columns: list[str] | None = None) -> None:
    if args.json:
        print(json.dumps(data, indent=2, default=_json_value))
        return
    if columns is None:
        if isinstance(data, dict):
            width = max((len(k) for k in data), default=0)
            for key, value in data.items():
                shown = value
                if isinstance(value, list | dict):
                    shown = json.dumps(value, default=_json_value)
                print(f"{key:<{width}}  {'' if shown is None else shown}")
        else:
            print(data)
        return
    rows = [[("" if row.get(c) is None else str(row.get(c))) for c in columns] for row in data]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


# --- serve, db, config --------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from jobferry.daemon.server import serve

    config = _config(args, **{"server.host": args.host, "server.port": args.port})
    serve(config)
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    config = _config(args)
    core = Core(config)
    core.ensure_dirs()
    before, after = upgrade_schema(core.engine)
    _print(args, {"database": display_url(config.database_url), "from": before, "to": after})
    return 0


def cmd_db_status(args: argparse.Namespace) -> int:
    from jobferry.store.engine import head_revision

    config = _config(args)
    core = Core(config)
    current, head = current_revision(core.engine), head_revision()
    _print(
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
    config = _config(args)
    data = config_as_dict(config)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(yaml.safe_dump(data, sort_keys=False).rstrip())
    return 0


# --- users and keys -----------------------------------------------------------------------


def cmd_user_create(args: argparse.Namespace) -> int:
    core = _core(args)
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

    core = _core(args)
    service = UserService(core, AuthService(core))
    service.auth.get_user(args.name)  # an unknown user fails before the prompt
    service.set_password(args.name, _read_new_password().rstrip("\r"))
    _print(args, {"username": args.name, "password_changed": True})
    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    users = [vars(u) for u in AuthService(_core(args)).list_users()]
    _print(args, users, ["id", "username", "email", "is_admin", "is_active", "created_at"])
    return 0


def cmd_key_create(args: argparse.Namespace) -> int:
    info, key = AuthService(_core(args)).create_key(args.user, args.name or "")
    if args.json:
        print(json.dumps({**vars(info), "api_key": key}, default=_json_value))
    else:
        print(key)
    return 0


def cmd_key_list(args: argparse.Namespace) -> int:
    keys = [vars(k) for k in AuthService(_core(args)).list_keys(args.user)]
    _print(args, keys, ["id", "username", "name", "prefix", "is_active", "last_used_at"])
    return 0


def cmd_key_revoke(args: argparse.Namespace) -> int:
    AuthService(_core(args)).revoke_key(args.id)
    _print(args, {"id": args.id, "revoked": True})
    return 0


# --- scripts ------------------------------------------------------------------------------


def cmd_script_add(args: argparse.Namespace) -> int:
    core = _core(args)
    path = Path(args.file)
    if not path.is_file():
        raise NotFoundError(f"no such file: {path}")
    with tempfile.TemporaryDirectory(dir=core.tmp_path) as tmp:
        copy = Path(tmp) / path.name
        shutil.copyfile(path, copy)
        name = args.name or path.stem
        results = ScriptService(core).add_or_update(
            _admin(core),
            [ScriptUpload(name, copy, path.name)],
            group=args.group,
            default=not args.no_default,
        )
    result = results[0]
    _print(args, result)
    if not result["success"]:
        print(f"jobferry: error: {' '.join(str(result['errors']).split())}", file=sys.stderr)
        return 1
    return 0


def cmd_script_list(args: argparse.Namespace) -> int:
    scripts = ScriptService(_core(args)).list_scripts()
    rows = [
        {
            **s,
            "default": (s["default_version"] or {}).get("script_version"),
            "iteration": (s["default_version"] or {}).get("script_iteration"),
        }
        for s in scripts
    ]
    _print(args, rows, ["slug", "script_name", "group", "default", "iteration", "versions_count"])
    return 0


def cmd_script_show(args: argparse.Namespace) -> int:
    _print(args, ScriptService(_core(args)).get_script(args.slug))
    return 0


# --- jobs ---------------------------------------------------------------------------------


def cmd_job_list(args: argparse.Namespace) -> int:
    from jobferry.services.states import parse_state  # every face's names (README's table)

    states = [parse_state(s) for s in args.state.split(",")] if args.state else []
    core = _core(args)
    jobs = JobService(core).list_jobs(
        _admin(core),
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
    _print(args, rows, columns)
    return 0


def cmd_job_show(args: argparse.Namespace) -> int:
    core = _core(args)
    view = JobService(core).get(_admin(core), args.id)
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
    _print(args, data)
    return 0


def cmd_job_cancel(args: argparse.Namespace) -> int:
    core = _core(args)
    state = JobService(core).cancel(_admin(core), args.id)
    _print(args, {"id": args.id, "state": state})
    return 0


def cmd_job_logs(args: argparse.Namespace) -> int:
    core = _core(args)
    service = JobService(core)
    view = service.get(_admin(core), args.id)
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
    core = _core(args)
    key = JobService(core).job_key(_admin(core), args.id)
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

    core = _core(args)
    nodes = NodeService(core).list_nodes(_admin(core))
    if args.json:
        _print(args, nodes)
    else:
        _print(args, [_node_row(n) for n in nodes], NODE_COLUMNS)
    return 0


def cmd_node_show(args: argparse.Namespace) -> int:
    from jobferry.services.nodes import NodeService

    core = _core(args)
    _print(args, NodeService(core).get(_admin(core), args.name))
    return 0


def _set_drained(args: argparse.Namespace, drained: bool) -> int:
    from jobferry.services.nodes import NodeService

    core = _core(args)
    node = NodeService(core).set_drained(_admin(core), args.name, drained)
    _print(args, node if args.json else {k: node[k] for k in ("name", "state", "drained")})
    return 0


def cmd_node_drain(args: argparse.Namespace) -> int:
    return _set_drained(args, True)


def cmd_node_undrain(args: argparse.Namespace) -> int:
    return _set_drained(args, False)


# --- wiring -------------------------------------------------------------------------------


def _group(top: Any, name: str, help_text: str) -> Any:
    """A command group (``jobferry db ...``) whose action is required."""
    parser = top.add_parser(name, help=help_text, description=help_text)
    _common(parser)  # `jobferry user --data-dir D create X` too
    return parser.add_subparsers(metavar="ACTION", dest="action", required=True)


def add_subcommands(parser: argparse.ArgumentParser) -> None:
    _common(parser, top=True)
    top = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command", required=True)

    serve = _cmd(top, "serve", "serve", cmd_serve, "run the daemon")
    serve.add_argument("--host", help="address to bind (overrides server.host)")
    serve.add_argument("--port", type=int, help="port to bind (overrides server.port)")

    db = _group(top, "db", "database schema")
    _cmd(db, "upgrade", "db.upgrade", cmd_db_upgrade, "migrate the schema to this version")
    _cmd(db, "status", "db.status", cmd_db_status, "show the schema revision")

    cfg = _group(top, "config", "configuration")
    _cmd(cfg, "check", "config.check", cmd_config_check, "validate and print the configuration")

    user = _group(top, "user", "users")
    p = _cmd(user, "create", "user.create", cmd_user_create, "create a user; print its API key")
    p.add_argument("name")
    p.add_argument("--email")
    p.add_argument("--admin", action="store_true", help="make the user an admin")
    _cmd(user, "list", "user.list", cmd_user_list, "list users")
    p = _cmd(
        user, "passwd", "user.passwd", cmd_user_passwd, "set a user's password (read from stdin)"
    )
    p.add_argument("name")

    key = _group(top, "key", "API keys")
    p = _cmd(key, "create", "key.create", cmd_key_create, "create a key for a user; print it")
    p.add_argument("user")
    p.add_argument("--name", help="a label for the key")
    p = _cmd(key, "list", "key.list", cmd_key_list, "list keys (never the keys themselves)")
    p.add_argument("--user")
    p = _cmd(key, "revoke", "key.revoke", cmd_key_revoke, "revoke a key by id")
    p.add_argument("id")

    script = _group(top, "script", "scripts")
    p = _cmd(script, "add", "script.add", cmd_script_add, "register a script (or a new version)")
    p.add_argument("file")
    p.add_argument("--group")
    p.add_argument("--name", help="script name (default: the file name without .py)")
    p.add_argument("--no-default", action="store_true", help="do not make it the default")
    _cmd(script, "list", "script.list", cmd_script_list, "list scripts")
    p = _cmd(script, "show", "script.show", cmd_script_show, "show a script and its versions")
    p.add_argument("slug")

    job = _group(top, "job", "jobs")
    p = _cmd(job, "list", "job.list", cmd_job_list, "list jobs, newest first")
    p.add_argument("--state")
    p.add_argument("--user")
    p.add_argument("--limit", type=int, default=50)
    p = _cmd(job, "show", "job.show", cmd_job_show, "show a job")
    p.add_argument("id")
    p = _cmd(job, "cancel", "job.cancel", cmd_job_cancel, "cancel a job (kills its processes)")
    p.add_argument("id")
    p = _cmd(job, "logs", "job.logs", cmd_job_logs, "print a job's stdout (or --stderr)")
    p.add_argument("id")
    p.add_argument("--stderr", action="store_true")
    p = _cmd(job, "key", "job.key", cmd_job_key, "print a job's job_key (admins)")
    p.add_argument("id")

    node = _group(top, "node", "nodes (the daemons sharing the store)")
    _cmd(node, "list", "node.list", cmd_node_list, "list nodes: state, resources free/total")
    p = _cmd(node, "show", "node.show", cmd_node_show, "show a node")
    p.add_argument("name")
    p = _cmd(node, "drain", "node.drain", cmd_node_drain, "drain a node: it claims no new jobs")
    p.add_argument("name")
    p = _cmd(node, "undrain", "node.undrain", cmd_node_undrain, "let a drained node claim again")
    p.add_argument("name")
