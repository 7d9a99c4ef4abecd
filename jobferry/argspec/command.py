"""Check a submitted ``command`` string against a script's parameters and build its argv.

The string is split like ``shlex.split`` (``tokens.split_command``, linear and
capped) and parsed by a throwaway argparse parser rebuilt from the
``ScriptSpec``: every option string, real types, choices, nargs, actions,
required parameters and mutually exclusive groups. Wooey clients may write
``--flag true``/``--flag false``; both are understood. The argv handed to the
script is rebuilt from the parsed values, never copied from the raw tokens, and
no shell is involved anywhere. What ``execve`` or ``open`` would refuse (an
argument or a file name too long, an argv too large) is refused here, naming
the parameter. Bounding the *time* this takes is ``bounded.CommandChecker``'s job.
"""

from __future__ import annotations

import argparse
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from jobferry.argspec.introspect import ParamSpec, ScriptSpec
from jobferry.argspec.tokens import MAX_ARG_STRLEN, arg_cost, path_problem, split_command
from jobferry.errors import IntrospectionError, ValidationError

_TRUE_WORDS = frozenset({"true", "1", "yes"})
_FALSE_WORDS = frozenset({"false", "0", "no"})
_WHOLE_NUMBER = "Enter a whole number."
_NUMBER = "Enter a number."
_FILE_NOT_FOUND = "Referenced file could not be found."
_INVALID = "The command is invalid."
_BAD_OUTPUT = "Output file names must be relative paths inside the job directory."
_ARG_TOO_LONG = f"This value is too long: one argument may have at most {MAX_ARG_STRLEN - 1} bytes."


@dataclass(frozen=True)
class BuiltCommand:
    """A validated command.

    Attributes:
        args: The arguments to put after ``[interpreter, script_path]``.
        values: The given parameters as JSON data, keyed by dest (file inputs keep
            the upload field name the user gave; flags their stored value).
        input_files: Dest of each file-input parameter given -> absolute paths of
            the uploads it uses, in order.
        output_files: Output file names (relative to the job directory) the
            script was told to write.
    """

    args: tuple[str, ...]
    values: dict[str, Any]
    input_files: dict[str, list[str]]
    output_files: tuple[str, ...]


class _Bare:
    """Marks an ``nargs='?'`` option given without a value."""

    def __repr__(self) -> str:
        return "<bare>"


_BARE = _Bare()


class _ParseError(Exception):
    """Raised by the throwaway parser instead of exiting."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises instead of printing and exiting."""

    def error(self, message: str) -> NoReturn:
        raise _ParseError(message)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise _ParseError(message or f"exit({status})")


class _ValueErrors:
    """Collects Wooey-style value errors while argparse converts values."""

    def __init__(self) -> None:
        self.errors: dict[str, list[str]] = {}

    def add(self, param: ParamSpec, message: str) -> None:
        messages = self.errors.setdefault(param.display_name, [])
        if message not in messages:
            messages.append(message)

    def converter(self, param: ParamSpec) -> Callable[[str], Any]:
        """Return the ``type=`` function for ``param``: convert, then check choices."""

        def convert(raw: str) -> Any:
            if raw is argparse.SUPPRESS:  # an absent '?' positional: leave it absent
                return raw
            value: Any = raw
            try:
                if param.type == "int":
                    value = int(raw)
                elif param.type == "float":
                    value = float(raw)
                    if not math.isfinite(value):
                        raise ValueError(raw)
            except ValueError:
                self.add(param, _WHOLE_NUMBER if param.type == "int" else _NUMBER)
                return raw
            if not _in_choices(param, value):
                message = f"Select a valid choice. {raw} is not one of the available choices."
                self.add(param, message)
            return value

        return convert


def _in_choices(param: ParamSpec, value: Any) -> bool:
    """Tell whether ``value`` is allowed (custom ``type=`` callables are left to the script)."""
    if param.choices is None or param.type_name is not None or param.type == "file":
        return True
    if param.type in ("int", "float"):
        return any(value == c for c in param.choices if not isinstance(c, (str, bool)))
    return value in param.choices


def _internal_dest(index: int) -> str:
    return f"p{index}"


def _make_parser(spec: ScriptSpec, checks: _ValueErrors) -> _Parser:
    """Rebuild an argparse parser from the spec; argument ``i`` stores into ``p<i>``."""
    firsts = {option[0] for param in spec.params for option in param.option_strings}
    parser = _Parser(
        prog=spec.prog or "script",
        add_help=False,
        allow_abbrev=False,
        exit_on_error=False,
        prefix_chars="".join(sorted(firsts | {"-"})),
    )
    groups = [
        parser.add_mutually_exclusive_group(required=g.required) for g in spec.mutually_exclusive
    ]
    owner: dict[str, argparse._MutuallyExclusiveGroup] = {}
    for group, exclusive in zip(groups, spec.mutually_exclusive, strict=True):
        for dest in exclusive.dests:
            owner.setdefault(dest, group)
    for index, param in enumerate(spec.params):
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS}
        if param.takes_values:
            kwargs.update(action=param.action, nargs=param.nargs, type=checks.converter(param))
            if param.nargs == "?" and not param.positional:
                kwargs["const"] = _BARE
        elif param.action in ("store_true", "store_false", "store_const"):
            kwargs.update(action="store_const", const=_flag_value(param))
        else:  # append_const, count
            kwargs["action"] = param.action
            if param.action == "append_const":
                kwargs["const"] = param.const
        container: argparse._ActionsContainer = owner.get(param.dest, parser)
        try:
            if param.positional:
                container.add_argument(_internal_dest(index), metavar=param.dest, **kwargs)
            else:
                kwargs["required"] = param.required
                container.add_argument(*param.option_strings, dest=_internal_dest(index), **kwargs)
        except (ValueError, TypeError, argparse.ArgumentError) as exc:
            raise IntrospectionError(
                f"the stored parameters of this script are inconsistent: {exc}"
            ) from exc
    return parser


def _flag_value(param: ParamSpec) -> Any:
    """The value a ``store_true``/``store_false``/``store_const`` option stores."""
    return {"store_true": True, "store_false": False}.get(param.action, param.const)


def _expand_flag_words(spec: ScriptSpec, tokens: list[str]) -> list[str]:
    """Accept Wooey's ``--flag true``/``--flag false`` (also ``--flag=true``).

    A true word keeps the flag, a false word drops it; a bare flag stays a flag.
    Tokens after ``--`` are left alone.
    """
    flags = {option for param in spec.params if param.is_flag for option in param.option_strings}
    words = _TRUE_WORDS | _FALSE_WORDS
    out: list[str] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        index += 1
        if token == "--":
            out.extend(tokens[index - 1 :])
            break
        option, word = token, ""
        if token in flags:
            if index < len(tokens) and tokens[index].lower() in words:
                word = tokens[index].lower()
                index += 1
        else:
            name, equals, value = token.partition("=")
            if equals and name in flags and value.lower() in words:
                option, word = name, value.lower()
        if word not in _FALSE_WORDS:
            out.append(option)
    return out


_parsers = threading.local()


def _parser_for(spec: ScriptSpec) -> tuple[_Parser, _ValueErrors]:
    """The rebuilt parser of *spec*, made once per spec and thread.

    Building an argparse parser costs more than parsing with it (argparse looks
    up its translations on disk for every argument), and submissions reuse the
    same spec object. The cache is per thread because ``checks`` collects the
    errors of one parse at a time; it holds the spec itself, so an id reused by
    a new object after garbage collection cannot match.
    """
    cache: dict[int, tuple[ScriptSpec, _Parser, _ValueErrors]] | None = getattr(
        _parsers, "cache", None
    )
    if cache is None:
        cache = _parsers.cache = {}
    entry = cache.get(id(spec))
    if entry is not None and entry[0] is spec:
        return entry[1], entry[2]
    checks = _ValueErrors()
    parser = _make_parser(spec, checks)
    if len(cache) >= 64:
        cache.clear()
    cache[id(spec)] = (spec, parser, checks)
    return parser, checks


def _parse(spec: ScriptSpec, tokens: list[str]) -> tuple[dict[int, Any], dict[str, list[str]]]:
    """Parse the tokens; return the given values by parameter index and the value errors."""
    parser, checks = _parser_for(spec)
    checks.errors = {}
    try:
        namespace = parser.parse_args(tokens)
    except (_ParseError, argparse.ArgumentError) as exc:
        raise ValidationError(_INVALID, errors={"command": str(exc)}) from exc
    given = {
        index: getattr(namespace, _internal_dest(index))
        for index in range(len(spec.params))
        if hasattr(namespace, _internal_dest(index))
    }
    return given, checks.errors


def _map_leaves(value: Any, func: Callable[[Any], Any]) -> Any:
    """Apply ``func`` to every value inside nested lists (``_BARE`` stays as is)."""
    if isinstance(value, list):
        return [_map_leaves(item, func) for item in value]
    return value if value is _BARE else func(value)


def _leaves(value: Any) -> list[Any]:
    """Return every value inside nested lists, except ``_BARE``."""
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    return [] if value is _BARE else [value]


def preferred_option(param: ParamSpec) -> str:
    """The first long option string (``--name``), else the first one."""
    for option in param.option_strings:
        if len(option) > 2 and option[1] == option[0]:
            return option
    for option in param.option_strings:
        if len(option) > 2:
            return option
    return param.option_strings[0]


def _occurrence(option: str, value: Any, prefixes: str) -> list[str]:
    """Render one use of an option with its value(s)."""
    if value is _BARE:
        return [option]
    if isinstance(value, list):
        return [option, *(str(item) for item in value)]
    text = str(value)
    if len(option) > 2:
        return [f"{option}={text}"]  # safe for values starting with '-'
    if text[:1] and text[0] in prefixes:
        return [option + text]  # -o-value: attached, so it is not read as an option
    return [option, text]


def _chunks(param: ParamSpec, items: list[Any]) -> list[Any]:
    """Split an ``extend`` list into the occurrences that recreate it."""
    if param.nargs in ("*", "+"):
        return [items]
    if isinstance(param.nargs, int):
        return [items[i : i + param.nargs] for i in range(0, len(items), param.nargs)]
    return items  # one value per occurrence


def _render_param(param: ParamSpec, value: Any, prefixes: str) -> list[str]:
    """The argv strings of one given parameter (a positional: just its values)."""
    if param.positional:
        return [str(leaf) for leaf in _leaves(value)]
    option = preferred_option(param)
    if param.action in ("store_true", "store_false", "store_const"):
        return [option]
    if param.action == "append_const":
        return [option] * len(value)
    if param.action == "count":
        return [option] * value
    args: list[str] = []
    if param.action == "append":
        for item in value:
            args.extend(_occurrence(option, item, prefixes))
    elif param.action == "extend":
        for item in _chunks(param, value):
            args.extend(_occurrence(option, item, prefixes))
    else:
        args.extend(_occurrence(option, value, prefixes))
    return args


def _render_by_param(spec: ScriptSpec, given: Mapping[int, Any]) -> dict[int, list[str]]:
    prefixes = "".join({option[0] for param in spec.params for option in param.option_strings})
    return {
        index: _render_param(param, given[index], prefixes)
        for index, param in enumerate(spec.params)
        if index in given
    }


def _join(spec: ScriptSpec, rendered: Mapping[int, list[str]]) -> list[str]:
    """The argv: optionals in spec order, then ``--`` and the positionals."""
    args = [a for i, part in rendered.items() if not spec.params[i].positional for a in part]
    positionals = [a for i, part in rendered.items() if spec.params[i].positional for a in part]
    return args + ["--", *positionals] if positionals else args


def _render(spec: ScriptSpec, given: Mapping[int, Any]) -> list[str]:
    """Rebuild the argv: optionals in spec order, then ``--`` and the positionals."""
    return _join(spec, _render_by_param(spec, given))


def _exec_problems(
    spec: ScriptSpec, rendered: Mapping[int, list[str]], arg_budget: int | None
) -> dict[str, list[str]]:
    """What ``execve`` would refuse in the rendered argv, by parameter display name."""
    problems: dict[str, list[str]] = {}
    costs: dict[int, int] = {}
    for index, args in rendered.items():
        costs[index] = sum(arg_cost(arg) for arg in args)
        if any(len(arg.encode("utf-8", "surrogateescape")) >= MAX_ARG_STRLEN for arg in args):
            problems.setdefault(spec.params[index].display_name, []).append(_ARG_TOO_LONG)
    total = sum(costs.values()) + arg_cost("--")
    if not problems and arg_budget is not None and costs and total > arg_budget:
        largest = max(costs, key=costs.__getitem__)
        problems[spec.params[largest].display_name] = [
            f"The arguments are too long together ({total} bytes; this system allows "
            f"{max(arg_budget, 0)} for a script's arguments). This one is the largest."
        ]
    return problems


def _output_name_ok(name: str) -> bool:
    """Tell whether an output file name stays inside the job directory."""
    parts = name.split("/")
    return bool(name) and not name.startswith("/") and ".." not in parts and "\0" not in name


def _json_value(param: ParamSpec, value: Any) -> Any:
    """Return a parsed value as JSON data (an option given bare stands for its const)."""
    if isinstance(value, list):
        return [_json_value(param, item) for item in value]
    return param.const if value is _BARE else value


def build_command(
    spec: ScriptSpec,
    command: str,
    uploads: Mapping[str, str],
    *,
    max_tokens: int | None = None,
    arg_budget: int | None = None,
) -> BuiltCommand:
    """Validate a Wooey-style ``command`` string and build the script's arguments.

    Args:
        spec: The script's parameters.
        command: The submitted command line (shell-like quoting, no shell).
        uploads: Multipart field name -> absolute path of the uploaded file.
        max_tokens: Most tokens the command may have (None: no limit).
        arg_budget: Bytes the script's arguments may take in the kernel's argv
            area (``tokens.arg_budget``; None: not checked).

    Returns:
        The arguments, the parsed values and the files they name.

    Raises:
        ValidationError: ``errors`` maps ``"command"`` to a message string for
            syntax errors and too many tokens, or a parameter's display name to a
            list of messages for bad values, file references and values the OS
            would refuse (too long).
        IntrospectionError: the stored spec cannot be turned into a parser.
    """
    if "\0" in command:
        raise ValidationError(
            _INVALID, errors={"command": "The command must not contain NUL bytes."}
        )
    tokens = _expand_flag_words(spec, split_command(command, max_tokens))
    given, errors = _parse(spec, tokens)

    def fail(param: ParamSpec, message: str) -> None:
        messages = errors.setdefault(param.display_name, [])
        if message not in messages:
            messages.append(message)

    input_files: dict[str, list[str]] = {}
    output_files: list[str] = []
    for index, value in given.items():
        param = spec.params[index]
        for leaf in _leaves(value) if param.type == "file" else []:
            if param.is_input_file and leaf in uploads:
                input_files.setdefault(param.dest, []).append(uploads[leaf])
            elif param.is_input_file:
                fail(param, _FILE_NOT_FOUND)
            elif leaf != "-" and not _output_name_ok(leaf):
                fail(param, _BAD_OUTPUT)
            elif leaf != "-" and (problem := path_problem(leaf)) is not None:
                fail(param, problem)
            elif leaf != "-" and leaf not in output_files:
                output_files.append(leaf)
    if errors:
        raise ValidationError(_INVALID, errors=errors)
    # The argv is rendered from the parsed values; parsing it again must give them back.
    # When it is the very tokens just parsed (an empty or already canonical command),
    # parsing them again would give the same values: that second parse is skipped.
    argv = _render(spec, given)
    if argv != tokens and _parse(spec, argv)[0] != given:
        raise ValidationError(
            _INVALID, errors={"command": "ambiguous arguments: put positional arguments after --"}
        )
    final = {
        index: _map_leaves(value, uploads.__getitem__)
        if spec.params[index].is_input_file
        else value
        for index, value in given.items()
    }
    rendered = _render_by_param(spec, final)
    for name, messages in _exec_problems(spec, rendered, arg_budget).items():
        errors.setdefault(name, []).extend(messages)
    if errors:
        raise ValidationError(_INVALID, errors=errors)
    values: dict[str, Any] = {}
    for index in _emission_order(spec, given):
        param, value = spec.params[index], _json_value(spec.params[index], given[index])
        if param.action in ("append", "append_const", "extend"):
            previous = values.get(param.dest)
            values[param.dest] = (previous if isinstance(previous, list) else []) + value
        else:
            values[param.dest] = value
    return BuiltCommand(
        args=tuple(_join(spec, rendered)),
        values=values,
        input_files=input_files,
        output_files=tuple(output_files),
    )


def _emission_order(spec: ScriptSpec, given: Mapping[int, Any]) -> list[int]:
    """The indexes of given parameters in argv order: optionals, then positionals."""
    order = sorted(given)
    return [i for i in order if not spec.params[i].positional] + [
        i for i in order if spec.params[i].positional
    ]
