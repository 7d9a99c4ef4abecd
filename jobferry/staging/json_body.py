"""The one parser of JSON request bodies, with a size and a nesting-depth limit.

Every JSON body of every route (and JSON carried inside one, like Galaxy's
``inputs`` string) goes through ``parse_json``. Python's decoder recurses once
per nesting level, so ``[[[[...`` a hundred thousand deep raises RecursionError
(a 500), and a value nested just below the interpreter's limit still blows up
later when it is copied, compared or dumped again. The depth is therefore
measured *before* decoding, by a linear scan that runs in C (see
``nesting_problem``), and bodies deeper than
``MAX_JSON_DEPTH`` are refused with a 400; bodies larger than the caller's
limit with a 413. Nothing deep ever reaches the decoder or the code after it.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

from jobferry.errors import PayloadTooLargeError, RequestError

#: Deepest nesting of arrays/objects accepted. Real clients (bioblend, Wooey)
#: send two or three levels; 64 leaves room and stays far below the recursion limit.
MAX_JSON_DEPTH = 64

#: A JSON string literal (escapes included), removed before looking at brackets.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
#: Everything that is not a bracket, once strings are gone.
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def nesting_problem(text: str, max_depth: int) -> str | None:
    """Why *text* cannot be decoded within *max_depth* levels, or None if it can.

    Strings are cut out, the brackets left are turned into +1/-1 steps and
    their running sum's maximum is the depth (``accumulate`` and ``max``, in C:
    some 50 ms for a megabyte of brackets). Exact for valid JSON; invalid JSON
    may be over-counted, which only turns one 400 into another.
    """
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    if len(brackets) <= max_depth:
        return None  # too few brackets to be that deep
    if max(accumulate(map(_STEP.__getitem__, brackets))) <= max_depth:
        return None
    return f"is nested too deeply (at most {max_depth} levels)"


def parse_json(
    data: bytes | bytearray | str,
    *,
    max_bytes: int | None,
    max_depth: int = MAX_JSON_DEPTH,
    empty: Any = None,
    what: str = "the body",
) -> Any:
    """Decode a JSON request body within limits.

    Args:
        data: The raw body (bytes are decoded as UTF-8, bad bytes replaced).
        max_bytes: Largest accepted size in bytes (None: the caller already capped it).
        max_depth: Deepest accepted nesting of arrays/objects.
        empty: What an empty (or all-whitespace) body stands for.
        what: How error messages name the data.

    Raises:
        PayloadTooLargeError: larger than *max_bytes* (413).
        RequestError: not JSON, or nested deeper than *max_depth* (400).
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise PayloadTooLargeError(f"{what} may not exceed {max_bytes} bytes")
    text = data if isinstance(data, str) else bytes(data).decode("utf-8", "replace")
    if not text.strip():
        return empty
    problem = nesting_problem(text, max_depth)
    if problem is not None:
        raise RequestError(f"{what} {problem}")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: cannot happen, see above
        raise RequestError(f"{what} is not valid JSON: {exc}") from None
