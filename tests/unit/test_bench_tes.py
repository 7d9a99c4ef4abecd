"""bench/tes.py: the figures meet their targets by the rules the issue states, and
``--quick`` shrinks only the counts the caller did not give."""

from __future__ import annotations

import pytest

from bench.tes import accept_figures, latency_figures, parse
from bench.tes_latency import PHASES, phase_medians

pytestmark = pytest.mark.engine_independent


def _latency(task_ms: list[float], bare_ms: list[float]) -> dict[str, object]:
    return {"task_ms": task_ms, "bare_ms": bare_ms, "other_cores": 0.0}


def test_latency__passes_within_100_ms_of_the_bare_run_and_fails_beyond() -> None:
    bare = [500.0] * 10
    within = latency_figures(_latency([600.0] * 10, bare))
    assert [row.passed for row in within] == [True, True]
    assert within[0].value - within[0].reference == pytest.approx(100.0)
    beyond = latency_figures(_latency([601.0] * 10, bare))
    assert [row.passed for row in beyond] == [False, False]


def test_latency__a_slow_tail_fails_the_p99_not_the_median() -> None:
    rows = latency_figures(_latency([550.0] * 19 + [2000.0], [500.0] * 20))
    median, p99 = rows
    assert median.passed and not p99.passed


def _accept(rate: float, states: dict[str, int]) -> dict[str, object]:
    rounds = {
        "tes": [{"requests_per_s": rate, "other_cores": 0.1}] * 3,
        "hello": [{"requests_per_s": 1500.0, "other_cores": 0.2}] * 3,
    }
    return {"rounds": rounds, "job_states": states, "connections": 16}


def test_accept__needs_300_per_second_with_every_task_still_queued() -> None:
    (fast,) = accept_figures(_accept(350.0, {"queued": 2000}))
    assert fast.passed and fast.ratio == pytest.approx(350.0 / 1500.0)
    assert fast.other_cores == pytest.approx(0.2)
    (slow,) = accept_figures(_accept(299.0, {"queued": 2000}))
    assert not slow.passed
    (ran,) = accept_figures(_accept(350.0, {"queued": 1999, "ok": 1}))
    assert not ran.passed  # a task left the queue: the daemon did more than accept


def test_parse__quick_shrinks_the_counts_not_given() -> None:
    full = parse([])
    assert (full.tasks, full.accept_tasks, full.list_tasks, full.requests) == (
        100,
        2000,
        100_000,
        300,
    )
    quick = parse(["--quick", "--tasks", "7"])
    assert (quick.tasks, quick.accept_tasks, quick.list_tasks) == (7, 600, 20_000)
    assert quick.parts == ["latency", "accept", "list"]
    with pytest.raises(SystemExit):
        parse(["--parts", "latency,nope"])


def test_phase_medians__skip_a_phase_a_task_lacks_a_moment_of() -> None:
    whole = {"submit": 10.0, "row_committed": 10.004, "claimed": 10.010, "seen": 11.0}
    partial = {"submit": 20.0, "row_committed": 20.002, "seen": 21.0}  # never claimed
    medians = phase_medians([whole, partial, dict(whole)])
    assert medians["submit -> row committed"] == pytest.approx(4.0)
    assert medians["row -> claimed"] == pytest.approx(6.0)  # whole's twice, not partial's
    assert "container run" not in medians
    assert list(medians) == [name for name, _, _ in PHASES if name in medians]  # in order
