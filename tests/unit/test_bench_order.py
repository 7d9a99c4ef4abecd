"""``bench/per_job.py``'s order of runners in its alternating rounds."""

from __future__ import annotations

import itertools

import pytest

from bench.per_job import round_order

pytestmark = pytest.mark.engine_independent

NAMES = ["bare", "hyperqueue", "current", "baseline"]


def test_round_order__every_runner_goes_first_in_turn() -> None:
    firsts = {round_order(NAMES, index)[0] for index in range(2 * len(NAMES))}
    assert firsts == set(NAMES)
    for index in range(8):
        assert sorted(round_order(NAMES, index)) == sorted(NAMES)  # each runs once a round


@pytest.mark.parametrize("a, b", list(itertools.combinations(NAMES, 2)))
def test_round_order__in_each_pair_of_rounds_two_runners_run_in_both_orders(a: str, b: str) -> None:
    for index in range(0, 8, 2):
        pair = [round_order(NAMES, i) for i in (index, index + 1)]
        assert {order.index(a) < order.index(b) for order in pair} == {True, False}
