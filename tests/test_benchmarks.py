"""The asv suite: it is valid, a small subset runs without failures, and its helpers are right.

A broken benchmark fails here (and so in CI) rather than as a "failed" cell in a 20-minute run.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import kernels
from kernels import Kernel
from kernels._formats import FLOAT
from kernels._ops import LOOKUP, LOOKUP_BAG, LOOKUP_BAG_GRAD, LOOKUP_GRAD

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import (  # noqa: E402  (the suite lives beside the package, not inside it)
    bench_bags,
    bench_distribution,
    bench_formats,
    bench_grad,
    bench_lookup,
    bench_onehot,
    bench_peers,
    bench_threads,
    bench_training,
    common,
)

# One small parameter set of every benchmark, plus one the budget makes n/a (a NotImplementedError
# in setup, which must not count as a failure).
SUBSET = [
    r"Lookup\.\w+\('(onehot_dense|numba_gather|cython_gather)', 1000, 8\)",
    r"Lookup\.time_lookup\('onehot_dense', 1000000, 8\)",
    r"LookupGrad\.\w+\('(onehot_sparse|numpy_take|numba_gather)', 1000, 8\)",
    r"Roofline\.\w+\(8\)",
    r"Distribution\.time_lookup\('zipf', '(numpy_take|cython_gather)', \(10000, 64\)\)",
    r"OneHotMatmul\.\w+\('(dense|sparse)', 100, 8\)",
    r"Threads\.time_lookup\('numba_gather', 'all', \(1000, 512\)\)",
    r"Peers\.time_lookup\('index_select_out', \(10000, 64\)\)",
    r"Bags\.time_bag\('(onehot_dense|numpy_take|cython_gather)', 1000, 16, 8\)",
    r"BagPeers\.time_bag\('torch_embedding_bag', 1000, 16, 8\)",
    r"SparseTraining\.time_op\('(sparse_grad|adagrad)', 10000, 16\)",
    r"SparseTraining\.time_op\('dense_grad', 10000000, 16\)",
]


def _asv(*args, home):
    """Run asv on this checkout's config with HOME in a temporary directory (its machine file)."""
    env = dict(os.environ, HOME=str(home))
    return subprocess.run(
        [sys.executable, "-m", "asv", *args, "--config", str(ROOT / "asv.conf.json")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )


# ----------------------------------------------------------------------------------------------
# The suite through asv


@pytest.mark.slow
def test_asv_check_finds_no_problems(tmp_path):
    result = _asv("check", "--python=same", home=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "No problems found" in output, output


@pytest.mark.slow
def test_a_quick_dry_run_of_a_subset_has_no_failed_benchmark(tmp_path):
    machine = _asv("machine", "--yes", home=tmp_path)
    assert machine.returncode == 0, machine.stdout + machine.stderr
    args = ["run", "--python=same", "--quick", "--dry-run", "--show-stderr"]
    for regex in SUBSET:
        args += ["--bench", regex]
    result = _asv(*args, home=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "failed" not in output, output
    assert "Traceback" not in output, output
    for name in ("Lookup.time_lookup", "Lookup.peakmem_lookup", "Lookup.track_bandwidth",
                 "LookupGrad.time_lookup_grad", "Roofline.time_copy", "Distribution.time_lookup",
                 "OneHotMatmul.time_matmul", "Threads.time_lookup", "Peers.time_lookup",
                 "Bags.time_bag", "BagPeers.time_bag", "SparseTraining.time_op"):
        assert name in output, f"{name} did not run:\n{output}"


# ----------------------------------------------------------------------------------------------
# The contract other code reads from the results


@pytest.mark.parametrize(
    "cls, methods, param_names",
    [
        (bench_lookup.Lookup, ["time_lookup", "peakmem_lookup", "track_bandwidth"],
         ["kernel", "vocab_size", "dim"]),
        (bench_lookup.Roofline, ["time_copy", "track_bandwidth"], ["dim"]),
        (bench_grad.LookupGrad, ["time_lookup_grad", "peakmem_lookup_grad"],
         ["kernel", "vocab_size", "dim"]),
        (bench_distribution.Distribution, ["time_lookup"], ["distribution", "kernel", "table"]),
        (bench_onehot.OneHotMatmul, ["time_matmul", "time_encode", "time_gather"],
         ["form", "vocab_size", "dim"]),
        (bench_threads.Threads, ["time_lookup"], ["kernel", "threads", "table"]),
        (bench_peers.Peers, ["time_lookup"], ["method", "table"]),
        (bench_bags.Bags, ["time_bag"], ["kernel", "vocab_size", "dim", "bag_length"]),
        (bench_bags.BagBandwidth, ["track_bandwidth"],
         ["kernel", "vocab_size", "dim", "bag_length"]),
        (bench_bags.BagModes, ["time_bag"], ["kernel", "mode", "weighted"]),
        (bench_bags.BagGrad, ["time_bag_grad"], ["kernel", "vocab_size", "dim", "bag_length"]),
        (bench_peers.BagPeers, ["time_bag"], ["method", "vocab_size", "dim", "bag_length"]),
        (bench_training.SparseTraining, ["time_op"], ["op", "vocab_size", "dim"]),
        (bench_training.SparseTrainingBags, ["time_op"], ["op", "vocab_size", "dim"]),
        (bench_formats.LowPrecision, ["time_lookup", "time_bag"],
         ["format", "kernel", "vocab_size", "dim"]),
        (bench_formats.LowPrecisionMemory, ["peakmem_lookup", "track_table_bytes"], ["format"]),
        (bench_peers.FormatPeers, ["time_bag"], ["format", "vocab_size", "dim"]),
        (bench_peers.FormatFbgemmPeer, ["time_bag"], ["format", "vocab_size", "dim"]),
        (bench_peers.TrainingPeers, ["time_step"], ["method", "vocab_size", "dim"]),
        (bench_training.SparseTrainingMemory, ["peakmem_step", "track_step_bytes"],
         ["n", "dim"]),
    ],
)
def test_benchmark_classes_keep_their_names(cls, methods, param_names):
    for method in methods:
        assert callable(getattr(cls, method))
    assert cls.param_names == param_names
    assert len(cls.params) == len(param_names)


def test_the_lookup_grid_is_every_kernel_by_every_size():
    assert set(common.KERNELS) == set(kernels.KERNELS)
    assert bench_lookup.Lookup.params == [
        common.KERNELS,
        [100, 1_000, 10_000, 100_000, 1_000_000],
        [8, 32, 128, 512],
    ]
    assert bench_grad.LookupGrad.params == bench_lookup.Lookup.params
    assert bench_lookup.Lookup.track_bandwidth.unit == "GB/s"
    assert bench_lookup.Roofline.track_bandwidth.unit == "GB/s"


# ----------------------------------------------------------------------------------------------
# The correctness checks


@pytest.fixture
def small():
    W = common.make_weights(50, 8)
    ids = common.uniform_ids(50, shape=(4, 7))
    return W, ids, np.empty((4, 7, 8), np.float32)


def _kernel(gather, scatter_add=None):
    def no_scatter(G, ids, dW, zeroed):
        raise AssertionError("not used")

    return Kernel(
        "wrong",
        "a deliberately wrong kernel",
        {(LOOKUP, FLOAT): gather, (LOOKUP_GRAD, FLOAT): scatter_add or no_scatter},
        compiled=False,
        family="gather",
        colour="#000000",
    )


@pytest.mark.parametrize("name", common.KERNELS)
def test_the_check_accepts_every_kernel(name, small):
    W, ids, out = small
    common.check_lookup(name, W, ids, out)
    G = common.make_grad(8, shape=(4, 7))
    common.check_lookup_grad(name, G, ids, 50, np.empty((50, 8), np.float32))


def test_the_check_rejects_a_kernel_that_gathers_the_wrong_rows(small):
    W, ids, out = small

    def off_by_one(W, ids, out):
        np.take(W, (ids + 1) % W.shape[0], axis=0, out=out)

    with pytest.raises(AssertionError, match="differ from W"):
        common.check_lookup(_kernel(off_by_one), W, ids, out)


def test_the_check_rejects_a_kernel_that_leaves_rows_unwritten(small):
    W, ids, out = small

    def half(W, ids, out):
        np.take(W, ids[: len(ids) // 2], axis=0, out=out[: len(ids) // 2])

    with pytest.raises(AssertionError):
        common.check_lookup(_kernel(half), W, ids, out)


def test_the_check_is_bitwise(small):
    W, ids, out = small
    W[ids.reshape(-1)[0]] = -0.0  # the one-hot kernels return +0.0 here, by design

    with pytest.raises(AssertionError):
        common.check_lookup("onehot_dense", W, ids, out)
    common.check_lookup("numpy_take", W, ids, out)


def test_the_grad_check_rejects_a_scatter_that_drops_duplicates(small):
    _, ids, _ = small
    ids = ids.copy()
    ids[0, :3] = 7  # a duplicate for sure
    G = common.make_grad(8, shape=(4, 7))

    def last_write_wins(G, ids, dW, zeroed):
        dW.fill(0)
        dW[ids] = G

    with pytest.raises(AssertionError, match="reference"):
        common.check_lookup_grad(
            _kernel(None, last_write_wins), G, ids, 50, np.empty((50, 8), np.float32)
        )


def test_the_grad_check_rejects_a_scatter_that_does_not_zero_dW(small):
    _, ids, _ = small
    G = common.make_grad(8, shape=(4, 7))

    def no_zeroing(G, ids, dW, zeroed):
        hit = np.unique(ids)
        dW[hit] = 0
        np.add.at(dW, ids, G)

    with pytest.raises(AssertionError, match="hit by no id"):
        common.check_lookup_grad(
            _kernel(None, no_zeroing), G, ids, 50, np.empty((50, 8), np.float32)
        )


# ----------------------------------------------------------------------------------------------
# The data makers


@pytest.mark.parametrize("vocab_size", [1, 10, 1_000, 1_000_000])
def test_zipf_ids_are_in_range_skewed_and_seeded(vocab_size):
    ids = common.zipf_ids(vocab_size)
    assert ids.shape == common.BATCH_SHAPE and ids.dtype == np.int64
    assert ids.min() >= 0 and ids.max() < vocab_size
    np.testing.assert_array_equal(ids, common.zipf_ids(vocab_size))
    if vocab_size >= 1_000:
        counts = np.bincount(ids.ravel(), minlength=vocab_size)
        assert counts.argmax() == 0  # the most frequent id is the first row
        assert counts[0] > 10 * counts[vocab_size // 2 :].max()
        assert len(np.unique(ids)) < len(np.unique(common.uniform_ids(vocab_size)))


def test_uniform_ids_are_in_range_and_seeded():
    ids = common.uniform_ids(1_000)
    assert ids.min() >= 0 and ids.max() < 1_000 and ids.dtype == np.int64
    np.testing.assert_array_equal(ids, common.uniform_ids(1_000))


def test_weights_have_distinct_finite_rows_and_no_negative_zero():
    W = common.make_weights(10_000, 8)
    assert W.dtype == np.float32 and W.flags.c_contiguous
    assert np.isfinite(W).all()
    assert not (np.signbit(W) & (W == 0)).any()
    assert len(np.unique(W, axis=0)) == 10_000
    np.testing.assert_array_equal(W, common.make_weights(10_000, 8))


def test_data_is_built_once_per_process():
    common.clear_cache()
    first = common.lookup_data(100, 8)
    assert all(a is b for a, b in zip(first, common.lookup_data(100, 8)))
    common.clear_cache()


# ----------------------------------------------------------------------------------------------
# The budget


@pytest.mark.parametrize("vocab_size", [100_000, 1_000_000])
@pytest.mark.parametrize("backward", [False, True])
def test_the_budget_makes_dense_one_hot_with_a_large_vocabulary_na(vocab_size, backward):
    assert common.over_budget("onehot_dense", vocab_size, 8, backward=backward)
    with pytest.raises(NotImplementedError, match="onehot_dense"):
        common.require_budget("onehot_dense", vocab_size, 8, backward=backward)


def test_benchmark_setup_raises_not_implemented_before_building_data():
    common.clear_cache()
    with pytest.raises(NotImplementedError):
        bench_lookup.Lookup().setup("onehot_dense", 1_000_000, 512)
    with pytest.raises(NotImplementedError):
        bench_grad.LookupGrad().setup("onehot_dense", 1_000_000, 512)
    assert not common._CACHE


def test_the_budget_runs_everything_else_of_the_grid():
    for kernel in common.KERNELS:
        for V in common.VOCAB_SIZES:
            for D in common.DIMS:
                for backward in (False, True):
                    reason = common.over_budget(kernel, V, D, backward=backward)
                    if kernel == "onehot_dense" and V >= 100_000:
                        assert reason
                    else:
                        assert reason is None, (kernel, V, D, backward, reason)


def test_bandwidth_formulas_are_the_operations_own():
    lookup, grad = kernels.OPERATIONS["lookup"], kernels.OPERATIONS["lookup_grad"]
    assert lookup.moved_bytes(16_384, 1_000, 8) == 2 * 16_384 * 8 * 4
    assert grad.moved_bytes(16_384, 1_000, 8) == (3 * 16_384 * 8 + 1_000 * 8) * 4
    assert not hasattr(common, "gather_bytes") and not hasattr(common, "scatter_bytes")
    assert common.gbps(2e9, 2.0) == 1.0
    assert common.best_median_seconds(lambda: None, batches=2, batch_seconds=0.001) >= 0


# ----------------------------------------------------------------------------------------------
# Bags


def _has_bags(name, op=LOOKUP_BAG):
    return kernels.KERNELS[name].implements(op, "float32")


def test_the_bag_grid_is_every_kernel_by_every_size_and_bag_length():
    assert bench_bags.Bags.params == [
        common.KERNELS,
        [1_000, 10_000, 100_000, 1_000_000],
        [16, 64, 256],
        [1, 8, 64],
    ]
    assert bench_bags.BagModes.params == [common.KERNELS, ["sum", "mean", "max", "sqrtn"],
                                          [False, True]]
    assert bench_bags.BagGrad.params == [common.KERNELS, [10_000, 1_000_000], [64], [1, 8]]
    assert bench_peers.BagPeers.params[1:] == bench_bags.Bags.params[1:]
    assert bench_bags.BagBandwidth.track_bandwidth.unit == "GB/s"
    assert all(common.BAG_N_IDS % length == 0 for length in common.BAG_LENGTHS)


@pytest.mark.parametrize("op", [LOOKUP_BAG, LOOKUP_BAG_GRAD])
def test_the_operations_name_the_bag_benchmarks_with_their_parameters_in_order(op):
    module, cls, method = op.benchmark.split(".")
    assert module == "bench_bags"
    benchmark = getattr(bench_bags, cls)
    assert callable(getattr(benchmark, method))
    assert benchmark.param_names == ["kernel", "vocab_size", "dim", op.extra_param]


@pytest.mark.parametrize("name", common.KERNELS)
@pytest.mark.parametrize("bag_length", [1, 8, 64])
def test_bags_set_up_check_and_time_every_kernel_or_are_na(name, bag_length):
    common.clear_cache()
    bench = bench_bags.Bags()
    if not _has_bags(name):
        with pytest.raises(NotImplementedError, match=name):
            bench.setup(name, 1_000, 16, bag_length)
        assert not common._CACHE  # n/a before any data is built
        return
    bench.setup(name, 1_000, 16, bag_length)  # runs the check
    bench.time_bag(name, 1_000, 16, bag_length)
    assert bench.out.shape == (common.BAG_N_IDS // bag_length, 16)
    common.assert_bag(bench.out, bench.W, bench.ids, bench.offsets)
    common.clear_cache()


@pytest.mark.parametrize("name", common.KERNELS)
def test_the_bag_bandwidth_is_measured_with_the_operations_formula(name, monkeypatch):
    common.clear_cache()
    bench = bench_bags.BagBandwidth()
    if not _has_bags(name):
        with pytest.raises(NotImplementedError):
            bench.setup(name, 1_000, 64, 8)
        return
    bench.setup(name, 1_000, 64, 8)
    monkeypatch.setattr(common, "best_median_seconds", lambda fn: 1.0)
    expected = LOOKUP_BAG.moved_bytes(common.BAG_N_IDS, 1_000, 64, 4, 8) / 1e9
    assert bench.track_bandwidth(name, 1_000, 64, 8) == expected
    common.clear_cache()


@pytest.mark.parametrize("name", common.KERNELS)
@pytest.mark.parametrize("mode", common.BAG_MODES)
@pytest.mark.parametrize("weighted", [False, True])
def test_bag_modes_run_where_the_kernel_has_the_mode_and_are_na_elsewhere(name, mode, weighted):
    bench = bench_bags.BagModes()
    K = kernels.KERNELS[name]
    n_bags = common.BAG_N_IDS // bench.BAG_LENGTH
    beyond = K.over_budget(LOOKUP_BAG, bench.VOCAB_SIZE, bench.DIM, n_bags, 4)  # onehot_dense
    if not _has_bags(name) or mode not in K.bag_modes or (mode == "max" and weighted) or beyond:
        with pytest.raises(NotImplementedError):
            bench.setup(name, mode, weighted)
        return
    bench.setup(name, mode, weighted)
    bench.time_bag(name, mode, weighted)
    common.assert_bag(bench.out, bench.W, bench.ids, bench.offsets, mode, bench.psw)


def test_the_one_hot_kernels_have_no_max_bags_and_nothing_takes_weights_with_max():
    for name in ("onehot_dense", "onehot_sparse"):
        assert "max" in common.bag_over_budget(name, 1_000, 16, 8, mode="max")
    assert "per_sample_weights" in common.bag_over_budget("numpy_take", 1_000, 16, 8,
                                                          mode="max", weighted=True)


@pytest.mark.parametrize("name", common.KERNELS)
def test_bag_grad_sets_up_checks_and_times_every_kernel_or_is_na(name):
    common.clear_cache()
    bench = bench_bags.BagGrad()
    if not _has_bags(name, LOOKUP_BAG_GRAD) or name == "onehot_dense":
        with pytest.raises(NotImplementedError, match=name):
            bench.setup(name, 10_000, 64, 8)
        assert not common._CACHE
        return
    bench.setup(name, 10_000, 64, 8)
    bench.time_bag_grad(name, 10_000, 64, 8)
    expanded = common.expanded_bag_grad(bench.G, bench.offsets, bench.ids.shape[0])
    common.assert_grad(bench.dW, expanded, bench.ids, 10_000)
    common.clear_cache()


def _bag_kernel(bag, bag_grad=None):
    def unused(*args):
        raise AssertionError("not used")

    return Kernel(
        "wrong",
        "a deliberately wrong bag kernel",
        {(LOOKUP, FLOAT): unused, (LOOKUP_GRAD, FLOAT): unused, (LOOKUP_BAG, FLOAT): bag,
         (LOOKUP_BAG_GRAD, FLOAT): bag_grad or unused},
        compiled=False,
        family="gather",
        colour="#000000",
    )


def _small_bags():
    W = common.make_weights(50, 8)
    ids, offsets = common.uniform_ids(50, shape=(28,)), np.arange(0, 28, 4)
    return W, ids, offsets, np.empty((7, 8), np.float32)


def test_the_bag_check_accepts_a_right_kernel_and_rejects_one_that_drops_an_id():
    W, ids, offsets, out = _small_bags()

    def right(W, ids, offsets, mode, psw, pad, out):
        out[...] = np.add.reduceat(W[ids], offsets[:-1], axis=0)

    def drops_the_last_id(W, ids, offsets, mode, psw, pad, out):
        out[...] = np.add.reduceat(W[ids[:-1]], offsets[:-1], axis=0)

    common.check_bag(_bag_kernel(right), W, ids, offsets, out)
    with pytest.raises(AssertionError, match="lookup_bag|wrong"):
        common.check_bag(_bag_kernel(drops_the_last_id), W, ids, offsets, out)


def test_the_bag_grad_check_rejects_a_gradient_that_ignores_the_bags():
    W, ids, offsets, _ = _small_bags()
    G = common.make_grad(8, shape=(7,))

    def right(G, ids, offsets, mode, psw, pad, W, dW, zeroed):
        dW.fill(0)
        np.add.at(dW, ids, G[np.repeat(np.arange(7), np.diff(offsets))])

    def first_bag_only(G, ids, offsets, mode, psw, pad, W, dW, zeroed):
        dW.fill(0)
        np.add.at(dW, ids, np.broadcast_to(G[0], (ids.shape[0], 8)))

    common.check_bag_grad(_bag_kernel(None, right), G, ids, offsets, 50, np.empty((50, 8),
                                                                                  np.float32))
    with pytest.raises(AssertionError, match="reference"):
        common.check_bag_grad(_bag_kernel(None, first_bag_only), G, ids, offsets, 50,
                              np.empty((50, 8), np.float32))


def test_the_bag_budget_gives_onehot_dense_its_bags_as_block_rows():
    n = common.BAG_N_IDS
    # forward: the multi-hot block has B = n / bag_length rows
    assert common.bag_over_budget("onehot_dense", 10_000, 64, 1) is not None  # 32,768 x 1e4
    assert common.bag_over_budget("onehot_dense", 10_000, 64, 8) is None  # 4,096 x 1e4
    assert common.bag_over_budget("onehot_dense", 1_000_000, 16, 64) is not None
    # backward: the scatter's one-hot has a row per id
    assert common.bag_over_budget("onehot_dense", 10_000, 64, 8, backward=True) is not None
    assert kernels.KERNELS["onehot_dense"].over_budget(LOOKUP_BAG, 10_000, 64, n // 8, 4) is None
    with pytest.raises(NotImplementedError, match="onehot_dense"):
        common.require_bag("onehot_dense", 1_000_000, 256, 1)


def test_bag_setup_raises_not_implemented_before_building_data():
    common.clear_cache()
    with pytest.raises(NotImplementedError):
        bench_bags.Bags().setup("onehot_dense", 1_000_000, 256, 1)
    with pytest.raises(NotImplementedError):
        bench_bags.BagGrad().setup("onehot_dense", 1_000_000, 64, 1)
    with pytest.raises(NotImplementedError):
        bench_bags.BagModes().setup("onehot_sparse", "max", False)
    assert not common._CACHE


def test_the_bag_budget_runs_every_kernel_with_bags_except_onehot_dense_beyond_its_limits():
    for kernel in common.KERNELS:
        if not _has_bags(kernel):
            continue
        for V in common.BAG_VOCAB_SIZES:
            for D in common.BAG_DIMS:
                for L in common.BAG_LENGTHS:
                    reason = common.bag_over_budget(kernel, V, D, L)
                    if kernel != "onehot_dense":
                        assert reason is None, (kernel, V, D, L, reason)


def test_bag_data_is_seeded_built_once_and_shared_by_bag_lengths():
    common.clear_cache()
    W, ids, offsets, out = common.bag_data(1_000, 16, 8)
    assert W is common.bag_data(1_000, 16, 64)[0]
    assert ids.shape == (common.BAG_N_IDS,) and ids.dtype == np.int64
    assert ids.min() >= 0 and ids.max() < 1_000
    np.testing.assert_array_equal(offsets, np.arange(0, common.BAG_N_IDS, 8))
    assert out.shape == (common.BAG_N_IDS // 8, 16) and out.dtype == np.float32
    assert all(a is b for a, b in zip((W, ids, offsets, out), common.bag_data(1_000, 16, 8)))
    common.clear_cache()
    np.testing.assert_array_equal(ids, common.bag_data(1_000, 16, 8)[1])
    w = common.bag_weights()
    assert w.dtype == np.float32 and w.min() >= 0.5 and w.max() < 1.5
    common.clear_cache()


# ----------------------------------------------------------------------------------------------
# Bag peers: n/a without torch or fbgemm_gpu, checked and timed where they are importable


def test_bag_peers_are_na_without_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    for method in bench_peers.BagPeers.params[0]:
        with pytest.raises(NotImplementedError, match="torch"):
            bench_peers.BagPeers().setup(method, 1_000, 16, 8)


def test_the_fbgemm_peer_is_na_without_fbgemm_gpu(monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.setitem(sys.modules, "fbgemm_gpu", None)
    with pytest.raises(NotImplementedError, match="fbgemm"):
        bench_peers.BagPeers().setup("fbgemm", 1_000, 16, 8)


def test_the_fbgemm_int_peer_is_na_without_fbgemm_gpu(monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.setitem(sys.modules, "fbgemm_gpu", None)
    with pytest.raises(NotImplementedError, match="fbgemm"):
        bench_peers.FormatFbgemmPeer().setup("int8", 1_000, 16)


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_the_fbgemm_int_peer_holds_our_codes_and_sums_them(fmt):
    """FBGEMM's inference bag, filled from one of our tables: int4 gives our sums within the
    summation bound (the same float16 scale and bias); int8 ours of the table with its scale
    and bias rounded to float16, and that table differs from the original."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("fbgemm_gpu")
    rng = np.random.default_rng(3)
    T = kernels.quantize(rng.standard_normal((500, 32)).astype(np.float32), fmt)
    ids = rng.integers(0, 500, 4000)
    offsets = np.sort(rng.integers(0, 4000, 300))
    offsets[0] = 0
    module, reference = bench_peers._fbgemm_nbit_bag(torch, T)
    got = module(torch.from_numpy(ids), torch.from_numpy(np.append(offsets, 4000))).numpy()
    LOOKUP_BAG.assert_matches(got, reference, ids, offsets)
    assert (reference is T) == (fmt == "int4")
    if fmt == "int8":
        assert not np.array_equal(reference.dequantize(), T.dequantize())
    common.clear_cache()
    bench = bench_peers.FormatFbgemmPeer()
    bench.setup(fmt, 1_000, 64)  # runs the check
    bench.time_bag(fmt, 1_000, 64)
    common.clear_cache()


@pytest.mark.parametrize("method", ["torch_embedding_bag", "fbgemm"])
@pytest.mark.parametrize("bag_length", [1, 64])
def test_bag_peers_match_the_reference_where_importable(method, bag_length):
    pytest.importorskip("torch")
    if method == "fbgemm":
        pytest.importorskip("fbgemm_gpu")
    common.clear_cache()
    bench = bench_peers.BagPeers()
    bench.setup(method, 1_000, 16, bag_length)  # runs the check
    W, ids, offsets, _ = common.bag_data(1_000, 16, bag_length)
    common.assert_bag(bench.call().numpy(), W, ids, offsets)
    bench.time_bag(method, 1_000, 16, bag_length)
    common.clear_cache()


# ----------------------------------------------------------------------------------------------
# Training (bench_training): every op sets up, checks and runs in-process at small points


@pytest.mark.parametrize("op", bench_training.SparseTraining.params[0])
@pytest.mark.parametrize("vocab_size, dim", [(100_000, 8), (1_000, 16)])
def test_every_training_op_sets_up_checks_and_runs(op, vocab_size, dim):
    """Small points (V = 1,000: every row is hit; 1e5: most are not), n = 16,384 as the class."""
    common.clear_cache()
    bench = bench_training.SparseTraining()
    bench.setup(op, vocab_size, dim)  # runs the check (the optimizers' first step)
    bench.time_op(op, vocab_size, dim)
    if op in common.OPTIMIZERS:
        W = common.training_table(vocab_size, dim)
        assert bench.opt.weights is W and np.isfinite(W).all()
        hit = np.zeros(vocab_size, bool)
        hit[bench.ids] = True
        untouched = common.make_weights(vocab_size, dim)[~hit]
        np.testing.assert_array_equal(W[~hit].view(np.uint32), untouched.view(np.uint32))
    elif op == "dense_grad":
        common.assert_grad(bench.dW, bench.G, bench.ids, vocab_size)
    elif op == "dense_sgd":  # two steps (the check's and the timed one) of W -= lr * dW
        W, W0 = common.training_table(vocab_size, dim), common.make_weights(vocab_size, dim)
        lr = np.float32(common.TRAINING_LR)
        step = np.float32(lr) * kernels.lookup_grad(bench.G, bench.ids, vocab_size,
                                                     kernel="cython_gather")
        np.testing.assert_array_equal(W, (W0 - step) - step)
    common.clear_cache()


@pytest.mark.parametrize("op", bench_training.SparseTrainingBags.params[0])
def test_every_training_bag_op_sets_up_checks_and_runs(op):
    common.clear_cache()
    bench = bench_training.SparseTrainingBags()
    bench.setup(op, 1_000, 16)  # runs the check (the optimizers' first step)
    bench.time_op(op, 1_000, 16)
    if op in common.OPTIMIZERS:
        W = common.training_table(1_000, 16)
        assert bench.opt.weights is W and np.isfinite(W).all()
        assert not np.array_equal(W, common.make_weights(1_000, 16))
    common.clear_cache()


def test_the_training_check_rejects_a_wrong_sparse_gradient(monkeypatch):
    G, ids = common.make_grad(4, shape=(64,)), common.uniform_ids(50, shape=(64,))
    bench_training._check_sparse_grad(G, ids, 50)
    real = kernels.lookup_grad

    def drops_the_last_row(*args, **kwargs):
        sg = real(*args, **kwargs)
        sg.values[-1] = 0
        return sg

    monkeypatch.setattr(kernels, "lookup_grad", drops_the_last_row)
    with pytest.raises(AssertionError):
        bench_training._check_sparse_grad(G, ids, 50)


def test_the_training_grid_is_na_only_where_the_budget_says_so():
    """dense_grad and dense_sgd beyond V = 1e6 (the scale references), sparse_adam at V = 1e7,
    D = 64 (three 2.5 GB tables), every table at V = 1e7, D = 256 (10 GB); everything else runs.
    n/a is raised before any data is built."""
    ops, vocabs, dims = bench_training.SparseTraining.params
    na = set()
    for op in ops:
        for V in vocabs:
            for D in dims:
                common.clear_cache()
                try:
                    common.require_training_budget(op, V, D)
                except NotImplementedError:
                    na.add((op, V, D))
                    with pytest.raises(NotImplementedError):
                        bench_training.SparseTraining().setup(op, V, D)
                    assert not common._CACHE
    at_1e7_256 = {(op, 10_000_000, 256) for op in ops if op != "sparse_grad"}
    dense_at_1e7 = {(op, 10_000_000, D) for op in ("dense_grad", "dense_sgd") for D in dims}
    assert na == {*dense_at_1e7, ("sparse_adam", 10_000_000, 64), *at_1e7_256}


def test_the_optimizers_state_is_counted_in_tables_from_kernels_optim():
    assert common.optimizer_state_tables("sgd", 16) == 0
    assert common.optimizer_state_tables("adagrad", 16) == 1
    assert common.optimizer_state_tables("rowwise_adagrad", 16) == 1 / 16
    assert common.optimizer_state_tables("sparse_adam", 16) == 2


def test_the_step_memory_benchmark_runs_and_its_step_allocates_with_n_not_v():
    common.clear_cache()
    bench = bench_training.SparseTrainingMemory()
    sizes = {}
    for n in (1_024, 16_384):
        bench.setup(n, 16)
        bench.peakmem_step(n, 16)
        sizes[n] = bench.track_step_bytes(n, 16)
    V, D = bench.vocab_size, 16
    assert sizes[16_384] < V * D * 4 / 10  # far below a dense gradient of the table
    assert sizes[1_024] < sizes[16_384]
    common.clear_cache()


# ----------------------------------------------------------------------------------------------
# Table formats (bench_formats)


@pytest.mark.parametrize("fmt", common.FORMATS)
@pytest.mark.parametrize("kernel", bench_formats.LowPrecision.params[1])
def test_every_format_point_sets_up_checks_and_runs(fmt, kernel):
    common.clear_cache()
    bench = bench_formats.LowPrecision()
    bench.setup(fmt, kernel, 10_000, 64)  # runs the check
    bench.time_lookup(fmt, kernel, 10_000, 64)
    bench.time_bag(fmt, kernel, 10_000, 64)
    common.clear_cache()


def test_format_tables_hold_distinct_rows_and_every_block_is_a_valid_table():
    """format_table tiles one quantized block; each block is shifted, so no row repeats the row
    a block earlier (a gather of the wrong row cannot pass the check)."""
    common.clear_cache()
    for fmt in common.FORMATS:
        T = common.format_table(fmt, 3 * 4096, 16)
        W = T if isinstance(T, np.ndarray) else T.dequantize()
        assert np.isfinite(W).all(), fmt
        assert not np.array_equal(W[:4096], W[4096:8192]), fmt
        assert common.format_name(T) == fmt
    common.clear_cache()


def test_the_format_check_rejects_a_wrong_row():
    common.clear_cache()
    T = common.format_table("int8", 10_000, 64)
    ids = common.uniform_ids(10_000, shape=(1000,))
    out = np.empty((1000, 64), np.float32)
    right = kernels.KERNELS["cython_gather"]
    common.check_format_lookup(right, T, ids, out)
    gather = right.function(LOOKUP, "int8")
    wrong = Kernel("off_by_one", "reads the next row",
                   {(LOOKUP, kernels.FORMATS["int8"]):
                    lambda W, i, o: gather(W, (i + 1) % W.shape[0], o)},
                   compiled=False, family="gather", colour="#000000")
    with pytest.raises(AssertionError):
        common.check_format_lookup(wrong, T, ids, out)
    common.clear_cache()


def test_the_format_grid_is_na_only_where_the_rules_say():
    """V = 1e7 only for int8 and int4; every kernel listed implements every format."""
    formats, kernel_names, vocabs, dims = bench_formats.LowPrecision.params
    for fmt in formats:
        for k in kernel_names:
            for V in vocabs:
                for D in dims:
                    try:
                        common.require_format(k, fmt, V, D)
                        ran = True
                    except NotImplementedError:
                        ran = False
                    assert ran == (V <= 1_000_000 or fmt in ("int8", "int4")), (fmt, k, V, D)


@pytest.mark.parametrize("config", ["asv.conf.json", "asv.peers.conf.json"])
def test_the_asv_environments_hold_every_runtime_dependency(config):
    """asv installs the package with --no-deps, so its environment matrix must list every
    dependency of pyproject.toml (one missing: `import kernels` fails in every benchmark)."""
    import json
    import re
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~ \[]", d, maxsplit=1)[0].lower().replace("_", "-") for d in deps}
    text = (ROOT / config).read_text()
    conf = json.loads("\n".join(line for line in text.splitlines()
                                if not line.lstrip().startswith("//")))
    req = {k.lower().replace("_", "-") for k in conf["matrix"]["req"]}
    assert "--no-deps" in " ".join(conf["install_command"])
    assert names <= req, f"{config} lacks {sorted(names - req)}"


def test_benchmark_tables_start_on_a_cache_line_as_a_torch_modules_weight_does():
    """The float tables every benchmark shares (make_weights, hence table, format_table's
    float32 and training_table) and the recsys tables are 64-byte aligned, so the kernels and
    torch's peers read whole cache lines."""
    W = common.recsys_table(10_000, 64, seed=1)
    assert W.ctypes.data % 64 == 0
    np.testing.assert_array_equal(W[4096:8192], W[:4096])  # the tiled block, as before
    for V, D in ((10_000, 16), (5000, 64), (3, 5)):
        for T in (common.make_weights(V, D), common.table(V, D), common.training_table(V, D),
                  common.format_table("float32", V, D)):
            assert T.shape == (V, D) and T.dtype == np.float32 and T.ctypes.data % 64 == 0
        for fmt in ("float16", "bfloat16", "int8", "int4"):
            T = common.format_table(fmt, V, D + D % 2)
            assert T.packed.ctypes.data % 64 == 0 and T.shape == (V, D + D % 2)
