"""Read the argparse parser of a script, in a process of its own.

Run as ``python -I probe.py SCRIPT RESULT [LIMIT=VALUE ...]``. The probe applies
the resource limits (``as``, ``cpu``, ``nofile``, ``fsize``, ``core``; bytes,
seconds or counts), patches ``argparse.ArgumentParser``'s parse methods to raise
as soon as one is called, runs SCRIPT as ``__main__`` and writes what it learned
as JSON to the file RESULT (not to stdout: scripts print). The result is either
``{"ok": true, "description": ..., "prog": ..., "version": ..., "params": [...],
"mutually_exclusive": [...]}`` or ``{"ok": false, "error": "<message>"}``.

This file is a standalone script. It uses the standard library only, never
imports jobferry, and keeps to Python 3.8 syntax at run time (annotations are
never evaluated), because it runs under whatever
interpreter the scripts use. The script's top-level code runs here, in this
throwaway process, and never in the daemon.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import runpy
import sys
import traceback
from typing import Any

_PARSE_METHODS = (
    "parse_args",
    "parse_known_args",
    "parse_intermixed_args",
    "parse_known_intermixed_args",
)
_LIMITS = {
    "as": "RLIMIT_AS",
    "cpu": "RLIMIT_CPU",
    "nofile": "RLIMIT_NOFILE",
    "fsize": "RLIMIT_FSIZE",
    "core": "RLIMIT_CORE",
}
_NO_PARSER = "no argparse parser found: the script did not call parse_args()"
_MAX_CHOICES = 1000
_MAX_TEXT = 2000

#: The first parser whose parse method was called (kept even if the script
#: swallows the exception that carries it).
_found: list[argparse.ArgumentParser] = []


class _ParserFound(BaseException):
    """Raised by the patched parse methods; carries the parser."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__("parser found")
        self.parser = parser


class _Refused(Exception):
    """The parser uses a feature jobferry does not support."""


def _safe_str(value: object, limit: int = _MAX_TEXT) -> str:
    """Return ``str(value)``, shortened, even if ``__str__`` misbehaves."""
    try:
        text = str(value)
    except Exception:
        text = f"<unprintable {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _exc_text(exc: BaseException) -> str:
    """Return ``"ExcType: message"`` for an exception."""
    message = _safe_str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _apply_limits(specs: list[str]) -> None:
    """Lower this process's resource limits as given by ``NAME=VALUE`` strings."""
    import resource

    for spec in specs:
        name, _, raw = spec.partition("=")
        res = getattr(resource, _LIMITS[name])
        soft = hard = int(raw)
        if name == "cpu":
            hard = soft + 1  # SIGXCPU at the soft limit, SIGKILL one second later
        _, cur_hard = resource.getrlimit(res)
        if cur_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, cur_hard), min(hard, cur_hard)
        resource.setrlimit(res, (soft, hard))


def _patch() -> None:
    """Make every parse method of ``ArgumentParser`` raise ``_ParserFound``."""

    def found(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        if not _found:
            _found.append(self)
        raise _ParserFound(self)

    for name in _PARSE_METHODS:
        if hasattr(argparse.ArgumentParser, name):
            setattr(argparse.ArgumentParser, name, found)


def _is_stream(value: object) -> bool:
    """Tell whether ``value`` looks like an open file (e.g. ``sys.stdout``)."""
    return hasattr(value, "read") or hasattr(value, "write")


def _is_std_output(value: object) -> bool:
    """Tell whether ``value`` is the process's stdout or stderr."""
    streams = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    if any(value is stream for stream in streams if stream is not None):
        return True
    return _is_stream(value) and getattr(value, "name", None) in ("<stdout>", "<stderr>")


def _jsonable(value: object, depth: int = 0) -> Any:
    """Return ``value`` as plain JSON data; other objects become their ``str()``."""
    if value is None or value is argparse.SUPPRESS:
        return None
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else _safe_str(value)
    if isinstance(value, str):
        return _safe_str(str(value))
    if _is_stream(value):
        return None
    if isinstance(value, (list, tuple)) and depth < 4:
        return [_jsonable(item, depth + 1) for item in list(value)[:_MAX_CHOICES]]
    return _safe_str(value)


def _action_kind(action: argparse.Action) -> str:
    """Map an argparse action to one of jobferry's action names."""
    kinds = (
        (argparse._StoreTrueAction, "store_true"),
        (argparse._StoreFalseAction, "store_false"),
        (argparse._StoreConstAction, "store_const"),
        (getattr(argparse, "_ExtendAction", ()), "extend"),
        (argparse._AppendAction, "append"),
        (argparse._AppendConstAction, "append_const"),
        (argparse._CountAction, "count"),
        (argparse._StoreAction, "store"),
    )
    for cls, kind in kinds:
        if cls and isinstance(action, cls):
            return kind
    # A custom Action class: it takes values unless it declares nargs=0.
    return "store_const" if action.nargs == 0 else "store"


def _boolean_optional(action: argparse.Action) -> dict[str, Any]:
    """Describe a ``BooleanOptionalAction`` as the one flag that changes its value."""
    options = list(action.option_strings)
    negatives = [o for o in options if o.startswith("--") and "--no-" + o[2:] in options]
    negatives = ["--no-" + o[2:] for o in negatives]
    if action.default:
        return {"action": "store_false", "option_strings": negatives}
    return {"action": "store_true", "option_strings": [o for o in options if o not in negatives]}


def _choices(action: argparse.Action) -> list[Any] | None:
    """Return the action's choices as a list, or None when unset or too many."""
    if action.choices is None:
        return None
    items: list[Any] = []
    try:
        for item in action.choices:
            if len(items) >= _MAX_CHOICES:
                return None
            items.append(_jsonable(item))
    except Exception:
        return None
    return items


def _help(action: argparse.Action, prog: str) -> str | None:
    """Return the help text with ``%(default)s``-style fields expanded, as argparse does."""
    text = action.help
    if text is None or text == argparse.SUPPRESS:
        return None
    try:
        params = dict(vars(action), prog=prog)
        for name in list(params):
            if params[name] is argparse.SUPPRESS:
                del params[name]
        if params.get("choices") is not None:
            choices = _choices(action)
            if choices is None:
                return _safe_str(text)
            params["choices"] = ", ".join(_safe_str(c) for c in choices)
        return _safe_str(text % params)
    except Exception:
        return _safe_str(text)


def _nargs(action: argparse.Action) -> Any:
    """Return nargs as None, "?", "*", "+" or an int."""
    nargs = action.nargs
    if nargs in ("?", "*", "+"):
        return nargs
    if nargs == argparse.REMAINDER:
        return "*"
    if nargs == argparse.PARSER:
        return "+"
    if isinstance(nargs, int) and not isinstance(nargs, bool) and nargs > 0:
        return nargs
    return None


def _param(action: argparse.Action, prog: str, group: str | None) -> dict[str, Any]:
    """Describe one argparse action as a jobferry parameter."""
    kind = _action_kind(action)
    option_strings = list(action.option_strings)
    boolean_optional = getattr(argparse, "BooleanOptionalAction", None)
    if boolean_optional is not None and isinstance(action, boolean_optional):
        described = _boolean_optional(action)
        kind, option_strings = described["action"], described["option_strings"]
    positional = not option_strings
    nargs = _nargs(action) if kind in ("store", "append", "extend") else None
    type_func = action.type
    type_name, file_mode, is_output = None, None, False
    if kind in ("store_true", "store_false"):
        type_ = "bool"
    elif kind == "count":
        type_ = "int"
    elif isinstance(type_func, argparse.FileType):
        type_ = "file"
        file_mode = _safe_str(getattr(type_func, "_mode", "r"))
        is_output = "r" not in file_mode or _is_std_output(action.default)
    elif type_func is int:
        type_ = "int"
    elif type_func is float:
        type_ = "float"
    else:
        type_ = "str"
        if type_func is not None and type_func is not str:
            type_name = _safe_str(getattr(type_func, "__name__", None) or type(type_func).__name__)
    metavar = action.metavar
    if isinstance(metavar, tuple):
        metavar = " ".join(_safe_str(m) for m in metavar)
    return {
        "dest": _safe_str(action.dest),
        "option_strings": option_strings,
        "positional": positional,
        "action": kind,
        "nargs": nargs,
        "type": type_,
        "type_name": type_name,
        "file_mode": file_mode,
        "is_output": is_output,
        "choices": _choices(action),
        "default": _jsonable(action.default),
        "const": _jsonable(action.const),
        "required": nargs not in ("?", "*") if positional else bool(action.required),
        "help": _help(action, prog),
        "metavar": None if metavar is None else _safe_str(metavar),
        "group": group,
    }


def _version(parser: argparse.ArgumentParser) -> str | None:
    """Find the version from a ``version`` action or the parser's ``version`` attribute."""
    text = None
    for action in parser._actions:
        if isinstance(action, argparse._VersionAction):
            text = getattr(action, "version", None)
            if text is None:
                text = getattr(parser, "version", None)
            break
    else:
        text = getattr(parser, "version", None)
    if text is None:
        return None
    text = _safe_str(text).strip()
    if text.startswith("%(prog)s"):
        text = text[len("%(prog)s") :].strip()
    return text.replace("%(prog)s", _safe_str(parser.prog)).replace("%%", "%") or None


def _skip(action: argparse.Action) -> bool:
    """Tell whether an action is not a parameter (help and version)."""
    return isinstance(action, (argparse._HelpAction, argparse._VersionAction))


def _describe(parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Serialise the parser's description, version and parameters."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            raise _Refused("subparsers are not supported")
    groups: dict[int, str | None] = {}
    for group in parser._action_groups:
        if group is parser._positionals or group is parser._optionals:
            continue
        for action in group._group_actions:
            groups.setdefault(id(action), None if group.title is None else _safe_str(group.title))
    prog = _safe_str(parser.prog)
    params = [
        _param(action, prog, groups.get(id(action)))
        for action in parser._actions
        if not _skip(action)
    ]
    exclusive = [
        {
            "required": bool(group.required),
            "dests": [_safe_str(a.dest) for a in group._group_actions if not _skip(a)],
        }
        for group in parser._mutually_exclusive_groups
    ]
    description = parser.description
    return {
        "ok": True,
        "description": None if description is None else _safe_str(description, 20000),
        "prog": prog,
        "version": _version(parser),
        "params": params,
        "mutually_exclusive": exclusive,
    }


def _run(script: str) -> dict[str, Any]:
    """Run the script until it calls a parse method and describe that parser."""
    if not os.path.isfile(script):
        return {"ok": False, "error": f"the script does not exist: {script}"}
    sys.argv = [script]
    sys.path.insert(0, os.path.dirname(script))
    _patch()
    try:
        runpy.run_path(script, run_name="__main__")
    except _ParserFound:
        pass
    except SystemExit as exc:
        if not _found:
            code = _safe_str(repr(exc.code), 200)
            error = f"the script exited before parse_args(): exit({code})"
            return {"ok": False, "error": error}
    except BaseException as exc:
        if not _found:
            _print_traceback()
            error = f"the script crashed before parse_args(): {_exc_text(exc)}"
            return {"ok": False, "error": error}
    if not _found:
        return {"ok": False, "error": _NO_PARSER}
    try:
        return _describe(_found[0])
    except _Refused as exc:
        return {"ok": False, "error": str(exc)}
    except Exception as exc:
        return {"ok": False, "error": f"could not read the parser: {_exc_text(exc)}"}


def _print_traceback() -> None:
    """Print the current exception's traceback to the real stderr, if still open."""
    try:
        traceback.print_exc(file=sys.__stderr__)
    except Exception:
        pass


def _write(path: str, result: dict[str, Any]) -> None:
    """Write the result as JSON to ``path``."""
    data = json.dumps(result, ensure_ascii=True, allow_nan=False)
    with open(path, "w", encoding="ascii") as out:
        out.write(data)


def main(argv: list[str]) -> None:
    """Probe ``argv[1]``, write the result to ``argv[2]`` and end the process."""
    if len(argv) < 3:
        sys.stderr.write("usage: probe.py SCRIPT RESULT [LIMIT=VALUE ...]\n")
        os._exit(2)
    script, result_path = os.path.abspath(argv[1]), os.path.abspath(argv[2])
    try:
        _apply_limits(argv[3:])
    except Exception as exc:
        result = {"ok": False, "error": f"could not apply resource limits: {_exc_text(exc)}"}
    else:
        result = _run(script)
    status = 0
    try:
        _write(result_path, result)
    except Exception:
        _print_traceback()
        status = 3
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()  # type: ignore[union-attr]
        except Exception:
            pass
    # Skip atexit handlers and never wait for threads the script started.
    os._exit(status)


if __name__ == "__main__":
    main(sys.argv)
