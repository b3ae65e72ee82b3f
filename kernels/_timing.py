"""The one timing loop of the suite's scripts and asv track_* benchmarks (not used by the
kernels): medians of single calls, best of interleaved rounds and ratios paired within them,
because the machines this runs on are shared and noisy (whole episodes where every 2-thread
call waits a scheduler slice)."""
from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable


def per_call_seconds(fn: Callable[[], object], number: int = 1) -> float:
    """Seconds per call of `number` back-to-back calls of fn."""
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t0) / number


def median_seconds(fn: Callable[[], object], reps: int, number: int = 1) -> float:
    """Median over `reps` samples of per_call_seconds(fn, number)."""
    return statistics.median(per_call_seconds(fn, number) for _ in range(reps))


def best_median_seconds(fn: Callable[[], object], batches: int = 3, batch_seconds: float = 0.05,
                        max_calls: int = 100) -> float:
    """The best (lowest) of `batches` medians of single calls; each batch times calls until
    batch_seconds have passed (at least one call, at most max_calls)."""
    best = math.inf
    for _ in range(batches):
        times = []
        start = time.perf_counter()
        while len(times) < max_calls:
            times.append(per_call_seconds(fn))
            if time.perf_counter() - start > batch_seconds:
                break
        best = min(best, statistics.median(times))
    return best


def interleaved_rounds(methods: dict, rounds: int, reps: int, number: int = 1,
                       rng=None) -> dict:
    """{name: [median seconds of each round]} of zero-argument callables timed in turn, round
    after round (in a new random order each round when an rng with .shuffle is given), after
    one warm-up call each (JIT compilation, first touch of pages)."""
    for fn in methods.values():
        fn()
    times = {name: [] for name in methods}
    order = list(methods)
    for _ in range(rounds):
        if rng is not None:
            rng.shuffle(order)
        for name in order:
            times[name].append(median_seconds(methods[name], reps, number))
    return times


def interleaved_best(methods: dict, rounds: int, reps: int, number: int = 1,
                     rng=None) -> dict:
    """{name: best per-round median seconds} of interleaved_rounds."""
    return {name: min(t) for name, t in
            interleaved_rounds(methods, rounds, reps, number, rng).items()}


def in_turn(items: list) -> Callable[[], object]:
    """A zero-argument callable that returns items[1], items[2], ..., items[0], items[1], ...,
    one a call: sets of ids handed to timed calls in turn, so that calls in a row read
    different rows (one set for every call leaves a call's rows in the cache for the next)."""
    turn = [0]

    def next_item():
        turn[0] = (turn[0] + 1) % len(items)
        return items[turn[0]]

    return next_item


def calls_in_turn(call: Callable[[object], object], items: list) -> Callable[[], object]:
    """A zero-argument callable that calls call(item) with the items in turn (in_turn), one a
    call, counting on its own: a timed method that reads a new set of ids each call."""
    next_item = in_turn(items)
    return lambda: call(next_item())


def as_id_sets(ids) -> list:
    """The sets of ids timed methods take in turn: a list or tuple of arrays as it is, one
    array as the only set."""
    return list(ids) if isinstance(ids, (list, tuple)) else [ids]


def paired_ratio(a: list, b: list) -> float:
    """The median over rounds of a[i] / b[i]: a ratio of two methods timed in the same rounds
    (interleaved_rounds), steadier on a shared machine than the ratio of their bests, since a
    slow episode slows both sides of a round alike."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_ratio needs two equally long, non-empty lists of rounds, got "
                         f"{len(a)} and {len(b)}")
    return statistics.median(x / y for x, y in zip(a, b))
