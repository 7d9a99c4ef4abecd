"""Bounds on checking a ``command``: tokens, time, and what the OS would refuse.

Each test names the failure it guards (issue #10, items 5 and 9).
"""

from __future__ import annotations

import random
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobferry.argspec.bounded import INLINE_TOKENS, CommandChecker, CommandLimits
from jobferry.argspec.command import build_command
from jobferry.argspec.introspect import ScriptSpec, introspect_script
from jobferry.argspec.tokens import MAX_ARG_STRLEN, arg_budget, most_tokens, split_command
from jobferry.errors import TooManyRequestsError, ValidationError

pytestmark = [pytest.mark.timeout(120), pytest.mark.engine_independent]

SCRIPTS = Path(__file__).resolve().parents[1] / "data" / "scripts"
UPLOADS = {"data": "/uploads/data.csv"}
REQUIRED = "--name bob data 5"  # the minimal valid command for all_actions.py


@pytest.fixture(scope="module")
def spec() -> ScriptSpec:
    return introspect_script(
        str(SCRIPTS / "all_actions.py"), interpreter=sys.executable, timeout_s=30, memory_mb=512
    )


def errors_of(spec: ScriptSpec, command: str, **limits: int) -> dict[str, object]:
    with pytest.raises(ValidationError) as info:
        build_command(spec, command, UPLOADS, **limits)
    return info.value.errors


# --- the tokenizer --------------------------------------------------------------------------


def test_split_command_is_shlex_split() -> None:
    """Guards: the linear tokenizer splitting (or failing) differently from shlex.split."""
    alphabet = ["a", "b", " ", "\t", "\n", "\r", "'", '"', "\\", "-", "=", "é", "\x0b", "#", "$"]
    rng = random.Random(10)
    samples = [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(20000)
    ]
    samples += ['--a \'b c\' "d\\"e" f\\ g', "''", '""', "a''b", "x\\", "'open", '"a\\', "a\\\nb"]
    for text in samples:
        try:
            expected: object = shlex.split(text)
        except ValueError as exc:
            expected = ("error", str(exc))
        try:
            got: object = split_command(text)
        except ValidationError as exc:
            got = ("error", exc.errors["command"])
        assert got == expected, text
        if isinstance(expected, list):
            assert len(expected) <= most_tokens(text), text


def test_a_megabyte_in_one_token_splits_in_linear_time(spec: ScriptSpec) -> None:
    """Guards: shlex's quadratic token growth (one quoted megabyte took 19 s)."""
    started = time.monotonic()
    errors = errors_of(spec, '--name "' + "x" * 1_000_000 + '" data 5')
    assert time.monotonic() - started < 10
    assert "Who" in str(errors) or "name" in errors


def test_more_tokens_than_the_cap_are_refused_before_parsing(spec: ScriptSpec) -> None:
    """Guards: 100,000 repeated flags keeping a worker busy for minutes (argparse is
    quadratic): past max_tokens the command is refused while being tokenized."""
    started = time.monotonic()
    errors = errors_of(spec, REQUIRED + " --verbose" * 100_000, max_tokens=2000)
    assert time.monotonic() - started < 10
    assert "2000" in str(errors["command"])
    build_command(spec, REQUIRED + " --verbose" * 1996, UPLOADS, max_tokens=2000)  # at the cap


# --- what the OS refuses --------------------------------------------------------------------


def test_output_name_component_over_255_bytes_is_refused(spec: ScriptSpec) -> None:
    """Guards: an output name of 300 characters answering valid:true, the job failing later."""
    errors = errors_of(spec, REQUIRED + " -o " + "a" * 300)
    assert any("255 bytes" in message for message in errors["output"])  # type: ignore[union-attr]
    errors = errors_of(spec, REQUIRED + " -o sub/" + "é" * 128)  # 256 bytes in UTF-8
    assert "output" in errors
    build_command(spec, REQUIRED + " -o sub/" + "a" * 255, UPLOADS)


def test_argument_longer_than_the_kernel_takes_is_refused(spec: ScriptSpec) -> None:
    """Guards: a 900 kB argument answering valid:true, the job failing with E2BIG."""
    errors = errors_of(spec, "--name " + "a" * 900_000 + " data 5")
    assert list(errors) == ["name"]
    assert str(MAX_ARG_STRLEN - 1) in errors["name"][0]  # type: ignore[index]


def test_arguments_too_large_together_name_the_largest_parameter(spec: ScriptSpec) -> None:
    """Guards: many medium arguments adding up past ARG_MAX (Argument list too long)."""
    command = REQUIRED + " --tag " + "t" * 50_000 + " --mode fast"
    errors = errors_of(spec, command, arg_budget=40_000)
    assert list(errors) == ["tag"]
    assert build_command(spec, command, UPLOADS, arg_budget=arg_budget(["python", "x.py"]))


def test_arg_budget_leaves_room_for_the_environment() -> None:
    env = {"BIG": "x" * 100_000}
    assert arg_budget(["python"], env) < arg_budget(["python"], {}) - 100_000


# --- the checker ----------------------------------------------------------------------------


@pytest.fixture
def checker() -> Iterator[CommandChecker]:
    made = CommandChecker(CommandLimits(max_tokens=2000, timeout_s=60, slots=1))
    yield made
    made.close()


def test_small_commands_are_checked_inline(spec: ScriptSpec, checker: CommandChecker) -> None:
    """Guards: the hot path paying for a worker process."""
    assert checker.is_inline(REQUIRED)
    assert not checker.is_inline(REQUIRED + " -v" * INLINE_TOKENS)
    assert (
        checker.check(spec, REQUIRED, UPLOADS).args == build_command(spec, REQUIRED, UPLOADS).args
    )


def test_large_commands_are_checked_in_a_worker_with_the_same_result(
    spec: ScriptSpec, checker: CommandChecker
) -> None:
    """Guards: a long command being parsed on a daemon thread (holding the GIL)."""
    command = REQUIRED + " --tag a" * 300 + " -o out.txt -q -q"
    assert not checker.is_inline(command)
    assert checker.check(spec, command, UPLOADS) == build_command(spec, command, UPLOADS)
    with pytest.raises(ValidationError) as info:
        checker.check(spec, command + " --level 9", UPLOADS)
    assert "level" in info.value.errors
    with pytest.raises(ValidationError) as info:
        checker.check(spec, REQUIRED + " -v" * 2100, UPLOADS)
    assert "2000" in str(info.value.errors["command"])
    assert len(checker._idle) == 1  # one worker, reused


def test_a_check_past_its_time_limit_is_killed_and_refused(spec: ScriptSpec) -> None:
    """Guards: a check running unbounded (the child is killed at the limit)."""
    checker = CommandChecker(CommandLimits(max_tokens=20_000, timeout_s=0.5, slots=1))
    started = time.monotonic()
    with pytest.raises(ValidationError) as info:
        checker.check(spec, REQUIRED + " -q" * 15_000, UPLOADS)  # argparse: many seconds
    assert "within 0.5 s" in str(info.value.errors["command"])
    assert time.monotonic() - started < 30
    assert checker._idle == []  # the late worker was killed
    checker.close()


def test_no_more_than_slots_long_checks_at_once(spec: ScriptSpec, checker: CommandChecker) -> None:
    """Guards: long checks occupying every worker thread (the others' requests starve)."""
    assert checker._slots.acquire(blocking=False)  # one check under way
    try:
        with pytest.raises(TooManyRequestsError) as info:
            checker.check(spec, REQUIRED + " -v" * 500, UPLOADS)
        assert info.value.retry_after == 1
        checker.check(spec, REQUIRED, UPLOADS)  # small commands never wait
    finally:
        checker._slots.release()
