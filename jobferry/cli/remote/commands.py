"""The ``jobferry remote`` commands: each asks a daemon over HTTP and prints the answer.

Routes used (all in the daemon's OpenAPI document): the Wooey face for submit
(``/api/scripts/v1/<slug>/submit/``), status (with the ``?wait=`` long poll),
details, logs (the details' stdout/stderr) and assets; the Galaxy face for what
the Wooey face has no route for: the script list any user may read
(``GET /api/tools``; Wooey's list is for admins), the job list with a state
filter (``GET /api/jobs?state=``) and cancel (``DELETE /api/jobs/<id>``). Job
ids are the same on both faces.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from jobferry.cli.remote import settings
from jobferry.cli.remote.client import TIMEOUT_S, Remote, RemoteError, segment
from jobferry.cli.remote.progress import meter
from jobferry.cli.remote.transfer import Multipart, download, upload_form
from jobferry.errors import ConfigError

#: Longest ``?wait=`` asked for at a time, seconds (the daemon allows up to 60).
LONG_POLL_S = 30.0
#: How long ``logs --follow`` lets the daemon hold a status request between reads.
FOLLOW_POLL_S = 1.0
#: Exit status of ``wait`` and ``submit --wait`` when the job ended without completing.
JOB_FAILED_EXIT = 3
#: Wooey's status names (any case) → the stored state ``GET /api/jobs?state=`` filters on.
WOOEY_STATES = {
    "submitted": "new",
    "completed": "ok",
    "failure": "error",
    "revoked": "deleted",
}
SCRIPT_COLUMNS = ["slug", "name", "version", "group", "description"]
JOB_COLUMNS = ["id", "script", "state", "exit_code", "create_time", "update_time"]


def remote_of(args: argparse.Namespace) -> Remote:
    target = settings.resolve(getattr(args, "url", None), getattr(args, "key_file", None))
    return Remote(target.url, target.key)


def wants_json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


def emit(args: argparse.Namespace, data: Any, columns: list[str] | None = None) -> None:
    """*data* as JSON (``--json``), a table (*columns*) or ``key  value`` lines."""
    if wants_json(args):
        print(json.dumps(data, indent=2))
    elif columns is not None:
        rows = [["" if r.get(c) is None else str(r.get(c)) for c in columns] for r in data]
        widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
        print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
        for row in rows:
            print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    else:
        width = max((len(k) for k in data), default=0)
        for key, value in data.items():
            shown = "" if value is None else value
            if isinstance(value, bool):
                shown = "yes" if value else "no"
            print(f"{key:<{width}}  {shown}".rstrip())
    sys.stdout.flush()


def is_quiet(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "quiet", False))


def job_path(job_id: str, what: str) -> str:
    return f"/api/jobs/v1/{segment(job_id)}/{what}/"


# --- commands -----------------------------------------------------------------------------


def cmd_scripts(args: argparse.Namespace) -> int:
    tools = remote_of(args).call("GET", "/api/tools")
    rows = [
        {
            "slug": t.get("id"),
            "name": t.get("name"),
            "version": t.get("version"),
            "group": t.get("panel_section_name"),
            "description": t.get("description"),
        }
        for t in tools
    ]
    emit(args, rows, SCRIPT_COLUMNS)
    return 0


def _files(pairs: list[str]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name or not raw:
            raise ConfigError(f"--file {pair!r}: expected NAME=PATH")
        path = Path(raw).expanduser()
        if not path.is_file():
            raise ConfigError(f"--file {name}: {raw} is not a readable file")
        if name in files:
            raise ConfigError(f"--file {name} is given twice")
        files[name] = path
    return files


def cmd_submit(args: argparse.Namespace) -> int:
    remote = remote_of(args)
    files = _files(args.file or [])
    fields = {"job_name": args.name or args.script, "command": shlex.join(args.args)}
    if args.description:
        fields["job_description"] = args.description
    path = f"/api/scripts/v1/{segment(args.script)}/submit/"
    answer = upload_form(remote, path, Multipart(fields, files), meter(is_quiet(args)))
    job_id = str(answer["job_id"])
    if not args.wait:
        if wants_json(args):
            emit(args, {"job_id": job_id})
        else:
            print(job_id, flush=True)
        return 0
    if not wants_json(args) and not is_quiet(args):
        print(f"submitted job {job_id}; waiting for it to end", file=sys.stderr, flush=True)
    return _show_end(args, wait_for_end(remote, job_id, args.timeout))


def cmd_status(args: argparse.Namespace) -> int:
    status = remote_of(args).call("GET", job_path(args.id, "status"))
    emit(args, {"job_id": args.id, **status})
    return 0


def wait_for_end(remote: Remote, job_id: str, timeout_s: float | None) -> dict[str, Any]:
    """The job's details once it is complete: long polls of ``status?wait=``."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        left = LONG_POLL_S if deadline is None else max(0.0, deadline - time.monotonic())
        wait = min(LONG_POLL_S, left)
        status = remote.call(
            "GET",
            job_path(job_id, "status"),
            query={"wait": f"{wait:.1f}"},
            timeout_s=wait + TIMEOUT_S,
        )
        if status.get("is_complete"):
            break
        if deadline is not None and time.monotonic() >= deadline:
            raise RemoteError(f"job {job_id} is still {status.get('status')} after {timeout_s:g}s")
    return dict(remote.call("GET", job_path(job_id, "details")))


def _show_end(args: argparse.Namespace, details: dict[str, Any]) -> int:
    if wants_json(args):
        emit(args, details)
    else:
        shown = {
            k: details.get(k)
            for k in ("job_id", "job_name", "status", "exit_code", "reason", "destination", "node")
        }
        shown["assets"] = ", ".join(
            f"{a['name']} ({a.get('size')} bytes)" for a in details.get("assets") or []
        )
        emit(args, shown)
    return 0 if details.get("status") == "completed" else JOB_FAILED_EXIT


def cmd_wait(args: argparse.Namespace) -> int:
    return _show_end(args, wait_for_end(remote_of(args), args.id, args.timeout))


def cmd_logs(args: argparse.Namespace) -> int:
    remote = remote_of(args)
    stream = "stderr" if args.stderr else "stdout"
    if not args.follow:
        details = remote.call("GET", job_path(args.id, "details"))
        if wants_json(args):
            keys = ("job_id", "status", "is_complete", "stdout", "stderr")
            emit(args, {k: details.get(k) for k in keys})
        else:
            sys.stdout.write(details.get(stream) or "")
            sys.stdout.flush()
        return 0
    follow(remote, args.id, stream, as_json=wants_json(args))
    return 0


def follow(remote: Remote, job_id: str, stream: str, *, as_json: bool) -> None:
    """Print a job's log as it grows, until the job is complete.

    The details carry the last MiB of each log; what is new is what follows the
    end of the previous answer. A log growing by more than that between two reads
    shows a ``[... skipped ...]`` line where output was not seen.
    """
    last = ""
    while True:
        details = remote.call("GET", job_path(job_id, "details"))
        text = details.get(stream) or ""
        new = _new_text(last, text)
        if new:
            if as_json:
                print(json.dumps({"job_id": job_id, "stream": stream, "text": new}), flush=True)
            else:
                sys.stdout.write(new)
                sys.stdout.flush()
        last = text
        if details.get("is_complete"):
            return
        remote.call(
            "GET",
            job_path(job_id, "status"),
            query={"wait": f"{FOLLOW_POLL_S:g}"},
            timeout_s=FOLLOW_POLL_S + TIMEOUT_S,
        )


def _new_text(last: str, text: str) -> str:
    if text.startswith(last):
        return text[len(last) :]
    anchor = last[-4096:]
    at = text.rfind(anchor) if anchor else -1
    if at >= 0:
        return text[at + len(anchor) :]
    return "[... jobferry: log output skipped while following ...]\n" + text


def _asset_target(root: Path, name: str) -> Path:
    parts = PurePosixPath(name).parts
    if not parts or name.startswith("/") or any(p in ("..", ".") for p in parts):
        raise RemoteError(f"the daemon named an asset {name[:200]!r}, which is no relative path")
    return root.joinpath(*parts)


def cmd_download(args: argparse.Namespace) -> int:
    remote = remote_of(args)
    details = remote.call("GET", job_path(args.id, "details"))
    if not details.get("is_complete"):
        raise RemoteError(
            f"job {args.id} is {details.get('status')}, not complete: its outputs are listed "
            f"once it ends (jobferry remote wait {args.id})"
        )
    assets = list(details.get("assets") or [])
    if args.asset:
        known = {a["name"] for a in assets}
        missing = [n for n in args.asset if n not in known]
        if missing:
            raise RemoteError(f"job {args.id} has no output named {', '.join(missing)[:300]}")
        assets = [a for a in assets if a["name"] in args.asset]
    root = Path(args.to).expanduser()
    bar = meter(is_quiet(args))
    fetched = []
    for asset in assets:
        file_id = urlsplit(str(asset["url"])).path.rstrip("/").rsplit("/", 1)[-1]
        path = job_path(args.id, "assets") + file_id + "/"
        target = _asset_target(root, str(asset["name"]))
        done = download(remote, path, asset, target, bar, rate=args.limit_rate)
        fetched.append(done.as_dict())
        if not wants_json(args):
            resumed = f", resumed at byte {done.resumed_from}" if done.resumed_from else ""
            print(f"{done.path}  {done.size} bytes  sha256 ok{resumed}", flush=True)
    if wants_json(args):
        emit(args, {"job_id": args.id, "files": fetched})
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    stopped = remote_of(args).call("DELETE", f"/api/jobs/{segment(args.id)}")
    if wants_json(args):
        emit(args, {"job_id": args.id, "cancelled": bool(stopped)})
    elif stopped:
        print(f"job {args.id}: cancelled", flush=True)
    else:
        print(f"job {args.id}: already finished, nothing to cancel", flush=True)
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    states = []
    for name in (args.state or "").split(","):
        if name.strip():
            states.append(WOOEY_STATES.get(name.strip().lower(), name.strip().lower()))
    query: dict[str, Any] = {"limit": args.limit}
    if states:
        query["state"] = states
    jobs = remote_of(args).call("GET", "/api/jobs", query=query)
    rows = [
        {
            "id": j.get("id"),
            "script": j.get("tool_id"),
            "state": j.get("state"),
            "exit_code": j.get("exit_code"),
            "create_time": j.get("create_time"),
            "update_time": j.get("update_time"),
        }
        for j in jobs
    ]
    emit(args, rows, JOB_COLUMNS)
    return 0
