"""Splitting a ``command`` into tokens, and the limits the OS puts on an argv.

``split_command`` gives exactly what ``shlex.split(command)`` gives (POSIX
rules, no comments), but in linear time and with a cap on the number of
tokens: ``shlex`` grows each token one character at a time (a megabyte inside
one pair of quotes took 19 s) and would hand argparse, which is quadratic in
the number of options, as many tokens as a client cares to send.

The limits are what ``execve`` refuses: one argument longer than
``MAX_ARG_STRLEN``, arguments and environment together larger than
``SC_ARG_MAX``, and a path component longer than ``NAME_MAX`` (``open``).
Checking them at submission turns "job failed: Argument list too long" into a
400 naming the parameter.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable

from jobferry.errors import ValidationError

#: Longest path component (bytes) Linux file systems accept.
NAME_MAX = 255
#: Longest path (bytes) the kernel resolves.
PATH_MAX = 4096
#: Longest single argv string (bytes, with its NUL) Linux's execve accepts (32 pages).
MAX_ARG_STRLEN = 32 * 4096
#: Bytes of the argv/environment area kept free for the job's environment and the
#: runner's wrapper (its own arguments: a shell, paths, ``--``).
EXEC_RESERVE = 32 * 1024
#: Bytes a pointer takes in the argv/envp arrays.
_POINTER = 8

_INVALID = "The command is invalid."

#: One piece of a token: unquoted text (backslash escapes any character), a
#: single-quoted part, a double-quoted part (backslash escapes only " and \).
_PIECE = re.compile(
    r"""(?P<space>[ \t\r\n]+)
      |(?P<word>(?:[^ \t\r\n'"\\]|\\[\s\S])+)
      |'(?P<single>[^']*)'
      |"(?P<double>[^"\\]*(?:\\[\s\S][^"\\]*)*)"
      |(?P<bad>[\s\S])""",
    re.VERBOSE,
)
_UNESCAPE = re.compile(r"\\([\s\S])")
_UNESCAPE_IN_DOUBLE = re.compile(r'\\(["\\])')
_OPEN_DOUBLE_ENDING_IN_ESCAPE = re.compile(r'[^"\\]*(?:\\[\s\S][^"\\]*)*\\')
_SPACE_RUN = re.compile(r"[ \t\r\n]+")


def most_tokens(command: str) -> int:
    """An upper bound of ``len(split_command(command))``, found in C (no token is built)."""
    return len(_SPACE_RUN.findall(command)) + 1


def split_command(command: str, max_tokens: int | None = None) -> list[str]:
    """Split *command* like ``shlex.split`` (POSIX mode), refusing more than *max_tokens*.

    Raises:
        ValidationError: unbalanced quotes, a trailing backslash, or too many
            tokens; ``errors["command"]`` says which.
    """
    tokens: list[str] = []
    current: list[str] | None = None
    for match in _PIECE.finditer(command):
        kind = match.lastgroup
        if kind == "space":
            if current is not None:
                tokens.append("".join(current))
                current = None
                _check_count(len(tokens), max_tokens)
            continue
        if kind == "bad":
            raise ValidationError(_INVALID, errors={"command": _unterminated(command, match)})
        text = match.group(kind or "")
        if kind == "word":
            text = _UNESCAPE.sub(r"\1", text) if "\\" in text else text
        elif kind == "double" and "\\" in text:
            text = _UNESCAPE_IN_DOUBLE.sub(r"\1", text)
        if current is None:
            current = []
        current.append(text)
    if current is not None:
        tokens.append("".join(current))
        _check_count(len(tokens), max_tokens)
    return tokens


def _check_count(count: int, max_tokens: int | None) -> None:
    if max_tokens is not None and count > max_tokens:
        raise ValidationError(
            _INVALID,
            errors={
                "command": f"The command has more than {max_tokens} arguments "
                "(scripts.max_command_tokens)."
            },
        )


def _unterminated(command: str, match: re.Match[str]) -> str:
    """shlex's message for what the tokenizer could not match at *match*."""
    char = match.group()
    if char == '"' and _OPEN_DOUBLE_ENDING_IN_ESCAPE.fullmatch(command, match.end()):
        return "No escaped character"
    return "No closing quotation" if char in "'\"" else "No escaped character"


def arg_cost(arg: str) -> int:
    """Bytes *arg* takes in the kernel's argv area (its text, its NUL, its pointer)."""
    return len(arg.encode("utf-8", "surrogateescape")) + 1 + _POINTER


def arg_budget(fixed_args: Iterable[str], environ: dict[str, str] | None = None) -> int:
    """Bytes left for a script's own arguments under ``SC_ARG_MAX``.

    *fixed_args* are the ones before them (interpreter, script path). The whole
    environment of this process is counted (a job gets less), plus EXEC_RESERVE.
    """
    if environ is None:
        environ_cost = _own_environ_cost()
    else:
        environ_cost = sum(arg_cost(f"{key}={value}") for key, value in environ.items())
    used = environ_cost + sum(arg_cost(arg) for arg in fixed_args)
    return _arg_max() - used - EXEC_RESERVE


@functools.cache
def _arg_max() -> int:
    try:
        return int(os.sysconf("SC_ARG_MAX"))
    except (ValueError, OSError):
        return 2 * 1024 * 1024


@functools.cache
def _own_environ_cost() -> int:
    """This process's environment, measured once (reading it costs ~0.1 ms a time)."""
    return sum(arg_cost(f"{key}={value}") for key, value in os.environ.items())


def path_problem(name: str) -> str | None:
    """Why the OS would refuse *name* as a file name (relative to the job), or None."""
    if len(name.encode("utf-8", "surrogateescape")) >= PATH_MAX:
        return f"File names may have at most {PATH_MAX - 1} bytes."
    for part in name.split("/"):
        if len(part.encode("utf-8", "surrogateescape")) > NAME_MAX:
            return f"Each part of a file name may have at most {NAME_MAX} bytes."
    return None
