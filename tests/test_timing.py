"""kernels._timing: interleaved rounds, their bests, and ratios paired within a round."""
from __future__ import annotations

import random

import pytest

from kernels import _timing


def test_interleaved_rounds_times_every_method_once_a_round_after_one_warm_up(monkeypatch):
    calls = []
    methods = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    clock = iter(range(10**6))
    monkeypatch.setattr(_timing.time, "perf_counter", lambda: next(clock))
    rounds = _timing.interleaved_rounds(methods, rounds=4, reps=3, rng=random.Random(1))
    assert sorted(rounds) == ["a", "b", "c"]
    assert all(len(r) == 4 for r in rounds.values())
    assert calls[:3] == ["a", "b", "c"]                   # the warm-up calls
    assert sorted(calls[3:]) == sorted(list("abc") * 12)  # 4 rounds x 3 reps each
    assert all(t == 1 for r in rounds.values() for t in r)  # each call: one clock tick


def test_interleaved_rounds_shuffles_the_order_each_round_only_with_an_rng(monkeypatch):
    seen = []
    methods = {name: (lambda name=name: seen.append(name)) for name in "abcdef"}
    _timing.interleaved_rounds(methods, rounds=6, reps=1)
    assert seen[6:] == list("abcdef") * 6
    seen.clear()
    _timing.interleaved_rounds(methods, rounds=6, reps=1, rng=random.Random(3))
    orders = {tuple(seen[6 + 6 * k:12 + 6 * k]) for k in range(6)}
    assert len(orders) > 1


def test_interleaved_best_is_the_lowest_round(monkeypatch):
    rounds = {"a": [3.0, 1.0, 2.0], "b": [5.0, 6.0, 4.0]}
    monkeypatch.setattr(_timing, "interleaved_rounds", lambda *a, **k: rounds)
    assert _timing.interleaved_best({"a": None, "b": None}, 3, 1) == {"a": 1.0, "b": 4.0}


def test_paired_ratio_is_the_median_of_the_per_round_ratios():
    slow = [1.0, 10.0, 1.0, 1.0, 10.0]     # a noisy episode slows rounds 2 and 5 for both
    fast = [0.5, 5.0, 0.5, 0.5, 5.0]
    assert _timing.paired_ratio(slow, fast) == 2.0
    assert min(slow) / min(fast) == 2.0
    # the ratio of bests is what one lucky round of either side makes it; the paired one is not
    assert _timing.paired_ratio([1.0, 1.0, 1.0], [0.5, 0.5, 0.1]) == 2.0
    assert min([1.0, 1.0, 1.0]) / min([0.5, 0.5, 0.1]) == pytest.approx(10.0)


@pytest.mark.parametrize("a, b", [([], []), ([1.0], [1.0, 2.0])])
def test_paired_ratio_wants_equal_non_empty_rounds(a, b):
    with pytest.raises(ValueError, match="equally long"):
        _timing.paired_ratio(a, b)


def test_in_turn_hands_out_the_items_one_a_call_round_and_round():
    a, b, c = object(), object(), object()
    nxt = _timing.in_turn([a, b, c])
    assert [nxt() for _ in range(7)] == [b, c, a, b, c, a, b]
    one = _timing.in_turn([a])
    assert one() is a and one() is a


def test_calls_in_turn_calls_with_the_items_in_turn_each_callable_its_own():
    a, b = object(), object()
    seen = []
    first = _timing.calls_in_turn(seen.append, [a, b])
    second = _timing.calls_in_turn(seen.append, [a, b])
    first(), first(), second(), first()
    assert seen == [b, a, b, b]
    assert _timing.as_id_sets([a, b]) == [a, b] and _timing.as_id_sets((a,)) == [a]
    assert _timing.as_id_sets(a) == [a]
