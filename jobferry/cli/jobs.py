"""``jobferry job list|show|cancel|logs|key|purge``: any user's jobs, acting as the first
admin, through ``services.jobs`` (``purge``: ``services.retention``). A job's logs are
read from its directory."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from jobferry.cli.common import add_command, group, services_of, show
from jobferry.services.states import parse_state  # every face's names (README's table)

JOB_COLUMNS = ["id", "user", "name", "state", "exit_code", "destination", "node", "created_at"]


def cmd_job_list(args: argparse.Namespace) -> int:
    states = [parse_state(s) for s in args.state.split(",")] if args.state else []
    services = services_of(args)
    jobs = services.jobs.list_jobs(
        services.admin.acting_admin(),
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
    show(args, rows, JOB_COLUMNS)
    return 0


def cmd_job_show(args: argparse.Namespace) -> int:
    services = services_of(args)
    view = services.jobs.get(services.admin.acting_admin(), args.id)
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
        "files_expired_at": job.files_expired_at,
        "files": [
            {"id": f.id, "kind": f.kind, "name": f.name, "size": f.size, "sha256": f.sha256}
            for f in view.files
        ],
    }
    show(args, data)
    return 0


def cmd_job_cancel(args: argparse.Namespace) -> int:
    services = services_of(args)
    state = services.jobs.cancel(services.admin.acting_admin(), args.id)
    show(args, {"id": args.id, "state": state})
    return 0


def cmd_job_logs(args: argparse.Namespace) -> int:
    services = services_of(args)
    view = services.jobs.get(services.admin.acting_admin(), args.id)
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
    services = services_of(args)
    key = services.jobs.job_key(services.admin.acting_admin(), args.id)
    print(json.dumps({"id": args.id, "job_key": key}) if args.json else key)
    return 0


#: Job ids a purge prints at most (``--json`` prints them all).
PURGE_SHOWN = 10


def cmd_job_purge(args: argparse.Namespace) -> int:
    state = parse_state(args.state) if args.state else None
    services = services_of(args)
    done = services.retention.purge(
        args.older_than, rows=args.rows, state=state, dry_run=args.dry_run
    )
    if args.json:
        print(json.dumps(done.as_dict(), indent=2))
        return 0
    what = "jobs (rows and files)" if args.rows else "the files of"
    verb = "would remove" if args.dry_run else "removed"
    ids = done.job_ids
    more = f" (+{len(ids) - PURGE_SHOWN} more)" if len(ids) > PURGE_SHOWN else ""
    print(
        f"{verb} {what} {len(ids)} job(s) that ended before "
        f"{done.cutoff.isoformat(timespec='seconds')}; "
        f"{'would free' if args.dry_run else 'freed'} {done.bytes_freed} bytes"
    )
    if ids:
        print(" ".join(ids[:PURGE_SHOWN]) + more)
    return 0


def register(top: Any) -> None:
    job = group(top, "job", "jobs")
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
    p = add_command(
        job,
        "purge",
        "job.purge",
        cmd_job_purge,
        "delete the files (or, with --rows, the rows too) of jobs that ended DAYS ago",
    )
    p.add_argument("--older-than", type=float, required=True, metavar="DAYS")
    p.add_argument("--state", help="only jobs in this terminal state (ok, error, deleted)")
    p.add_argument(
        "--rows", action="store_true", help="delete the jobs' rows too (they then answer 404)"
    )
    p.add_argument("--dry-run", action="store_true", help="print what would go; remove nothing")
