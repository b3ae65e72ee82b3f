"""kernel="auto" for bags: the decision table's bag rows (per vocab_size, dim and bag length,
from the bag operations' asv benchmarks), the nearest measured bag length, the mode filter (a
kernel without the call's mode is never chosen: max never goes to a one-hot kernel), the
fallback to the lookup's rows for a table without bag rows, the cache key, the arguments of
fastest/explain, and `python -m kernels`.

Results are written with asv's own API by tests/test_fastest.py's helpers, into the private
config, local table and shipped table of its `env` fixture. Expected kernels are computed from
the registry (which kernels implement lookup_bag and which modes they have), so the compiled
kernels' bags are picked up when they land.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest

import kernels
from conftest import assert_bitwise_equal, make_weights, outcome
from test_fastest import (  # noqa: F401  (env is a fixture)
    ALL,
    BAGS,
    BWD_WIN,
    FWD_WIN,
    GRID,
    MACHINE,
    SHIPPED_WIN,
    F,
    T,
    env,
    times_for,
    write_config,
    write_results,
    write_standard,
)

BAG = kernels.OPERATIONS["lookup_bag"]
BAG_GRAD = kernels.OPERATIONS["lookup_bag_grad"]
MODES = ("sum", "mean", "max", "sqrtn")
LENGTHS = (1, 8, 64)
BAG_N = kernels.LOOKUP_BAG.benchmark_n_ids

# The winner of each (V, D, bag length) in the bag results: a one-hot kernel where it has a
# chance to be the fastest (so the mode filter has something to refuse), others elsewhere.
BAG_WIN = {
    (V, D, b): w
    for (V, D), row in {
        (100, 8): ("onehot_dense", "numba_gather", "onehot_sparse"),
        (100, 32): ("cython_gather", "onehot_dense", "numpy_take"),
        (1000, 8): ("onehot_sparse", "numpy_take", "onehot_dense"),
        (1000, 32): ("numpy_take", "onehot_sparse", "cython_gather"),
    }.items()
    for b, w in zip(LENGTHS, row)
}
BAG_GRAD_WIN = {(V, D, b): {"onehot_dense": "onehot_sparse"}.get(w, "onehot_dense")
                for (V, D, b), w in BAG_WIN.items()}


def bag_times(winners, kernels_=ALL):
    """{(kernel, V, D, b): seconds}: the winner 1 us, the others 2, 3, ... us (ALL's order)."""
    out = {}
    for (V, D, b), w in winners.items():
        out[(w, V, D, b)] = 1e-6
        for i, k in enumerate(k for k in kernels_ if k != w):
            out[(k, V, D, b)] = (2 + i) * 1e-6
    return out


def write_bags(results_dir, **kw):
    kw.setdefault("bags", bag_times(BAG_WIN))
    kw.setdefault("bag_grads", bag_times(BAG_GRAD_WIN))
    return write_standard(results_dir, **kw)


def can_run(op, mode, fmt="float32"):
    """Names of the registered kernels that implement op for fmt and have the mode."""
    return [n for n, k in kernels.KERNELS.items() if k.implements(op, fmt) and mode in k.bag_modes]


def expected(times, point, op, mode):
    """The fastest kernel at a point (V, D, b) among those that can run (op, mode)."""
    measured = {k: t for (k, *p), t in times.items() if tuple(p) == point and t is not None}
    usable = {k: t for k, t in measured.items() if k in can_run(op, mode)}
    return min(usable, key=usable.get) if usable else None


def the(name):
    return kernels.KERNELS[name]


# --------------------------------------------------------------------------------------------
# building the table
# --------------------------------------------------------------------------------------------


def test_bag_rows_carry_their_bag_length_and_the_bag_benchmarks_n(env):
    path = write_bags(env.results, publish_table=False)
    table = T.table_from_results()
    assert table["source"] == path
    for op, winners in ((BAG.name, BAG_WIN), (BAG_GRAD.name, BAG_GRAD_WIN)):
        rows = table["ops"][op]
        assert {(r["vocab_size"], r["dim"], r["bag_length"]) for r in rows} == set(winners)
        assert all(r["n_ids"] == BAG_N and r["dtype"] == "float32" for r in rows)
        assert T.winners(table, op) == winners  # the raw rows: every measured kernel


def test_lookup_rows_are_the_same_with_or_without_bag_results(env, tmp_path):
    write_bags(env.results, publish_table=False)
    with_bags = T.table_from_results()
    other = tmp_path / "no-bags"
    write_standard(other / "results", publish_table=False)
    without = T.table_from_results(str(write_config(other / "asv.conf.json", "results")))
    for op in ("lookup", "lookup_grad"):
        assert with_bags["ops"][op] == without["ops"][op]
        assert all("bag_length" not in r for r in with_bags["ops"][op])
    assert set(without["ops"]) == {"lookup", "lookup_grad"}


def test_bag_parameters_are_read_by_name_when_benchmarks_json_names_them(env):
    """asv's benchmarks.json gives the parameter names: a benchmark declaring bag_length first
    is still read right (without it, the contract's order kernel, vocab_size, dim, bag_length)."""
    from asv.results import Results
    from asv.runner import BenchmarkResult

    res = Results({"machine": MACHINE, "python": "3.11"}, {}, "c" * 40, 1, "3.11", "env-a", {})
    params = [["1", "8"], ["'numpy_take'", "'onehot_dense'"], ["100"], ["8"]]
    values = [1e-6, 2e-6, 2e-6, 1e-6]  # bag 1: numpy_take, bag 8: onehot_dense
    names = ["bag_length", "kernel", "vocab_size", "dim"]
    fwd = [["'numpy_take'"], ["100"], ["8"]]
    for name, p, v, n in ((BAGS, params, values, names),
                          (T.LOOKUP.benchmark, fwd, [1e-6], ["kernel", "vocab_size", "dim"])):
        res.add_result({"name": name, "params": p, "param_names": n, "version": "0" * 64,
                        "type": "time", "unit": "seconds"},
                       BenchmarkResult(result=v, samples=[None] * len(v), number=[None] * len(v),
                                       errcode=0, stderr="", profile=None))
    res.save(str(env.results))
    (env.results / "benchmarks.json").write_text(json.dumps(
        {BAGS: {"param_names": names},
         T.LOOKUP.benchmark: {"param_names": ["kernel", "vocab_size", "dim"]},
         "version": 2}))
    table = T.table_from_results()
    assert T.winners(table, BAG.name) == {(100, 8, 1): "numpy_take", (100, 8, 8): "onehot_dense"}


@pytest.mark.parametrize("value,ok", [
    (None, 1), (1, 1), (64, 64), (8.0, 8),
    (0, None), (-1, None), (2.5, None), ("8", None), (True, None), (float("nan"), None),
])
def test_a_bag_rows_bag_length_is_a_positive_whole_number_and_absent_means_1(value, ok):
    row = {"vocab_size": 100, "dim": 8, "times": {"numpy_take": 1e-6}}
    if value is not None:
        row["bag_length"] = value
    if ok is None:
        with pytest.raises(ValueError, match="bag_length"):
            F._clean_row(row, BAG)
    else:
        assert F._clean_row(row, BAG)["bag_length"] == ok
    # a lookup row has no bag length: the key is not kept
    assert "bag_length" not in F._clean_row(dict(row, bag_length=3), kernels.OPERATIONS["lookup"])


def test_a_table_with_bad_bag_rows_warns_and_keeps_the_good_ones(env):
    row = {"vocab_size": 100, "dim": 8, "times": {"numpy_take": 1e-6}}
    table = {"ops": {"lookup": [row],
                     "lookup_bag": [dict(row, bag_length=8), dict(row, bag_length=-8)]}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clean = F.validate_table(table, "test table")
    assert [r["bag_length"] for r in clean["ops"]["lookup_bag"]] == [8]
    assert any("lookup_bag" in str(w.message) and "bag_length" in str(w.message) for w in caught)


# --------------------------------------------------------------------------------------------
# decisions
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op,winners", [(BAG, BAG_WIN), (BAG_GRAD, BAG_GRAD_WIN)],
                         ids=["forward", "backward"])
def test_at_each_measured_point_the_fastest_kernel_that_has_the_mode_is_chosen(env, op, winners,
                                                                               mode):
    write_bags(env.results)
    times = bag_times(winners)
    for (V, D, b) in winners:
        got = kernels.fastest(V, D, BAG_N, op=op.name, bag_length=b, mode=mode)
        want = expected(times, (V, D, b), op.name, mode)
        assert got is the(want), (V, D, b, mode, got.name, want)
        assert mode in got.bag_modes and got.implements(op, "float32")


@pytest.mark.parametrize("op", [BAG, BAG_GRAD], ids=["forward", "backward"])
def test_max_never_goes_to_a_one_hot_kernel_even_where_one_is_measured_fastest(env, op):
    every = {(V, D, b): "onehot_dense" for V, D in GRID for b in LENGTHS}
    write_results(env.results, forward=times_for("onehot_dense"), bags=bag_times(every),
                  bag_grads=bag_times(every))
    for V, D in GRID:
        for b in LENGTHS:
            assert kernels.fastest(V, D, BAG_N, op=op.name, bag_length=b) is the("onehot_dense")
            got = kernels.fastest(V, D, BAG_N, op=op.name, bag_length=b, mode="max")
            assert got.family != "onehot" and "max" in got.bag_modes, got.name


@pytest.mark.parametrize("b,nearest", [
    (0, 1), (1, 1), (2, 1), (3, 1),  # buckets [2, 3] -> 2: log 2 < log 4
    (4, 8), (7, 8), (8, 8), (15, 8), (16, 8), (31, 8),  # [16, 31] -> 16: log 2 < log 4
    (32, 64), (64, 64), (10**6, 64),
])
def test_between_measured_bag_lengths_the_nearest_in_log_scale_of_the_buckets_lower_end(env, b,
                                                                                       nearest):
    write_bags(env.results)
    for V, D in GRID:
        got = kernels.fastest(V, D, BAG_N, op="lookup_bag", bag_length=b)
        want = expected(bag_times(BAG_WIN), (V, D, nearest), "lookup_bag", "sum")
        assert got is the(want), (V, D, b)
        d = kernels.explain(V, D, BAG_N, op="lookup_bag", bag_length=b)
        assert d.point["bag_length"] == nearest and d.rows_op == "lookup_bag"


def test_nearest_weighs_bag_length_with_vocab_size_and_row_bytes():
    rows = [dict(vocab_size=V, dim=D, n_ids=BAG_N, dtype="float32", bag_length=b, times={})
            for V, D, b in [(100, 8, 1), (100, 8, 64), (10_000, 8, 8)]]
    fmt = kernels.FORMATS["float32"]
    pick = lambda V, D, b: (lambda r: (r["vocab_size"], r["bag_length"]))(
        F._nearest(rows, V, D, BAG_N, fmt, b))
    assert pick(100, 8, 1) == (100, 1)
    assert pick(100, 8, 64) == (100, 64)
    assert pick(100, 8, 8) == (100, 1)  # log 8 each way; (10_000, 8) is log 100 away in V
    assert pick(1000, 8, 8) == (10_000, 8)  # log 10 in V beats log 8 in bag length + log 10
    # exact bag lengths here (no cache bucket): 3 is nearer 8 than 1 in log scale
    three = rows[:2] + [dict(rows[0], bag_length=8)]
    assert F._nearest(three, 100, 8, BAG_N, fmt, 3)["bag_length"] == 8
    # one bag length only among the candidates: it does not count at all
    one = [dict(r, bag_length=8) for r in rows]
    assert F._nearest(one, 100, 8, BAG_N, fmt, 10**6)["vocab_size"] == 100


@pytest.mark.parametrize("mode", MODES)
def test_a_table_without_bag_rows_decides_bags_from_the_lookup_rows_with_the_mode_filter(env,
                                                                                        mode):
    """The shipped table of an older run has lookup rows only (here onehot_dense wins them)."""
    write_standard(env.results)  # no bag results: the local table has no bag rows
    assert "lookup_bag" not in F._table()["ops"]

    for op, winners, rows_op in ((BAG, FWD_WIN, "lookup"), (BAG_GRAD, BWD_WIN, "lookup_grad")):
        times = times_for(winners)
        for V, D in GRID:
            d = kernels.explain(V, D, BAG_N, op=op.name, bag_length=8, mode=mode)
            measured = {k: t for (k, v, dd), t in times.items() if (v, dd) == (V, D)}
            usable = {k: t for k, t in measured.items() if k in can_run(op, mode)}
            assert d.kernel is the(min(usable, key=usable.get)), (op.name, V, D, mode)
            assert d.rows_op == rows_op and rows_op in str(d)


def test_the_shipped_table_alone_decides_bags_from_its_lookup_rows(env):
    for op in (BAG, BAG_GRAD):
        assert kernels.fastest(1000, 32, op=op.name, mode="sum") is the(SHIPPED_WIN)
        got = kernels.fastest(1000, 32, op=op.name, mode="max")
        assert got.name in can_run(op, "max") and got.family != "onehot"


def test_bag_rows_without_a_kernel_that_has_the_mode_fall_back_to_the_lookup_rows(env):
    onehots = ["onehot_dense", "onehot_sparse"]
    only = {(V, D, b): "onehot_sparse" for V, D in GRID for b in LENGTHS}
    write_results(env.results, forward=times_for({g: "numpy_take" for g in GRID}),
                  bags=bag_times(only, kernels_=onehots))
    d = kernels.explain(100, 8, BAG_N, op="lookup_bag", bag_length=8, mode="sum")
    assert d.kernel is the("onehot_sparse") and d.rows_op == "lookup_bag"
    d = kernels.explain(100, 8, BAG_N, op="lookup_bag", bag_length=8, mode="max")
    assert d.rows_op == "lookup" and d.kernel.name in can_run(BAG, "max")


def test_with_no_usable_row_at_all_the_default_kernel_decides():
    table = {"source": "a test table", "ops": {
        "lookup": [dict(vocab_size=100, dim=8, n_ids=16384, dtype="float32",
                        times={"onehot_dense": 1e-6, "onehot_sparse": 2e-6})]}}
    d = F.decide(table, 100, 8, BAG_N, "float32", "lookup_bag", bag_length=8, mode="max")
    assert d.kernel is the(F.DEFAULT_KERNEL) and d.point is None
    assert "no measurement" in str(d) and "'max'" in str(d)
    d = F.decide(table, 100, 8, BAG_N, "float32", "lookup_bag", bag_length=8, mode="mean")
    assert d.kernel is the("onehot_dense") and d.rows_op == "lookup"


def test_explain_names_the_mode_the_bag_lengths_and_the_rows_bag_length(env):
    write_bags(env.results)
    d = kernels.explain(100, 8, BAG_N, op="lookup_bag", bag_length=12, mode="mean")
    text = str(d)
    assert "mode 'mean'" in text and "bag lengths 8-15" in text and "bag length 8," in text
    assert d.bag_lengths == (8, 15) and d.mode == "mean" and d.op == "lookup_bag"
    assert d.kernel.name in text and "local table" in text
    assert "bag" not in str(kernels.explain(100, 8))  # the lookups' explanation is as it was


# --------------------------------------------------------------------------------------------
# the cache and the arguments
# --------------------------------------------------------------------------------------------


def test_the_cache_key_holds_the_bag_length_bucket_and_the_mode(env):
    write_bags(env.results)
    F._CACHE.clear()
    f32 = kernels.FORMATS["float32"]
    kernels.for_call(BAG, 100, 8, BAG_N, f32, bag_length=8, mode="max")
    kernels.fastest(100, 8, BAG_N, op="lookup_bag", bag_length=15, mode="max")  # same bucket
    kernels.fastest(100, 8, BAG_N, op="lookup_bag", bag_length=16, mode="max")
    kernels.fastest(100, 8, BAG_N, op="lookup_bag", bag_length=8, mode="sum")
    kernels.fastest(100, 8, BAG_N)
    n = BAG_N.bit_length()
    assert set(F._CACHE) == {
        ("lookup_bag", 100, 8, n, "float32", 4, "max"),
        ("lookup_bag", 100, 8, n, "float32", 5, "max"),
        ("lookup_bag", 100, 8, n, "float32", 4, "sum"),
        ("lookup", 100, 8, n, "float32"),  # the lookups' key is as it was
    }
    a = kernels.explain(100, 8, BAG_N, op="lookup_bag", bag_length=9, mode="max")
    assert a is kernels.explain(100, 8, BAG_N, op="lookup_bag", bag_length=15, mode="max")


def test_for_call_with_a_mode_lookup_bag_does_not_know_gives_the_default_kernel(env):
    write_bags(env.results)
    f32 = kernels.FORMATS["float32"]
    for mode in ("median", ["sum"], np.array(["sum", "max"]), b"sum"):
        k = kernels.for_call(BAG, 100, 8, BAG_N, f32, bag_length=8, mode=mode)
        assert k is the(F.DEFAULT_KERNEL)


@pytest.mark.parametrize("op", ["lookup", "lookup_grad"])
@pytest.mark.parametrize("kw", [dict(bag_length=8), dict(mode="sum"),
                                dict(bag_length=8, mode="max")], ids=["bag_length", "mode", "both"])
def test_bag_arguments_for_a_lookup_operation_are_a_type_error_naming_them(env, op, kw):
    for f in (kernels.fastest, kernels.explain):
        with pytest.raises(TypeError) as exc:
            f(100, 8, op=op, **kw)
        message = str(exc.value)
        assert all(f"{k}=" in message for k in kw) and "lookup_bag" in message and op in message


@pytest.mark.parametrize("kw,error", [
    (dict(mode="median"), ValueError), (dict(mode=3), ValueError),
    (dict(bag_length=-1), ValueError), (dict(bag_length=2.5), ValueError),
    (dict(bag_length="8"), ValueError), (dict(bag_length=True), TypeError),
    (dict(bag_length=None, mode=None), None), (dict(bag_length=np.int64(8)), None),
])
def test_bag_arguments_are_checked(env, kw, error):
    if error is None:
        assert kernels.fastest(100, 8, op="lookup_bag", **kw) in kernels.KERNELS.values()
    else:
        with pytest.raises(error):
            kernels.fastest(100, 8, op="lookup_bag", **kw)


def test_without_bag_length_and_mode_a_bag_decision_is_for_bag_length_1_and_sum(env):
    write_bags(env.results)
    d = kernels.explain(100, 8, BAG_N, op="lookup_bag")
    assert d.mode == "sum" and d.bag_lengths == (1, 1) and d.point["bag_length"] == 1
    assert d is kernels.explain(100, 8, BAG_N, op="lookup_bag", bag_length=1, mode="sum")


# --------------------------------------------------------------------------------------------
# kernel="auto" calls
# --------------------------------------------------------------------------------------------


@pytest.fixture
def spy(monkeypatch):
    calls = []
    for name, k in kernels.KERNELS.items():
        for meth in ("lookup_bag", "lookup_bag_grad"):
            orig = getattr(k, meth)

            def wrapper(*a, _orig=orig, _name=name, _meth=meth, **kw):
                calls.append((_name, _meth))
                return _orig(*a, **kw)

            monkeypatch.setattr(k, meth, wrapper)
    return calls


@pytest.mark.parametrize("mode", MODES)
def test_auto_bags_run_the_decided_kernel_and_match_numpy_take(env, spy, mode):
    write_bags(env.results)
    V, D, b = 1000, 32, 8
    rng = np.random.default_rng(5)
    W = make_weights(V, D, np.float32, seed=4)
    ids = rng.integers(0, V, size=(6, b))  # 2-D: 6 bags of 8
    want = kernels.fastest(V, D, ids.size, op="lookup_bag", bag_length=b, mode=mode)
    spy.clear()
    got = kernels.lookup_bag(W, ids, mode=mode, kernel="auto")
    assert spy == [(want.name, "lookup_bag")], spy
    BAG.assert_matches(got, W, ids, None, mode)
    G = rng.integers(-4, 4, size=(6, D)).astype(np.float32)
    want = kernels.fastest(V, D, ids.size, op="lookup_bag_grad", bag_length=b, mode=mode)
    spy.clear()
    dW = kernels.lookup_bag_grad(G, ids, vocab_size=V, mode=mode, weights=W, kernel="auto")
    assert spy == [(want.name, "lookup_bag_grad")], spy
    ref = kernels.lookup_bag_grad(G, ids, vocab_size=V, mode=mode, weights=W)
    assert_bitwise_equal(dW, ref) if mode in ("max", "sum") else \
        np.testing.assert_allclose(dW, ref, rtol=1e-6, atol=1e-6)


def test_auto_bags_with_offsets_use_the_calls_bag_length(env, spy):
    # bags of 64 ids at (1000, 8): BAG_WIN says onehot_dense, which runs sum but not max
    write_bags(env.results)
    W = make_weights(1000, 8, np.float32, seed=1)
    ids = np.random.default_rng(2).integers(0, 1000, size=640)
    offsets = np.arange(0, 640, 64)
    for mode in ("sum", "max"):
        spy.clear()
        kernels.lookup_bag(W, ids, offsets, mode=mode, kernel="auto")
        want = expected(bag_times(BAG_WIN), (1000, 8, 64), "lookup_bag", mode)
        assert spy == [(want, "lookup_bag")], (mode, spy)


W_OK = make_weights(10, 4, np.float32)
IDS2 = np.array([[0, 1], [9, 9]])
G_OK = np.ones((2, 4), np.float32)
BAG_ERRORS = {
    "mode-unknown": lambda k: kernels.lookup_bag(W_OK, IDS2, mode="median", kernel=k),
    "mode-list": lambda k: kernels.lookup_bag(W_OK, IDS2, mode=["sum"], kernel=k),
    "id-too-large": lambda k: kernels.lookup_bag(W_OK, np.array([[0, 10]]), kernel=k),
    "weights-int": lambda k: kernels.lookup_bag(np.ones((10, 4), np.int32), IDS2, kernel=k),
    "offsets-scalar": lambda k: kernels.lookup_bag(W_OK, np.array([0, 1]), 0, kernel=k),
    "offsets-with-2d": lambda k: kernels.lookup_bag(W_OK, IDS2, np.array([0]), kernel=k),
    "offsets-decreasing": lambda k: kernels.lookup_bag(W_OK, np.arange(4), [0, 3, 1], kernel=k),
    "include-last-not-bool": lambda k: kernels.lookup_bag(W_OK, np.arange(4), [0, 4],
                                                          include_last_offset=np.array([1, 2]),
                                                          kernel=k),
    "max-with-weights": lambda k: kernels.lookup_bag(W_OK, IDS2, mode="max",
                                                     per_sample_weights=np.ones((2, 2), np.float32),
                                                     kernel=k),
    "grad-no-vocab": lambda k: kernels.lookup_bag_grad(G_OK, IDS2, kernel=k),
    "grad-no-vocab-bad-grad": lambda k: kernels.lookup_bag_grad("x", IDS2, kernel=k),
    "grad-vocab-float": lambda k: kernels.lookup_bag_grad(G_OK, IDS2, vocab_size=10.0, kernel=k),
    "grad-weights-scalar": lambda k: kernels.lookup_bag_grad(G_OK, IDS2, weights=3.0, kernel=k),
    "grad-wrong-bags": lambda k: kernels.lookup_bag_grad(np.ones((3, 4), np.float32), IDS2,
                                                         vocab_size=10, kernel=k),
    "grad-max-without-weights": lambda k: kernels.lookup_bag_grad(G_OK, IDS2, vocab_size=10,
                                                                  mode="max", kernel=k),
    "grad-mode-unknown": lambda k: kernels.lookup_bag_grad(G_OK, IDS2, vocab_size=10,
                                                           mode="avg", kernel=k),
}


@pytest.mark.parametrize("case", sorted(BAG_ERRORS))
def test_auto_bags_raise_exactly_what_the_named_kernels_raise(env, case):
    write_bags(env.results)
    auto = outcome(lambda: BAG_ERRORS[case]("auto"))
    named = {n: outcome(lambda: BAG_ERRORS[case](n)) for n in can_run(BAG, "sum")}
    assert named[F.DEFAULT_KERNEL][0] is not None, "test bug: the case is not an error"
    for n, o in named.items():
        assert auto == o, f"auto: {auto}, {n}: {o}"


# --------------------------------------------------------------------------------------------
# python -m kernels
# --------------------------------------------------------------------------------------------


def parse_cli(text):
    """{section name: {(V, D[, bag_length]): winner}} of format_table's text."""
    out, section = {}, None
    for line in text.splitlines():
        head = line.split(" (", 1)[0]
        if head in kernels.OPERATIONS and line.startswith(head + " (n = "):
            section = out.setdefault(head, {})
            bags = head.startswith("lookup_bag")
            continue
        parts = line.split()
        if section is not None and len(parts) > 3 and all(p.isdigit() for p in parts[:2]):
            key = tuple(int(p) for p in parts[:3 if bags else 2])
            assert key not in section, f"two lines for {key}"
            section[key] = parts[3 if bags else 2]
    return out


def test_cli_prints_a_section_per_bag_operation_with_a_bag_length_column(env, tmp_path):
    write_bags(env.results)
    proc = subprocess.run([sys.executable, "-m", "kernels", "--config", str(env.config)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    parsed = parse_cli(proc.stdout)
    assert parsed["lookup_bag"] == BAG_WIN and parsed["lookup_bag_grad"] == BAG_GRAD_WIN
    assert parsed["lookup"] == FWD_WIN and parsed["lookup_grad"] == BWD_WIN
    header = next(ln for ln in proc.stdout.splitlines() if "bag_length" in ln and "fastest" in ln)
    assert header.split()[:4] == ["vocab_size", "dim", "bag_length", "fastest"]
    assert f"lookup_bag (n = {BAG_N:,} ids" in proc.stdout
    # grouped by bag length, then V, then D
    keys = list(parsed["lookup_bag"])
    assert keys == sorted(keys, key=lambda k: (k[2], k[0], k[1]))


def test_cli_gbps_of_a_bag_row_uses_the_bag_operations_bytes(env):
    write_bags(env.results, publish_table=False)
    table = T.table_from_results()
    text = T.format_table(table)
    line = next(ln for ln in text.split("lookup_bag (n", 1)[1].splitlines()
                if ln.split()[:3] == ["1000", "32", "64"])
    gbps = float(line.split()[5])
    want = BAG.moved_bytes(BAG_N, 1000, 32, 4, bag_length=64) / 1e-6 / 1e9
    assert math.isclose(gbps, want, rel_tol=0.01), (line, want)


def test_cli_on_a_table_without_bag_rows_prints_no_bag_section(env, capsys):
    T.main(["--config", str(env.config)])  # no results: the shipped table (lookup rows only)
    out = capsys.readouterr().out
    assert "lookup_bag" not in out and set(parse_cli(out)) == {"lookup", "lookup_grad"}


# -- low-precision formats: their own decision rows (bench_formats.LowPrecision) ---------------


class _Run:
    """The part of kernels._asv_results.Run that _format_rows reads."""

    def __init__(self, records):
        self._records = records

    def records(self, key):
        return self._records.get(key)


def _lowp_records(times):
    names = ["format", "kernel", "vocab_size", "dim"]
    return names, [(dict(zip(names, key)), t) for key, t in times.items()]


def test_format_rows_come_from_the_lowprecision_benchmark_and_leave_float32_to_its_own():
    from kernels import _decision_table as T
    from kernels._ops import LOOKUP, LOOKUP_BAG

    times = {("int8", "cython_gather", 10_000, 64): 1e-4,
             ("int8", "numba_gather", 10_000, 64): 3e-4,
             ("float32", "numba_gather", 10_000, 64): 1e-5,
             ("int4", "numba_gather", 10_000, 64): None}
    run = _Run({LOOKUP.format_benchmark: _lowp_records(times),
                LOOKUP_BAG.format_benchmark: _lowp_records(times)})
    rows = T._format_rows(run, LOOKUP)
    assert rows == [{"vocab_size": 10_000, "dim": 64, "n_ids": LOOKUP.format_benchmark_n_ids,
                     "dtype": "int8", "times": {"cython_gather": 1e-4, "numba_gather": 3e-4}}]
    bag_rows = T._format_rows(run, LOOKUP_BAG)
    assert [r["bag_length"] for r in bag_rows] == [LOOKUP_BAG.format_bag_length]
    assert T._format_rows(_Run({}), LOOKUP) == []


def test_a_table_is_decided_by_its_format_rows_and_float32_winners_ignore_them():
    from kernels import _decision_table as T

    table = F.validate_table({
        "format": F.TABLE_FORMAT, "source": "test", "machine": "m", "commit": "c", "date": "d",
        "ops": {"lookup": [
            {"vocab_size": 1_000_000, "dim": 64, "n_ids": 65_536, "dtype": "float32",
             "times": {"numba_gather": 1e-3, "cython_gather": 2e-3, "numpy_take": 5e-3}},
            {"vocab_size": 1_000_000, "dim": 64, "n_ids": 65_536, "dtype": "int8",
             "times": {"numba_gather": 3e-3, "cython_gather": 1e-3, "numpy_take": 5e-3}},
        ]},
        "copy": {}}, "test")
    assert F.decide(table, 1_000_000, 64, 65_536, "float32").kernel.name == "numba_gather"
    assert F.decide(table, 1_000_000, 64, 65_536, "int8").kernel.name == "cython_gather"
    assert F.decide(table, 2_000_000, 128, 65_536, "int8").kernel.name == "cython_gather"
    assert T.winners(table, "lookup") == {(1_000_000, 64): "numba_gather"}
    assert T.winners(table, "lookup", "int8") == {(1_000_000, 64): "cython_gather"}
    text = T.format_table(table)
    assert "lookup (n = 65,536 ids, float32" in text and "lookup (n = 65,536 ids, int8" in text
